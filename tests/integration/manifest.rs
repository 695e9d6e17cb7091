//! The Slack app manifest and the example configuration shipped in manifest/.

use std::path::Path;
use std::process::Command;

/// A manifest from manifest/, checked against SchemaStore's public JSON Schema for v1
/// manifests (vendored) and against the scopes and events the code uses.
fn checked_manifest(file: &str) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("manifest").join(file)).unwrap()).unwrap();
    let schema_path = root.join("manifest/slack-app-manifest.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&manifest)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{file}: {errors:#?}");

    // Exactly the scopes the code uses.
    let scopes: Vec<&str> = manifest["oauth_config"]["scopes"]["bot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for needed in [
        "commands",
        "chat:write",
        "chat:write.public",
        "usergroups:read",
        "channels:read",
        "groups:read",
        "users:read",
        "users:read.email",
    ] {
        assert!(scopes.contains(&needed), "{file}: missing scope {needed}");
    }
    assert_eq!(scopes.len(), 8, "{file}: no scope the code does not use: {scopes:?}");
    assert_eq!(
        manifest["settings"]["event_subscriptions"]["bot_events"][0],
        "app_home_opened"
    );
    assert_eq!(manifest["features"]["slash_commands"][0]["command"], "/jit");
    assert_eq!(manifest["settings"]["interactivity"]["is_enabled"], true);
    // The global shortcut that opens the request form; its callback_id is the code's.
    let shortcut = &manifest["features"]["shortcuts"][0];
    assert_eq!(shortcut["type"], "global", "{file}");
    assert_eq!(shortcut["name"], "Request access", "{file}");
    assert_eq!(shortcut["callback_id"], jitgate::forms::SHORTCUT_CALLBACK, "{file}");
    manifest
}

#[test]
fn slack_app_manifest_matches_the_public_schema() {
    let manifest = checked_manifest("slack-app.yaml");
    let command = &manifest["features"]["slash_commands"][0];
    assert!(command["url"].as_str().unwrap().ends_with("/slack/commands"));
    assert!(manifest["settings"]["interactivity"]["request_url"]
        .as_str()
        .unwrap()
        .ends_with("/slack/interactions"));
    assert_eq!(manifest["settings"]["socket_mode_enabled"], false);
}

#[test]
fn socket_mode_manifest_matches_the_public_schema_and_has_no_request_urls() {
    let manifest = checked_manifest("slack-app-socket.yaml");
    assert_eq!(manifest["settings"]["socket_mode_enabled"], true);
    let text = manifest.to_string();
    assert!(!text.contains("\"url\"") && !text.contains("request_url"), "{text}");
    // The same app otherwise: only the delivery settings differ.
    let mut http = checked_manifest("slack-app.yaml");
    http["features"]["slash_commands"][0]
        .as_object_mut()
        .unwrap()
        .remove("url");
    for (section, key) in [("interactivity", "request_url"), ("event_subscriptions", "request_url")] {
        http["settings"][section].as_object_mut().unwrap().remove(key);
    }
    http["settings"]["socket_mode_enabled"] = serde_json::json!(true);
    assert_eq!(http, manifest);
}

/// A copy of the repository's `manifest/` directory in `dir`, as in a checkout.
fn checkout(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("manifest")).unwrap();
    for entry in std::fs::read_dir(root.join("manifest")).unwrap() {
        let entry = entry.unwrap();
        // fs::copy keeps the permissions: the example script stays executable.
        std::fs::copy(entry.path(), dir.join("manifest").join(entry.file_name())).unwrap();
    }
}

#[test]
fn the_readme_copy_step_gives_a_configuration_that_passes_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // The set-up's configuration step, exactly as written.
    let step = readme
        .split(". **Write the configuration.**")
        .nth(1)
        .and_then(|rest| rest.split(". **").next())
        .expect("the set-up's \"Write the configuration\" step in README.md");
    let commands: Vec<&str> = step
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cp ") || l.starts_with("cargo run"))
        .collect();
    assert_eq!(
        commands,
        [
            "cp manifest/jitgate.example.toml jitgate.toml",
            "cargo run --release -- check-config --config jitgate.toml"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    checkout(dir.path());
    let cp = Command::new("sh")
        .args(["-c", commands[0]])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(cp.success());
    let args: Vec<&str> = commands[1]
        .strip_prefix("cargo run --release -- ")
        .unwrap()
        .split_whitespace()
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(&args)
        .current_dir(dir.path())
        .env_remove("JITGATE_CONFIG")
        .env_remove("JITGATE_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("jitgate.toml: OK ("), "{stdout}");
    // The database is next to the file, as the file's comment says.
    let dir = dir.path().canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("database: {}", dir.join("jitgate.db").display())),
        "{stdout}"
    );
}

#[test]
fn relative_paths_are_resolved_against_the_configuration_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    checkout(dir.path());
    let elsewhere = tempfile::tempdir().unwrap();
    // The file is used from another working directory: the same paths are found.
    std::fs::copy(
        dir.path().join("manifest/jitgate.example.toml"),
        dir.path().join("jitgate.toml"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["check-config", "--config"])
        .arg(dir.path().join("jitgate.toml"))
        .current_dir(elsewhere.path())
        .env_remove("JITGATE_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains(&format!("database: {}", dir.path().join("jitgate.db").display())),
        "{stdout}"
    );

    // Used in place, the example's script path points nowhere: the message shows where it
    // looked and what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["check-config", "--config"])
        .arg(dir.path().join("manifest/jitgate.example.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let manifest = dir.path().join("manifest");
    assert!(
        err.contains(&format!(
            "adapters.demo.command: `{}` does not exist or is not a file; relative paths are resolved \
             against the configuration file's directory ({}); write the program's path from there, or an \
             absolute path",
            manifest.join("manifest/jit-grant.example.sh").display(),
            manifest.display()
        )),
        "{err}"
    );
}

#[test]
fn type_errors_and_unknown_keys_name_the_key_path_the_type_and_the_nearest_key_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jitgate.toml");
    std::fs::write(
        &path,
        r##"
[requests]
max_reason_length = "500"

[[resources]]
name = "a"
approval_channel = "#ops"
approvers = ["U0APPROVER"]
adapter = "demo"

[[resources]]
name = "b"
approval_channel = "C0B"
approvers = ["U0APPROVER"]
aprover_groups = ["S0DBAS"]
max_duration = 4
adapter = "demo"

[adapters.demo]
type = "noop"
timeout = "5s"
"##,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("5 problems"), "{err}");
    for line in [
        "requests.max_reason_length: expected a whole number (0 or more), found the string \"500\"; \
         write it without quotes: max_reason_length = 500",
        "resources[1].aprover_groups: unknown key; did you mean `approver_groups`?",
        "resources[1].max_duration: expected a duration in quotes, like \"2h\", found the number 4",
        "adapters.demo.timeout: unknown key; this table takes no other keys",
        "resources[0] (a).approval_channel: `#ops` is not a Slack channel ID",
    ] {
        assert!(err.contains(line), "missing {line:?} in:\n{err}");
    }
}

#[test]
fn check_config_names_the_file_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[resources]]\nname = \"prod-db\"\napproval_channel = \"#ops\"\napprovers = [\"alice\"]\nadapter = \"missing\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("resources[0] (prod-db).approval_channel: `#ops` is not a Slack channel ID"),
        "{err}"
    );
    assert!(err.contains("unknown adapter `missing`"), "{err}");
    assert!(err.contains("`alice` is not a Slack user ID"), "{err}");
}

#[test]
fn serve_refuses_to_start_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    checkout(dir.path());
    let path = dir.path().join("jitgate.toml");
    std::fs::copy(dir.path().join("manifest/jitgate.example.toml"), &path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("SLACK_BOT_TOKEN")
        .env_remove("SLACK_SIGNING_SECRET")
        .env_remove("JITGATE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLACK_BOT_TOKEN is not set"));
}

#[test]
fn example_config_on_call_block_is_valid_when_uncommented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("manifest/jitgate.example.toml")).unwrap();
    let start = text.find("# [oncall]").expect("an [oncall] example");
    let block: Vec<&str> = text[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let script = root.join("manifest/jit-grant.example.sh");
    let config = format!("{}{}\n", &text[..start], block.join("\n"))
        .replace("manifest/jit-grant.example.sh", &script.display().to_string());
    let path = dir.path().join("jitgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("PAGERDUTY_TOKEN", "example")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
