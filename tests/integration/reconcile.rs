//! Reconciliation against an adapter that can list what it granted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jitgate::adapters::{Adapter, AdapterError, BoxFuture, GrantContext, Granted, ListedAccess};

use crate::support::*;

/// An adapter keeping its "access" in memory, so the test can tamper with it.
#[derive(Default)]
pub(crate) struct Inventory {
    held: Mutex<BTreeMap<i64, String>>,
}

impl Inventory {
    pub(crate) fn add(&self, grant_id: i64, user: &str) {
        self.held.lock().unwrap().insert(grant_id, user.to_string());
    }
    fn remove(&self, grant_id: i64) {
        self.held.lock().unwrap().remove(&grant_id);
    }
    fn has(&self, grant_id: i64) -> bool {
        self.held.lock().unwrap().contains_key(&grant_id)
    }
}

impl Adapter for Inventory {
    fn grant<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Granted, AdapterError>> {
        Box::pin(async move {
            self.add(ctx.grant_id, &ctx.user_id);
            Ok(Granted::default())
        })
    }
    fn revoke<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<(), AdapterError>> {
        Box::pin(async move {
            self.remove(ctx.grant_id);
            Ok(())
        })
    }
    fn is_active<'a>(&'a self, ctx: &'a GrantContext) -> BoxFuture<'a, Result<Option<bool>, AdapterError>> {
        Box::pin(async move { Ok(Some(self.has(ctx.grant_id))) })
    }
    fn list_granted(&self) -> BoxFuture<'_, Result<Option<Vec<ListedAccess>>, AdapterError>> {
        Box::pin(async move {
            let held = self.held.lock().unwrap();
            Ok(Some(
                held.iter()
                    .map(|(id, user)| ListedAccess {
                        grant_id: Some(*id),
                        description: format!("access {id} of {user}"),
                    })
                    .collect(),
            ))
        })
    }
    fn shares_access(&self) -> bool {
        false
    }
}

async fn app_with_inventory(interval: &str) -> (TestApp, Arc<Inventory>) {
    let inventory = Arc::new(Inventory::default());
    let app = TestApp::start_with(Setup {
        adapters: vec![("demo".into(), inventory.clone() as Arc<dyn Adapter>)],
        extra_toml: format!("[reconcile]\ninterval = \"{interval}\"\nchannel = \"C0SECURITY\"\n"),
        ..Setup::default()
    })
    .await;
    (app, inventory)
}

#[tokio::test]
async fn access_without_an_active_grant_is_revoked_and_reported() {
    let (app, inventory) = app_with_inventory("30d").await;
    let id = app.request("prod-db:read 1h x").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    app.clock.advance(chrono::Duration::hours(2));
    app.wait_grant(id, "revoked").await;
    // Someone (or a buggy target system) put the access back after the revoke.
    inventory.add(1, REQUESTER);

    let report = jitgate::reconcile::run(app.state(), false).await.unwrap();
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert!(!inventory.has(1), "the orphaned access was revoked");
    let text = app
        .wait_calls("a report in the security channel", 1, |c| c.channel() == "C0SECURITY")
        .await[0]
        .text()
        .to_string();
    assert!(
        text.contains("access 1 of UREQUESTER") && text.contains("revoked"),
        "{text}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'reconcile.orphan_revoked'")
            .await,
        1
    );
}

/// Issue #11: access named as this installation names grants, with an id its database
/// never had (made by hand, or after the backup it was restored from), is revoked too.
#[tokio::test]
async fn access_whose_grant_id_was_never_in_the_database_is_revoked_and_reported() {
    let (app, inventory) = app_with_inventory("30d").await;
    assert_eq!(app.count("SELECT COUNT(*) FROM grants").await, 0);
    inventory.add(4242, "UINTRUDER");

    let report = jitgate::reconcile::run(app.state(), false).await.unwrap();
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert!(!inventory.has(4242), "access nobody accounts for was revoked");
    let text = app
        .wait_calls("a report in the security channel", 1, |c| c.channel() == "C0SECURITY")
        .await[0]
        .text()
        .to_string();
    assert!(
        text.contains("access 4242 of UINTRUDER") && text.contains("revoked") && !text.contains("not revoked"),
        "{text}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'reconcile.orphan_revoked'")
            .await,
        1
    );
}

#[tokio::test]
async fn dry_run_reports_but_revokes_nothing() {
    let (app, inventory) = app_with_inventory("30d").await;
    inventory.add(99, "USOMEONE");
    let report = jitgate::reconcile::run(app.state(), true).await.unwrap();
    assert_eq!(report.findings.len(), 1);
    assert!(inventory.has(99));
    let text = app
        .wait_calls("a dry-run report", 1, |c| c.channel() == "C0SECURITY")
        .await[0]
        .text()
        .to_string();
    assert!(text.contains("(dry run)") && text.contains("not revoked"), "{text}");
}

#[tokio::test]
async fn active_grant_whose_access_vanished_is_reported() {
    let (app, inventory) = app_with_inventory("30d").await;
    let id = app.request("prod-db:read 1h x").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    inventory.remove(1);
    let report = jitgate::reconcile::run(app.state(), false).await.unwrap();
    assert_eq!(report.findings.len(), 1);
    let text = app.wait_calls("a report", 1, |c| c.channel() == "C0SECURITY").await[0]
        .text()
        .to_string();
    assert!(
        text.contains(&format!(
            "JIT-{id} for UREQUESTER is active in jitgate but the adapter does not have it"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn a_consistent_state_reports_nothing_to_slack() {
    let (app, _inventory) = app_with_inventory("30d").await;
    let id = app.request("prod-db:read 1h x").await;
    app.approve(APPROVER1, id).await;
    app.wait_grant(id, "active").await;
    let report = jitgate::reconcile::run(app.state(), false).await.unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.grants_checked, 1);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'reconcile.ran'")
            .await,
        1
    );
    assert!(app.slack.posted_to("C0SECURITY").is_empty());
}

#[tokio::test]
async fn reconciliation_runs_on_its_interval() {
    let (app, inventory) = app_with_inventory("1h").await;
    inventory.add(7, "USOMEONE");
    app.clock.advance(chrono::Duration::minutes(61));
    app.wait_calls("the periodic report", 1, |c| c.channel() == "C0SECURITY")
        .await;
}

#[test]
fn reconcile_command_line_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("manifest/jitgate.example.toml"))
        .unwrap()
        .replace(
            "sqlite://jitgate.db",
            &format!("sqlite://{}/r.db", dir.path().display()),
        )
        .replace(
            "manifest/jit-grant.example.sh",
            &root.join("manifest/jit-grant.example.sh").display().to_string(),
        );
    let path = dir.path().join("jitgate.toml");
    std::fs::write(&path, config).unwrap();
    // reconcile reads what serve stored: the database must exist (serve creates it).
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = jitgate::store::Db::open(&format!("sqlite://{}/r.db", dir.path().display()))
            .await
            .unwrap();
        db.close().await;
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jitgate"))
        .env("JITGATE_AUDIT_KEY", crate::support::AUDIT_KEY)
        .args(["reconcile", "--dry-run", "--config"])
        .arg(&path)
        .env("JITGATE_AUDIT_KEY", AUDIT_KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("reconciliation (dry run): 1 adapter, 0 active grants checked, 0 findings"),
        "{stdout}"
    );
}
