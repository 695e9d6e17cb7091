//! The record adapter (`type = "record"`): grants nothing and appends every call — grant,
//! extension, revoke — to a file as one JSON line, so that a demonstration (`jitgate
//! dev`) shows what a real adapter would have been asked to do. It lists what it granted
//! from the same file, so reconciliation works against it too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{Adapter, AdapterError, BoxFuture, GrantContext, Granted, ListedAccess};

/// Appends calls to `file`; one call at a time, so lines never interleave.
pub struct RecordAdapter {
    name: String,
    file: PathBuf,
    writing: tokio::sync::Mutex<()>,
}

impl RecordAdapter {
    /// An adapter called `name` recording to `file` (created at the first call).
    pub fn new(name: &str, file: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            file,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    async fn append(&self, action: &str, ctx: &GrantContext) -> Result<(), AdapterError> {
        let line = json!({
            "at": chrono::Utc::now().to_rfc3339(),
            "action": action,
            "grant_id": ctx.grant_id,
            "request_id": ctx.request_id,
            "user": ctx.user_id,
            "resource": ctx.resource,
            "role": ctx.role,
            "expires_at": ctx.expires_at.to_rfc3339(),
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let _one_at_a_time = self.writing.lock().await;
        let written = async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)
                .await?;
            f.write_all(&bytes).await?;
            f.flush().await
        };
        written.await.map_err(|e| {
            tracing::warn!(adapter = %self.name, file = %self.file.display(), error = %e, "cannot write the record file");
            AdapterError::Temporary(format!("the {} adapter cannot write its record file", self.name))
        })
    }

    /// Grant id → whether its access is in force, from the file's lines in order.
    async fn replay(&self) -> Result<BTreeMap<i64, (bool, String)>, AdapterError> {
        let text = match tokio::fs::read_to_string(&self.file).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(adapter = %self.name, error = %e, "cannot read the record file");
                return Err(AdapterError::Temporary(format!(
                    "the {} adapter cannot read its record file",
                    self.name
                )));
            }
        };
        let mut state = BTreeMap::new();
        // A line that does not parse (edited by hand, cut short by a crash) is skipped.
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let Some(id) = v["grant_id"].as_i64() else { continue };
            let what = format!(
                "{} {}:{} (grant {id})",
                v["user"].as_str().unwrap_or("?"),
                v["resource"].as_str().unwrap_or("?"),
                v["role"].as_str().unwrap_or("?")
            );
            match v["action"].as_str() {
                Some("grant") | Some("extend") => {
                    state.insert(id, (true, what));
                }
                Some("revoke") => {
                    state.insert(id, (false, what));
                }
                _ => {}
            }
        }
        Ok(state)
    }
}

impl Adapter for RecordAdapter {
    fn grant<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>> {
        Box::pin(async move {
            self.append("grant", ctx).await?;
            Ok(Granted::default())
        })
    }

    fn revoke<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(self.append("revoke", ctx))
    }

    fn extend<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(self.append("extend", ctx))
    }

    fn is_active<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Option<bool>, AdapterError>> {
        Box::pin(async move { Ok(Some(self.replay().await?.get(&ctx.grant_id).is_some_and(|s| s.0))) })
    }

    fn list_granted(&self) -> BoxFuture<'_, Result<Option<Vec<ListedAccess>>, AdapterError>> {
        Box::pin(async move {
            let listed = self
                .replay()
                .await?
                .into_iter()
                .filter(|(_, (active, _))| *active)
                .map(|(id, (_, description))| ListedAccess {
                    grant_id: Some(id),
                    description,
                })
                .collect();
            Ok(Some(listed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(grant_id: i64) -> GrantContext {
        GrantContext {
            grant_id,
            request_id: grant_id + 100,
            user_id: "U0ALICE".into(),
            resource: "prod-db".into(),
            role: "read".into(),
            duration_secs: 3600,
            expires_at: chrono::Utc::now(),
            reason: "looking".into(),
            state: None,
        }
    }

    #[tokio::test]
    async fn grants_and_revokes_are_recorded_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grants.jsonl");
        let a = RecordAdapter::new("demo", file.clone());
        a.grant(&ctx(1)).await.unwrap();
        a.grant(&ctx(2)).await.unwrap();
        a.revoke(&ctx(1)).await.unwrap();
        // Revoking again is a success, as adapters must allow.
        a.revoke(&ctx(1)).await.unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let actions: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(actions, ["grant", "grant", "revoke", "revoke"]);
        assert!(!text.contains("looking"), "reasons are not recorded");
        assert_eq!(a.is_active(&ctx(1)).await.unwrap(), Some(false));
        assert_eq!(a.is_active(&ctx(2)).await.unwrap(), Some(true));
        let listed = a.list_granted().await.unwrap().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].grant_id, Some(2));
    }

    #[tokio::test]
    async fn an_unwritable_file_is_a_temporary_error_naming_the_adapter_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = RecordAdapter::new("demo", dir.path().join("missing-dir").join("grants.jsonl"));
        let err = a.grant(&ctx(1)).await.unwrap_err();
        assert!(!err.is_permanent());
        assert!(!err.to_string().contains("missing-dir"), "{err}");
    }
}
