//! Delivers the Slack messages written to the `outbox` table.
//!
//! State changes write their messages in the same transaction; this worker sends them
//! afterwards, so no Slack call ever happens inside a transaction, and a message Slack
//! could not take (down, 5xx, 429) is kept and sent later rather than dropped. Cards are
//! rendered from the stored state at delivery time, so a late update still shows the truth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::cards::{render_card, CardModel};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::slack::client::SlackApi;
use crate::slack::client::SlackCallError;
use crate::store::{self, Db, GrantState, JobKind, OutboxKind, OutboxRow, RequestState};

/// A response_url stops working after 30 minutes.
const RESPONSE_URL_LIFETIME_MS: i64 = 30 * 60 * 1000;
/// Retry waits for a message Slack could not take.
const RETRY_INITIAL: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Delivery results are written down at least this often while a batch is being sent.
const RECORD_EVERY: Duration = Duration::from_millis(500);

/// The outbox's side of the app state: wakes the worker. Cheap to clone.
#[derive(Clone, Default)]
pub struct OutboxHandle {
    wake: Arc<Notify>,
}

impl OutboxHandle {
    /// Tells the worker there is something to send.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Everything the worker needs: the stored messages, Slack, the time, and the resources'
/// descriptions for cards.
#[derive(Clone)]
pub struct Outbox {
    pub db: Db,
    pub slack: SlackApi,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    pub handle: OutboxHandle,
    pub shutdown: CancellationToken,
}

impl Outbox {
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }
}

/// What became of one delivery attempt.
enum Delivery {
    Sent,
    /// Nothing to send any more (the card it would update shows the latest state anyway).
    Moot,
    Failed(SlackCallError),
}

/// The worker loop, until shutdown.
pub async fn run(app: Outbox) {
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let due = match app.db.read.acquire().await {
            Ok(mut conn) => store::due_outbox(&mut conn, app.now_ms(), 100).await,
            Err(e) => Err(e),
        };
        let due = due.unwrap_or_else(|e| {
            tracing::error!(error = %e, "outbox: cannot read the database");
            Vec::new()
        });
        let idle = due.is_empty();
        let mut outcomes = Vec::new();
        let mut unrecorded_since = Instant::now();
        let mut pause = None;
        for row in due {
            if app.shutdown.is_cancelled() {
                break;
            }
            let outcome = deliver_one(&app, row).await;
            pause = outcome.pause();
            outcomes.push(outcome);
            if pause.is_some() {
                break;
            }
            // Bound how much is sent again after a crash when Slack is slow to answer.
            if unrecorded_since.elapsed() > RECORD_EVERY {
                record_all(&app, std::mem::take(&mut outcomes)).await;
                unrecorded_since = Instant::now();
            }
        }
        record_all(&app, outcomes).await;
        if let Some(pause) = pause {
            // Slack's rate limits apply per method and workspace: pause everything.
            let until = app.clock.now() + chrono::Duration::from_std(pause).unwrap_or_default();
            tokio::select! {
                _ = app.clock.sleep_until(until) => {}
                _ = app.shutdown.cancelled() => {}
            }
        }
        if !idle {
            continue;
        }
        let next = match app.db.read.acquire().await {
            Ok(mut conn) => store::next_outbox_due(&mut conn).await.ok().flatten(),
            Err(_) => Some(app.now_ms() + 5_000),
        };
        let sleep = match next {
            Some(at) => app
                .clock
                .sleep_until(chrono::DateTime::from_timestamp_millis(at).unwrap_or_default()),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            _ = sleep => {}
            _ = app.handle.wake.notified() => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    tracing::info!("outbox stopped");
}

/// What became of one delivery attempt, to be written down.
struct Outcome {
    id: i64,
    kind: OutboxKind,
    attempts: i64,
    result: Delivery,
    at: i64,
}

impl Outcome {
    /// How long to pause everything when Slack rate-limited us.
    fn pause(&self) -> Option<Duration> {
        match &self.result {
            Delivery::Failed(SlackCallError::RateLimited(after)) => {
                Some(after.unwrap_or(Duration::from_secs(1)).max(Duration::from_millis(100)))
            }
            _ => None,
        }
    }
}

/// Sends one entry. The result is recorded by `record_all`.
async fn deliver_one(app: &Outbox, row: OutboxRow) -> Outcome {
    let result = match send(app, &row).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(outbox = row.id, error = format!("{e:#}"), "outbox: internal error");
            Delivery::Failed(SlackCallError::Transient("internal error".into()))
        }
    };
    Outcome {
        id: row.id,
        kind: row.kind,
        attempts: row.attempts,
        result,
        at: app.now_ms(),
    }
}

/// Records delivery results in one transaction: one commit (and fsync) per batch of
/// messages rather than per message, which matters when thousands of cards go out while
/// requests are being stored on the same writer. If recording fails, those messages stay
/// pending and are sent again (delivery was at-least-once already: a crash between a
/// send and its record always re-sent it). A posted card's ts is written at once, in
/// `send`, so a re-send of a card post is a no-op.
async fn record_all(app: &Outbox, outcomes: Vec<Outcome>) {
    if outcomes.is_empty() {
        return;
    }
    let recorded = async {
        let mut tx = app.db.begin().await?;
        let mut erased = false;
        for o in &outcomes {
            erased |= record(&mut tx, o).await?;
        }
        tx.commit().await?;
        anyhow::Ok(erased)
    };
    match recorded.await {
        Ok(true) => {
            // The erased credential is still in the WAL until it is checkpointed.
            if let Err(e) = app.db.checkpoint().await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "outbox: cannot clear an erased secret from the WAL"
                );
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(
                entries = outcomes.len(),
                error = format!("{e:#}"),
                "outbox: cannot record deliveries; they will be sent again"
            );
        }
    }
}

/// Writes down one outcome; true when a secret was erased.
async fn record(conn: &mut sqlx::SqliteConnection, o: &Outcome) -> anyhow::Result<bool> {
    let (id, kind, now) = (o.id, o.kind, o.at);
    let mut erased = false;
    match &o.result {
        Delivery::Sent | Delivery::Moot => erased = store::outbox_sent(conn, id, now).await?,
        Delivery::Failed(SlackCallError::RateLimited(_)) => {
            let after = o.pause().unwrap_or(Duration::from_secs(1));
            tracing::warn!(outbox = id, ?kind, retry_after = ?after, "Slack rate limit; pausing deliveries");
            store::outbox_retry(conn, id, now + after.as_millis() as i64, "rate limited").await?;
        }
        Delivery::Failed(SlackCallError::Transient(e)) => {
            let wait = backoff(RETRY_INITIAL, RETRY_MAX, o.attempts as u32 + 1, rand::random::<f64>());
            tracing::warn!(outbox = id, ?kind, error = %e, retry_in = ?wait, "Slack call failed; will retry");
            store::outbox_retry(conn, id, now + wait.as_millis() as i64, e).await?;
        }
        Delivery::Failed(SlackCallError::Permanent(e)) => {
            tracing::error!(outbox = id, ?kind, error = %e, "Slack refused a message; giving up on it");
            erased = store::outbox_failed(conn, id, e).await?;
        }
    }
    Ok(erased)
}

async fn send(app: &Outbox, row: &OutboxRow) -> anyhow::Result<Delivery> {
    let failed = |e| Ok(Delivery::Failed(e));
    match row.kind {
        OutboxKind::Message => {
            let (Some(channel), Some(text)) = (&row.channel, &row.body) else {
                return Ok(Delivery::Moot);
            };
            let content = slack_morphism::prelude::SlackMessageContent::new().with_text(text.clone());
            match app.slack.post_message(channel, content).await {
                Ok(_) => Ok(Delivery::Sent),
                Err(e) => failed(e),
            }
        }
        OutboxKind::Ephemeral => {
            let (Some(url), Some(text)) = (&row.response_url, &row.body) else {
                return Ok(Delivery::Moot);
            };
            if app.now_ms() - row.created_at > RESPONSE_URL_LIFETIME_MS {
                return failed(SlackCallError::Permanent("response_url expired".into()));
            }
            match app.slack.respond_ephemeral(url, text).await {
                Ok(()) => Ok(Delivery::Sent),
                Err(e) => failed(e),
            }
        }
        OutboxKind::PostCard | OutboxKind::UpdateCard => {
            let Some(request_id) = row.request_id else {
                return Ok(Delivery::Moot);
            };
            let (request, decisions, grant, job, break_glass) = {
                let mut conn = app.db.read.acquire().await?;
                let Some(request) = store::get_request(&mut conn, request_id).await? else {
                    return Ok(Delivery::Moot);
                };
                let decisions = store::decisions(&mut conn, request_id).await?;
                // A grant is written in the transaction that moves its request out of
                // pending, so a pending request (every new card) has none to read.
                let grant = match request.state {
                    RequestState::Pending => None,
                    _ => store::grant_of(&mut conn, request_id).await?,
                };
                let job_kind = match grant.as_ref().map(|g| g.state) {
                    Some(GrantState::Granting) => Some(JobKind::Grant),
                    Some(GrantState::Active) => Some(JobKind::Revoke),
                    _ => None,
                };
                let job = match job_kind {
                    Some(k) => store::job_of(&mut conn, request_id, k).await?,
                    None => None,
                };
                let break_glass = store::break_glass_of(&mut conn, request_id).await?;
                (request, decisions, grant, job, break_glass)
            };
            let description = app
                .config
                .resource(&request.resource)
                .map(|r| r.description.as_str())
                .unwrap_or("");
            let model = CardModel {
                request: &request,
                description,
                decisions: &decisions,
                grant: grant.as_ref(),
                job: job.as_ref(),
                break_glass: break_glass.as_ref(),
            };
            let content = render_card(&model);
            match (row.kind, &request.card_ts) {
                (OutboxKind::PostCard, Some(_)) => Ok(Delivery::Moot),
                (OutboxKind::PostCard, None) => {
                    match app.slack.post_message(&request.approval_channel, content).await {
                        Ok((channel, ts)) => {
                            let mut conn = app.db.write.acquire().await?;
                            store::set_card(&mut conn, request_id, &channel, &ts).await?;
                            Ok(Delivery::Sent)
                        }
                        Err(e) => failed(e),
                    }
                }
                (_, Some(ts)) => {
                    let channel = request.card_channel.clone().unwrap_or(request.approval_channel.clone());
                    match app.slack.update_message(&channel, ts, content).await {
                        Ok(()) => Ok(Delivery::Sent),
                        Err(e) => failed(e),
                    }
                }
                (_, None) => {
                    let mut conn = app.db.read.acquire().await?;
                    if store::card_post_pending(&mut conn, request_id).await? {
                        // No card yet: the pending post will render the latest state when it goes.
                        Ok(Delivery::Moot)
                    } else {
                        failed(SlackCallError::Permanent("the card was never posted".into()))
                    }
                }
            }
        }
    }
}
