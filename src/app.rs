//! The app state: the handles every request handler and job shares. Each subsystem owns
//! its own handle (the scheduler's wake-ups and workers, the outbox's wake-up, the access
//! locks, the group-commit queue); this struct only carries them.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_locks::AccessLocks;
use crate::adapters::Adapters;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oncall::OnCall;
use crate::outbox::OutboxHandle;
use crate::scheduler::SchedulerHandle;
use crate::selfcheck::SlackStatus;
use crate::slack::client::SlackApi;
use crate::store::{self, Creations, Db, Outgoing};

/// Everything a request handler or background task needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub clock: SharedClock,
    pub slack: SlackApi,
    pub adapters: Arc<Adapters>,
    /// On-call lookups and their caches.
    pub oncall: Arc<OnCall>,
    /// Keys the audit log's hash chain.
    pub audit_key: crate::audit::AuditKey,
    /// What `/metrics` shows.
    pub metrics: Metrics,
    /// Checks the signatures of Slack's requests; empty in Socket Mode without a signing
    /// secret, and then the HTTP endpoints for Slack are not served.
    pub(crate) signing_secret: Arc<[u8]>,
    /// Wakes the scheduler for new jobs.
    pub scheduler: SchedulerHandle,
    /// Wakes the outbox worker for new messages.
    pub outbox: OutboxHandle,
    /// The Slack self-check's latest result and the Socket Mode connections' state.
    pub slack_status: SlackStatus,
    /// Keeps adapter calls for one access from overlapping.
    pub(crate) access_locks: Arc<AccessLocks>,
    /// `/jit` commands per person per minute.
    pub(crate) command_rate: Arc<crate::throttle::RateLimiter>,
    /// Requests waiting for their (group) commit.
    pub(crate) creations: Arc<Creations>,
    /// Shutdown was asked for (a signal): the server stops taking requests and drains its
    /// clients, bounded, while background work (revokes above all) goes on.
    pub stop_requested: CancellationToken,
    /// Background work stops: cancelled once the server has drained (or to stop at once).
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl AppState {
    /// Now, in unix milliseconds, from the injected clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Records a refusal (a click or command jitgate turned down: who tried what, and
    /// why) in the audit log, on its own. A failure to record is logged, not raised: the
    /// refusal itself already changed nothing.
    pub async fn audit_refusal(&self, actor: &str, action: &str, request_id: Option<i64>, details: serde_json::Value) {
        let recorded = async {
            let mut tx = self.db.begin().await?;
            crate::audit::append(
                &self.audit_key,
                &mut tx,
                self.now_ms(),
                actor,
                action,
                request_id,
                details,
            )
            .await?;
            tx.commit().await?;
            anyhow::Ok(())
        };
        if let Err(e) = recorded.await {
            tracing::error!(error = format!("{e:#}"), action, "could not audit a refusal");
        }
    }

    /// Queues one Slack message on its own (outside any other change).
    pub async fn send_now(&self, message: Outgoing) -> anyhow::Result<()> {
        let mut conn = self.db.write.acquire().await?;
        store::enqueue(&mut conn, &message, self.now_ms()).await?;
        drop(conn);
        self.outbox.wake();
        Ok(())
    }
}
