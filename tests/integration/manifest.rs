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

#[test]
fn example_config_passes_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["check-config", "--config"])
        .arg(root.join("manifest/jitgate.example.toml"))
        .env_remove("JITGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK ("));
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(root.join("manifest/jitgate.example.toml"))
        .unwrap()
        .replace(
            "sqlite://jitgate.db",
            &format!("sqlite://{}/x.db", dir.path().display()),
        );
    let path = root.join("manifest").join(format!("test-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("SLACK_BOT_TOKEN")
        .env_remove("SLACK_SIGNING_SECRET")
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
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
        .replace("./jit-grant.example.sh", &script.display().to_string());
    let path = dir.path().join("jitgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jitgate"))
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
