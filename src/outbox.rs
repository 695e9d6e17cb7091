//! Delivers the Slack messages written to the `outbox` table.
//!
//! State changes write their messages in the same transaction; this worker sends them
//! afterwards, so no Slack call ever happens inside a transaction, and a message Slack
//! could not take (down, 5xx, 429, a refusal) is kept and sent later rather than dropped.
//! Cards are rendered from the stored state at delivery time, so a late update still shows
//! the truth.
//!
//! Messages travel in lanes: one per card (its post and updates) and one per other
//! destination (a person's DMs, a channel's messages). Up to [`LANES`] lanes are sent at
//! once, each in its own order, so one hung Slack call (every call has a timeout) holds
//! up only its own lane. A refusal that needs an operator (`not_in_channel`,
//! `invalid_auth`, …) keeps the message on a slow retry schedule, is logged once, and, for
//! a card, tells the requester what must be fixed; `jitgate outbox list` / `retry` show
//! and re-send such messages, and every start retries them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::backoff;
use crate::cards::{refusal_fix, render_card, CardModel};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::ids::label;
use crate::log_throttle::LogThrottle;
use crate::slack::client::SlackApi;
use crate::slack::client::SlackCallError;
use crate::store::{self, Db, GrantState, JobKind, OutboxKind, OutboxRow, Outgoing, RequestState};

/// A response_url stops working after 30 minutes.
const RESPONSE_URL_LIFETIME_MS: i64 = 30 * 60 * 1000;
/// Retry waits for a message Slack could not take.
const RETRY_INITIAL: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Retry waits for a message Slack refused for good (until an operator fixes the cause).
const REFUSED_INITIAL: Duration = Duration::from_secs(300);
const REFUSED_MAX: Duration = Duration::from_secs(3600);
/// Pauses of all delivery while every call fails (Slack down or unreachable).
const OUTAGE_INITIAL: Duration = Duration::from_secs(1);
const OUTAGE_MAX: Duration = Duration::from_secs(30);
/// Lanes delivered at once.
pub const LANES: usize = 8;
/// Messages written by another process (the CLI) are noticed within this.
pub const POLL: Duration = Duration::from_secs(2);
/// At most one "Slack call failed" line per this interval, with a count.
static FAILURE_WARNINGS: LogThrottle = LogThrottle::new(Duration::from_secs(30));

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
    /// Not tried: an earlier message of its lane failed; it waits for that one.
    Deferred(i64),
}

/// The lane a message travels in: its card, or its destination.
fn lane_of(row: &OutboxRow) -> String {
    match (row.kind, row.request_id) {
        (OutboxKind::PostCard | OutboxKind::UpdateCard, Some(id)) => format!("card {id}"),
        _ => match (&row.channel, &row.response_url) {
            (Some(c), _) => format!("to {c}"),
            (None, Some(url)) => format!("url {url}"),
            (None, None) => format!("row {}", row.id),
        },
    }
}

/// The worker loop, until shutdown.
pub async fn run(app: Outbox) {
    let mut lanes: JoinSet<Vec<Outcome>> = JoinSet::new();
    let mut lane_keys: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut paused_until: Option<i64> = None;
    // Due messages read but not started yet, in the order they were written. Read again
    // only when none of them can start, so a burst of cards costs one read per few
    // hundred, not one per card.
    let mut queue: Vec<OutboxRow> = Vec::new();
    let mut refill = true;
    // Slack unreachable (every call failing): after a lane's worth of failures in a row,
    // delivery pauses (1 s, doubling to 30 s, with jitter) instead of trying every queued
    // message, so an outage costs a few calls per pause rather than one per message.
    let mut failures_in_a_row = 0u32;
    let mut outage = 0u32;
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        let now = app.now_ms();
        let paused = paused_until.is_some_and(|p| now < p);
        if !paused && busy.len() < LANES {
            if refill || !queue.iter().any(|r| !busy.contains(&lane_of(r))) {
                queue = match app.db.read.acquire().await {
                    Ok(mut conn) => store::due_outbox(&mut conn, now, 500, &app.db.replica)
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                }
                .unwrap_or_else(|e| {
                    if let Some(n) = FAILURE_WARNINGS.hit() {
                        tracing::error!(error = format!("{e:#}"), times = n, "outbox: cannot read the database");
                    }
                    Vec::new()
                });
                // A busy lane's messages wait for it: they are read again afterwards.
                queue.retain(|r| !busy.contains(&lane_of(r)));
                refill = false;
            }
            let mut order: Vec<String> = Vec::new();
            let mut grouped: HashMap<String, Vec<OutboxRow>> = HashMap::new();
            let mut rest = Vec::new();
            for row in std::mem::take(&mut queue) {
                let key = lane_of(&row);
                if busy.contains(&key) {
                    rest.push(row);
                    continue;
                }
                if !grouped.contains_key(&key) {
                    if order.len() + busy.len() >= LANES {
                        rest.push(row);
                        continue;
                    }
                    order.push(key.clone());
                }
                grouped.entry(key).or_default().push(row);
            }
            queue = rest;
            for key in order {
                let rows = grouped.remove(&key).unwrap_or_default();
                let lane_app = app.clone();
                let handle = lanes.spawn(async move { deliver_lane(&lane_app, rows).await });
                lane_keys.insert(handle.id(), key.clone());
                busy.insert(key);
            }
        }
        // Sleep until the next message is due, a lane finishes, something is queued, or
        // the poll interval passes (messages queued by another process).
        let next = match paused_until.filter(|p| *p > now) {
            Some(p) => p,
            None => match app.db.read.acquire().await {
                Ok(mut conn) => store::next_outbox_due(&mut conn)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(i64::MAX),
                Err(_) => i64::MAX,
            },
        };
        // A due message whose lane is busy waits for the lane, not for the timer.
        let sleep: crate::clock::SleepFuture = if next > now && next != i64::MAX {
            app.clock
                .sleep_until(chrono::DateTime::from_timestamp_millis(next).unwrap_or_default())
        } else {
            Box::pin(std::future::pending())
        };
        tokio::select! {
            Some(first) = lanes.join_next_with_id(), if !lanes.is_empty() => {
                let mut finished = vec![first];
                while let Some(more) = lanes.try_join_next_with_id() {
                    finished.push(more);
                }
                let mut outcomes = Vec::new();
                for f in finished {
                    let id = match f {
                        Ok((id, o)) => {
                            outcomes.extend(o);
                            id
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "outbox: a delivery task failed; its messages stay queued");
                            e.id()
                        }
                    };
                    if let Some(key) = lane_keys.remove(&id) {
                        busy.remove(&key);
                    }
                }
                let mut pause = outcomes.iter().filter_map(|o| o.pause()).max();
                for o in &outcomes {
                    match &o.result {
                        Delivery::Sent | Delivery::Moot => {
                            failures_in_a_row = 0;
                            outage = 0;
                        }
                        Delivery::Failed(SlackCallError::Transient(_)) => failures_in_a_row += 1,
                        _ => {}
                    }
                }
                if failures_in_a_row >= LANES as u32 {
                    outage += 1;
                    failures_in_a_row = 0;
                    let wait = backoff(OUTAGE_INITIAL, OUTAGE_MAX, outage, rand::random::<f64>());
                    pause = pause.max(Some(wait));
                }
                if let Some(pause) = pause {
                    // Slack's rate limits apply per method and workspace: pause everything.
                    paused_until = Some(app.now_ms() + pause.as_millis() as i64);
                }
                record_all(&app, outcomes).await;
            }
            _ = sleep => refill = true,
            // Real time, whatever the injected clock: another process's messages.
            _ = tokio::time::sleep(POLL) => refill = true,
            _ = app.handle.wake.notified() => refill = queue.is_empty(),
            _ = app.shutdown.cancelled() => break,
        }
    }
    // Unfinished lanes stay queued and are sent again at the next start (a posted card's
    // ts is written as soon as Slack answers, so it is not posted twice).
    lanes.abort_all();
    tracing::info!("outbox stopped");
}

/// Sends one lane's messages in order, stopping at the first that fails: the rest wait
/// for it, so a card's updates never overtake its post.
async fn deliver_lane(app: &Outbox, rows: Vec<OutboxRow>) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(rows.len());
    let mut blocked = false;
    for row in rows {
        if blocked || app.shutdown.is_cancelled() {
            outcomes.push(Outcome {
                result: Delivery::Deferred(app.now_ms() + 1000),
                at: app.now_ms(),
                row,
            });
            continue;
        }
        let outcome = deliver_one(app, row).await;
        blocked = matches!(outcome.result, Delivery::Failed(_));
        outcomes.push(outcome);
    }
    outcomes
}

/// What became of one delivery attempt, to be written down.
struct Outcome {
    row: OutboxRow,
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
        row,
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
    let mut queued = false;
    let recorded = async {
        let mut tx = app.db.begin().await?;
        let mut erased = false;
        for o in &outcomes {
            let (q, e) = record(app, &mut tx, o).await?;
            queued |= q;
            erased |= e;
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
    if queued {
        app.handle.wake();
    }
}

/// Writes one outcome down. Returns whether it queued a new message (a notice) and
/// whether it erased a secret (then the WAL needs a checkpoint).
async fn record(app: &Outbox, conn: &mut crate::store::Conn, o: &Outcome) -> anyhow::Result<(bool, bool)> {
    let (row, now) = (&o.row, o.at);
    let (id, kind) = (row.id, row.kind);
    let mut erased = false;
    match &o.result {
        Delivery::Sent | Delivery::Moot => erased = store::outbox_sent(conn, id, now).await?,
        Delivery::Deferred(at) => store::outbox_defer(conn, id, *at).await?,
        Delivery::Failed(SlackCallError::RateLimited(_)) => {
            let after = o.pause().unwrap_or(Duration::from_secs(1));
            if let Some(n) = FAILURE_WARNINGS.hit() {
                tracing::warn!(outbox = id, ?kind, retry_after = ?after, times = n, "Slack rate limit; pausing deliveries");
            }
            store::outbox_retry(conn, id, now + after.as_millis() as i64, "rate limited").await?;
        }
        Delivery::Failed(SlackCallError::Transient(e)) => {
            let wait = backoff(RETRY_INITIAL, RETRY_MAX, row.attempts as u32 + 1, rand::random::<f64>());
            if let Some(n) = FAILURE_WARNINGS.hit() {
                tracing::warn!(
                    outbox = id,
                    ?kind,
                    error = %e,
                    retry_in = ?wait,
                    failures = n,
                    "Slack calls are failing; messages are kept and retried (one line per 30 s)"
                );
            }
            store::outbox_retry(conn, id, now + wait.as_millis() as i64, e).await?;
        }
        Delivery::Failed(SlackCallError::Permanent(e)) if is_final(e) => {
            tracing::error!(outbox = id, ?kind, error = %e, "Slack refused a message that cannot be sent again; giving up on it");
            erased = store::outbox_failed(conn, id, e).await?;
        }
        Delivery::Failed(SlackCallError::Permanent(e)) => {
            let wait = backoff(
                REFUSED_INITIAL,
                REFUSED_MAX,
                row.attempts as u32 + 1,
                rand::random::<f64>(),
            );
            let first = store::outbox_refused(conn, id, now + wait.as_millis() as i64, e, now).await?;
            if first {
                return Ok((refused_first_time(app, conn, row, e, now).await?, erased));
            }
        }
    }
    Ok((false, erased))
}

/// Errors after which a message can never be delivered, whatever an operator does.
fn is_final(code: &str) -> bool {
    matches!(
        code,
        "response_url expired" | "the card was never posted" | "response_url is not a URL"
    ) || code.starts_with("response_url is not on an allowed host")
}

/// The first refusal of a message: logged once with where and why; a card's requester is
/// told what an operator must do. Returns true if a notice was queued.
async fn refused_first_time(
    app: &Outbox,
    conn: &mut crate::store::Conn,
    row: &OutboxRow,
    code: &str,
    now: i64,
) -> anyhow::Result<bool> {
    let request = match row.request_id {
        Some(r) => store::get_request(&mut *conn, r).await?,
        None => None,
    };
    let channel = match (row.kind, &request) {
        (OutboxKind::PostCard | OutboxKind::UpdateCard, Some(r)) => {
            r.card_channel.clone().unwrap_or(r.approval_channel.clone())
        }
        _ => row.channel.clone().unwrap_or_else(|| "(response_url)".into()),
    };
    let fix = refusal_fix(code, &channel);
    tracing::error!(
        outbox = row.id,
        kind = ?row.kind,
        channel = %channel,
        error = %code,
        "Slack refused a message; it is kept and retried every few minutes until fixed ({fix}); `jitgate outbox list` shows what is waiting"
    );
    let Some(request) = request.filter(|_| row.kind == OutboxKind::PostCard) else {
        return Ok(false);
    };
    let expires = request.created_at + app.config.requests.pending_timeout.as_secs() as i64 * 1000;
    let text = format!(
        ":warning: Your request {} could not be shown to its approvers: Slack refused to post its card in <#{channel}> \
         (`{code}`). An operator must fix this: {fix}. The card is posted on its own once that is done. Until then \
         the request stays pending, and it still expires {}.",
        label(request.id),
        crate::text::slack_date(expires),
    );
    let notice = match &row.response_url {
        Some(url) if now - row.created_at < RESPONSE_URL_LIFETIME_MS => Outgoing::ephemeral(url, text),
        _ => Outgoing::message(&request.requester_id, text, Some(request.id)),
    };
    store::enqueue(&mut *conn, &notice, now).await?;
    Ok(true)
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
                    // A closed extension shows why: the grant it would have extended ended.
                    RequestState::Expired if request.kind == store::RequestKind::Extension => {
                        match request.extends_request_id {
                            Some(original) => store::grant_of(&mut conn, original).await?,
                            None => None,
                        }
                    }
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
            let refused = match row.kind {
                OutboxKind::PostCard => row.refused_at.and(row.last_error.as_deref()),
                _ => None,
            };
            let model = CardModel {
                request: &request,
                description,
                decisions: &decisions,
                grant: grant.as_ref(),
                job: job.as_ref(),
                break_glass: break_glass.as_ref(),
                refused,
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
