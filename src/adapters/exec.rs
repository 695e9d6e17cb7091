//! The `exec` adapter: runs a configured program for grant and revoke.
//!
//! The program gets its arguments from the configuration only and everything about the
//! grant in `JIT_*` environment variables, so text a user typed never reaches a command
//! line or a shell. jitgate's own environment (which holds the Slack secrets) is not
//! passed on: the program sees `PATH`, `HOME`, `LANG`, `TZ`, the configured `env` and the
//! `JIT_*` variables.

use std::process::Stdio;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{Adapter, AdapterError, BoxFuture, GrantContext, Granted};
use crate::config::ExecAdapterConfig;

/// Largest stdout kept as grant state.
const MAX_STATE_BYTES: usize = 64 * 1024;
/// Environment variables passed through from jitgate's own environment.
const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// Runs `command` with `JIT_ACTION=grant|revoke`.
#[derive(Debug, Clone)]
pub struct ExecAdapter {
    name: String,
    config: ExecAdapterConfig,
}

impl ExecAdapter {
    pub fn new(name: &str, config: ExecAdapterConfig) -> Self {
        Self {
            name: name.to_string(),
            config,
        }
    }

    async fn run(&self, action: &str, ctx: &GrantContext) -> Result<String, AdapterError> {
        let (program, args) = self
            .config
            .command
            .split_first()
            .ok_or_else(|| AdapterError::Permanent(format!("adapter {}: empty command", self.name)))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for key in INHERITED {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(&self.config.env)
            .env("JIT_ACTION", action)
            .env("JIT_GRANT_ID", ctx.grant_id.to_string())
            .env("JIT_REQUEST_ID", crate::ids::label(ctx.request_id))
            .env("JIT_USER_ID", &ctx.user_id)
            .env("JIT_RESOURCE", &ctx.resource)
            .env("JIT_ROLE", &ctx.role)
            .env("JIT_DURATION_SECONDS", ctx.duration_secs.to_string())
            .env(
                "JIT_EXPIRES_AT",
                ctx.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .env("JIT_REASON", &ctx.reason);
        if action == "revoke" {
            cmd.env("JIT_GRANT_STATE", ctx.state.as_deref().unwrap_or_default());
        }
        // Messages go to Slack and the audit log: they name the adapter, never the
        // program's path (that goes to the process log).
        let name = &self.name;
        let mut child = cmd.spawn().map_err(|e| {
            tracing::error!(adapter = %self.name, program = %program, error = %e, "cannot start the adapter program");
            if e.kind() == std::io::ErrorKind::InvalidInput {
                // A NUL byte in an argument or a variable: the program never ran.
                AdapterError::NotApplied(format!(
                    "the `{name}` adapter cannot pass this grant's details to its program \
                     (they contain a character a program cannot receive, like a NUL byte); nothing was changed"
                ))
            } else {
                AdapterError::Temporary(format!(
                    "the `{name}` adapter could not start its program ({})",
                    e.kind()
                ))
            }
        })?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let work = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                let _ = (&mut stdout)
                    .take(MAX_STATE_BYTES as u64 + 1)
                    .read_to_end(&mut out)
                    .await;
                // Drain the rest so a chatty program never blocks on a full pipe.
                let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
            };
            let read_err = async {
                let _ = (&mut stderr).take(8 * 1024).read_to_end(&mut err).await;
                let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            };
            let (status, _, _) = tokio::join!(child.wait(), read_out, read_err);
            (status, out, err)
        };
        let timeout = self.config.timeout.to_std();
        let (status, out, err) = match tokio::time::timeout(timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                // Dropping the child kills it (kill_on_drop).
                tracing::warn!(adapter = %self.name, action, grant = ctx.grant_id, "adapter program timed out; killed");
                return Err(AdapterError::Temporary(format!(
                    "the `{name}` adapter's program did not finish within {}",
                    self.config.timeout
                )));
            }
        };
        let status = status.map_err(|e| {
            AdapterError::Temporary(format!("waiting for the `{name}` adapter's program: {}", e.kind()))
        })?;
        if !status.success() {
            // stderr can say anything; it goes to the process log only.
            tracing::warn!(
                adapter = %self.name, action, grant = ctx.grant_id, %status,
                stderr = %String::from_utf8_lossy(&err).trim(),
                "adapter program failed"
            );
            let code = status
                .code()
                .map(|c| format!("exit status {c}"))
                .unwrap_or_else(|| "killed by a signal".into());
            return Err(AdapterError::Temporary(format!(
                "the `{name}` adapter's program failed with {code}"
            )));
        }
        if out.len() > MAX_STATE_BYTES {
            return Err(AdapterError::Permanent(format!(
                "the `{name}` adapter's program printed more than 64 KiB of state"
            )));
        }
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }
}

impl Adapter for ExecAdapter {
    fn grant<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>> {
        Box::pin(async move {
            let out = self.run("grant", ctx).await?;
            Ok(Granted::with_state(Some(out).filter(|s| !s.is_empty())))
        })
    }

    fn revoke<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(async move { self.run("revoke", ctx).await.map(|_| ()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, body: &str) -> String {
        let path = dir.join("adapter.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn ctx(reason: &str) -> GrantContext {
        GrantContext {
            grant_id: 7,
            request_id: 42,
            user_id: "U1".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 60,
            expires_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            reason: reason.into(),
            state: Some("state-from-grant".into()),
        }
    }

    fn adapter(program: String, timeout_secs: u64) -> ExecAdapter {
        ExecAdapter::new(
            "t",
            ExecAdapterConfig {
                command: vec![program],
                timeout: HumanDuration::from_secs(timeout_secs),
                env: BTreeMap::from([("EXTRA".to_string(), "yes".to_string())]),
            },
        )
    }

    #[tokio::test]
    async fn grant_passes_context_in_env_and_keeps_stdout_as_state() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let body = format!(
            "env | grep -E '^(JIT_|EXTRA|SLACK)' | sort > {}\necho login-7",
            out.display()
        );
        let a = adapter(script(dir.path(), &body), 10);
        std::env::set_var("SLACK_SIGNING_SECRET_TEST_CANARY", "x");
        let state = a.grant(&ctx("$(rm -rf /); `id` 'quoted'")).await.unwrap();
        assert_eq!(state.state.as_deref(), Some("login-7"));
        let env = std::fs::read_to_string(out).unwrap();
        assert!(env.contains("JIT_ACTION=grant\n"), "{env}");
        assert!(env.contains("JIT_GRANT_ID=7\n"));
        assert!(env.contains("JIT_REQUEST_ID=JIT-42\n"));
        assert!(env.contains("JIT_EXPIRES_AT=2023-11-14T22:13:20Z\n"), "{env}");
        assert!(
            env.contains("JIT_REASON=$(rm -rf /); `id` 'quoted'\n"),
            "user text arrives verbatim: {env}"
        );
        assert!(env.contains("EXTRA=yes"));
        assert!(!env.contains("SLACK"), "jitgate's environment must not leak: {env}");
        assert!(!env.contains("JIT_GRANT_STATE"));
    }

    #[tokio::test]
    async fn revoke_gets_the_grant_state() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state.txt");
        let a = adapter(
            script(
                dir.path(),
                &format!("echo \"$JIT_ACTION $JIT_GRANT_STATE\" > {}", out.display()),
            ),
            10,
        );
        a.revoke(&ctx("r")).await.unwrap();
        assert_eq!(std::fs::read_to_string(out).unwrap(), "revoke state-from-grant\n");
    }

    #[tokio::test]
    async fn non_zero_exit_is_a_failure_without_stderr_in_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let a = adapter(script(dir.path(), "echo secret-token-123 >&2; exit 3"), 10);
        let err = a.grant(&ctx("r")).await.unwrap_err();
        assert!(err.to_string().ends_with("failed with exit status 3"), "{err}");
        assert!(!err.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn a_program_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let a = adapter(script(dir.path(), "exec sleep 30"), 1);
        let started = std::time::Instant::now();
        let err = a.grant(&ctx("r")).await.unwrap_err();
        assert!(err.to_string().contains("did not finish within 1s"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn exec_adapter_passes_the_conformance_checks() {
        // A script that keeps its "access" in a file, idempotently, like a real one should.
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("granted");
        let body = format!(
            "f={}\ncase \"$JIT_ACTION\" in\n  grant) grep -qx \"$JIT_GRANT_ID\" \"$f\" 2>/dev/null || echo \"$JIT_GRANT_ID\" >> \"$f\"; echo \"state-$JIT_GRANT_ID\" ;;\n  revoke) touch \"$f\"; grep -vx \"$JIT_GRANT_ID\" \"$f\" > \"$f.new\"; mv \"$f.new\" \"$f\" ;;\nesac",
            store.display()
        );
        let a = adapter(script(dir.path(), &body), 10);
        let mut c = ctx("r");
        c.state = None;
        crate::adapters::conformance::check(&a, &c, false).await.unwrap();
        assert_eq!(std::fs::read_to_string(&store).unwrap(), "");
    }
}
