//! What ships around the binary: the Dockerfile's runtime stage and the systemd unit,
//! checked against the binary itself (no image can be built here: no container daemon),
//! shell completions and the version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One Dockerfile instruction: `ENV`, and its arguments with continuation lines joined.
struct Instruction {
    keyword: String,
    args: String,
}

/// The instructions of the Dockerfile's last stage (the runtime image), and the
/// `ARG`s before the first `FROM`.
fn runtime_stage(dockerfile: &str) -> Vec<Instruction> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let instructions: Vec<Instruction> = logical
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (keyword, args) = l.trim().split_once(char::is_whitespace).unwrap_or((l.trim(), ""));
            Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_string(),
            }
        })
        .collect();
    let last_from = instructions.iter().rposition(|i| i.keyword == "FROM").expect("a FROM");
    instructions.into_iter().skip(last_from).collect()
}

/// `ENV A=1 B=2` (the form the Dockerfile uses) as pairs.
fn env_pairs(args: &str) -> Vec<(String, String)> {
    args.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV in KEY=value form");
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// A JSON-array (exec form) argument list.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|_| panic!("exec form (a JSON array) expected: {args}"))
}

/// An absolute path of the image, under `root` on this machine.
fn in_root(root: &Path, image_path: &str) -> PathBuf {
    root.join(image_path.strip_prefix('/').expect("an absolute path"))
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn dockerfile_runtime_stage_runs_unprivileged_with_the_paths_and_health_check_the_binary_uses() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let stage = runtime_stage(&dockerfile);
    let all = |keyword: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    };
    let one = |keyword: &str| -> &str {
        let found = all(keyword);
        assert_eq!(found.len(), 1, "exactly one {keyword} in the runtime stage");
        found[0]
    };
    let runs = all("RUN").join("\n");

    // An unprivileged user, created in this stage with that uid.
    let user = one("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as root: USER {user}");
    assert!(
        uid.parse::<u32>().is_ok(),
        "numeric USER, so runtimes can tell it is not root: {user}"
    );
    assert!(runs.contains(&format!("--uid {uid}")), "user {uid} is created: {runs}");

    // The binary: where it is copied is what ENTRYPOINT and HEALTHCHECK run.
    let copy = one("COPY");
    assert!(copy.starts_with("--from=build "), "{copy}");
    let binary = copy.split_whitespace().last().unwrap().to_string();
    assert_eq!(exec_form(one("ENTRYPOINT")), [binary.as_str()]);
    let cmd = exec_form(one("CMD"));
    assert_eq!(cmd, ["serve"]);

    // ENV: the variables are ones the binary reads, and the database is on the volume,
    // in a directory the user owns.
    let env: BTreeMap<String, String> = all("ENV").into_iter().flat_map(env_pairs).collect();
    let config_path = env.get("JITGATE_CONFIG").expect("ENV JITGATE_CONFIG");
    let db_url = env.get("JITGATE_DATABASE_URL").expect("ENV JITGATE_DATABASE_URL");
    let db_file = db_url.strip_prefix("sqlite://").expect("a sqlite:// URL");
    let volumes = exec_form(one("VOLUME"));
    let data_dir = Path::new(db_file).parent().unwrap().to_str().unwrap().to_string();
    assert_eq!(volumes, [data_dir.as_str()], "the database's directory is the volume");
    assert_eq!(one("WORKDIR"), data_dir);
    assert!(
        runs.contains(&format!("install -d -o jitgate -g jitgate -m 0700 {data_dir}")),
        "the data directory belongs to the user: {runs}"
    );
    let config_dir = Path::new(config_path).parent().unwrap().to_str().unwrap();
    assert!(runs.contains(&format!("install -d -m 0755 {config_dir}")), "{runs}");

    // EXPOSE is the port jitgate listens on when the file does not say.
    let default_listen = jitgate::config::parse(
        Path::new("t.toml"),
        "[[resources]]\nname = \"a\"\napproval_channel = \"C0A\"\napprovers = [\"U0A\"]\nadapter = \"n\"\n\
         [adapters.n]\ntype = \"noop\"\n",
    )
    .unwrap()
    .server
    .listen;
    assert_eq!(one("EXPOSE"), default_listen.port().to_string());

    // HEALTHCHECK: exec form, running the binary's health check.
    let healthcheck = one("HEALTHCHECK");
    let (options, check) = healthcheck.split_once("CMD ").expect("HEALTHCHECK … CMD [...]");
    assert!(options.contains("--timeout="), "{healthcheck}");
    let check = exec_form(check);
    assert_eq!(check[0], binary);

    // Now the stage's configuration for real, with the image's paths under a temporary
    // root: serve creates the database on the volume, and the health check's exact
    // command says healthy while it runs and unhealthy once it is gone.
    let image = tempfile::tempdir().unwrap();
    let port = free_port();
    let config_file = in_root(image.path(), config_path);
    std::fs::create_dir_all(config_file.parent().unwrap()).unwrap();
    std::fs::create_dir_all(in_root(image.path(), &data_dir)).unwrap();
    std::fs::write(
        &config_file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[[resources]]\nname = \"demo\"\n\
             approval_channel = \"C0APPROVALS\"\napprovers = [\"U0APPROVER\"]\nadapter = \"demo\"\n\n\
             [adapters.demo]\ntype = \"noop\"\n"
        ),
    )
    .unwrap();
    let image_env = |cmd: &mut Command| {
        for (k, v) in &env {
            let v = match v.strip_prefix("sqlite://") {
                Some(file) => format!("sqlite://{}", in_root(image.path(), file).display()),
                None if v.starts_with('/') => in_root(image.path(), v).display().to_string(),
                None => v.clone(),
            };
            cmd.env(k, v);
        }
        cmd.current_dir(in_root(image.path(), &data_dir));
    };
    let health = || {
        let mut cmd = Command::new(BIN);
        cmd.args(&check[1..]);
        image_env(&mut cmd);
        cmd.output().unwrap()
    };

    let mut serve = Command::new(BIN);
    serve
        .args(&cmd)
        .env("SLACK_BOT_TOKEN", "xoxb-test")
        .env("SLACK_SIGNING_SECRET", "test-secret")
        .env("SLACK_API_URL", "http://127.0.0.1:9/api")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    image_env(&mut serve);
    let mut server = KillOnDrop(serve.spawn().unwrap());

    let healthy = wait_for("the HEALTHCHECK command to pass", || {
        let out = health();
        async move { out.status.success().then_some(out) }
    })
    .await;
    assert!(
        String::from_utf8_lossy(&healthy.stdout).contains("healthy"),
        "{}",
        text(&healthy)
    );
    assert!(
        in_root(image.path(), db_file).is_file(),
        "serve created the database on the volume"
    );

    server.terminate().await;
    let out = health();
    assert_eq!(out.status.code(), Some(1), "unhealthy is exit status 1: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unhealthy"),
        "{}",
        text(&out)
    );
}

/// A child process, stopped when the test ends however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    /// SIGTERM, then waits (bounded) for the exit.
    async fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let child = &mut self.0;
        let exit = wait_for("the server to exit", || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        assert!(exit.success(), "graceful stop: {exit:?}");
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `systemd-analyze`, when installed; CI installs it and sets
/// `JITGATE_REQUIRE_SYSTEMD_ANALYZE=1` so that this test cannot be skipped there.
fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("JITGATE_REQUIRE_SYSTEMD_ANALYZE").is_err(),
            "systemd-analyze is required (JITGATE_REQUIRE_SYSTEMD_ANALYZE is set); install the systemd package"
        );
        eprintln!("systemd-analyze not installed; skipping the unit check");
        return None;
    }
    Some("systemd-analyze")
}

#[test]
fn systemd_unit_verifies_is_hardened_and_uses_the_binarys_paths() {
    let unit = std::fs::read_to_string(root().join("packaging/jitgate.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| -> Vec<&str> { settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect() };
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "jitgate"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
    ] {
        assert_eq!(get(key), [value], "{key}");
    }
    assert_eq!(get("EnvironmentFile"), ["/etc/jitgate/jitgate.env"]);
    let env: BTreeMap<&str, &str> = get("Environment")
        .into_iter()
        .filter_map(|e| e.split_once('='))
        .collect();
    assert_eq!(env["JITGATE_CONFIG"], "/etc/jitgate/jitgate.toml");
    // The only writable place (ProtectSystem=strict) is the state directory: the database
    // must be there, and it is where the service starts.
    assert_eq!(env["JITGATE_DATABASE_URL"], "sqlite:///var/lib/jitgate/jitgate.db");
    assert_eq!(get("WorkingDirectory"), ["/var/lib/jitgate"]);
    let exec_start = get("ExecStart");
    assert_eq!(exec_start, ["/usr/local/bin/jitgate serve"]);

    let Some(analyze) = systemd_analyze() else {
        return;
    };
    // verify needs ExecStart's program to exist: point a copy at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("jitgate.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/jitgate", BIN)).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    // Unknown keys and unreadable values are only warnings: they must not appear either.
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("jitgate.service"),
        "{}",
        text(&out)
    );
    // A unit with a typo does fail this check.
    let typo = dir.path().join("typo/jitgate.service");
    std::fs::create_dir_all(typo.parent().unwrap()).unwrap();
    std::fs::write(
        &typo,
        unit.replace("/usr/local/bin/jitgate", BIN)
            .replace("ProtectSystem=", "ProtectSytem="),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&typo)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unknown key"),
        "{}",
        text(&out)
    );

    // systemd's own exposure score (0 safest, 10 unsafe), offline: at most 2.0.
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn completions_need_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .current_dir(dir.path())
            .env("JITGATE_CONFIG", dir.path().join("missing.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["check-config", "backup", "healthcheck", "completions"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    // The bash script is valid bash.
    let out = Command::new(BIN).args(["completions", "bash"]).output().unwrap();
    let file = dir.path().join("jitgate.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    if let Ok(check) = Command::new("bash").arg("-n").arg(&file).output() {
        assert!(check.status.success(), "{}", text(&check));
    }
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = match (std::env::var("JITGATE_COMMIT"), head) {
        (Ok(c), _) if !c.trim().is_empty() => c.trim().to_string(),
        (_, Some(head)) => head,
        _ => "unknown".to_string(),
    };
    assert_eq!(
        version,
        format!("jitgate {} (commit {expected})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_dist_profile_strips_and_release_keeps_debug_info() {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let profiles = manifest["profile"].as_table().unwrap();
    let dist = profiles["dist"].as_table().unwrap();
    assert_eq!(dist["inherits"].as_str(), Some("release"));
    assert_eq!(dist["strip"].as_bool(), Some(true));
    assert_ne!(profiles["release"].get("debug").and_then(|d| d.as_integer()), Some(0));
    assert!(profiles["release"].get("strip").is_none());
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("--profile dist") && dockerfile.contains("target/dist/jitgate"));
}
