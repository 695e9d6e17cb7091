//! Three replicas of the real binary on one PostgreSQL database, each killed with SIGKILL
//! at random moments and restarted while a few hundred requests are asked for, approved
//! or denied, granted and left to expire: every grant is applied and revoked on time,
//! every request has one card, every requester gets each of their DMs once, and the audit
//! chain holds. The only repeats allowed are those a kill explains: an adapter call the
//! dead replica was making runs again, and a message Slack took from it just before it
//! died, unrecorded, is sent again by the replica that takes its work over (see `Resent`).
//!
//! Always on PostgreSQL (replicas need it), on a database of its own dropped at the end;
//! skipped, saying so, when the server cannot be reached, unless `JITGATE_REQUIRE_POSTGRES=1`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use jitgate::slack::signature::sign;
use jitgate::store::replicas::REPLICA_LEASE_MS;

use crate::crash::Bot;
use crate::support::*;

const REPLICAS: usize = 3;
const REQUESTS: usize = 240;
/// One request every this often, so they arrive over about 25 s.
const PACE: Duration = Duration::from_millis(100);
/// Grants last 30 to 90 s, so their expiries spread over a minute.
const SHORTEST_SECS: u64 = 30;
const LONGEST_SECS: u64 = 90;
/// Long enough that a notice held up by a takeover (the lease plus a heartbeat) is still
/// due before its grant ends; shorter than every grant, so each one gets it.
const ENDING_SOON_SECS: u64 = 25;
/// Kills happen in this first part of the run, one every `KILL_EVERY` or so.
const KILLING_FOR: Duration = Duration::from_secs(60);
const KILL_EVERY: std::ops::Range<u64> = 3_000..6_000;
/// How long one input may take to be answered by some replica, retries included.
const INPUT_DEADLINE: Duration = Duration::from_secs(60);
/// How long, after the last decision, everything may take to settle.
const SETTLE_DEADLINE: Duration = Duration::from_secs(180);

/// Slack's side of the run: signs inputs and sends each to a random live replica,
/// again to another one with the same signed body when it gets no answer.
#[derive(Clone)]
struct Slack {
    http: Client<HttpConnector, Full<Bytes>>,
    /// Each replica's address (its last process's: Slack does not know it died), `None`
    /// before it first started.
    bases: Arc<Mutex<Vec<Option<String>>>>,
    /// Deliveries that got no answer and were sent again.
    retries: Arc<AtomicUsize>,
}

impl Slack {
    fn live_base(&self, avoid: Option<&str>) -> Option<String> {
        let bases = self.bases.lock().unwrap();
        let live: Vec<&String> = bases.iter().flatten().collect();
        let others: Vec<&String> = live.iter().copied().filter(|b| Some(b.as_str()) != avoid).collect();
        let pick = if others.is_empty() { live } else { others };
        (!pick.is_empty()).then(|| pick[rand::thread_rng().gen_range(0..pick.len())].clone())
    }

    /// Delivers a form-encoded `body` to `path`, signed once as Slack signs it; returns
    /// the answer's body.
    async fn deliver(&self, path: &str, body: String) -> String {
        let ts = chrono::Utc::now().timestamp().to_string();
        let sig = sign(SIGNING_SECRET.as_bytes(), &ts, body.as_bytes());
        let started = Instant::now();
        let mut last: Option<String> = None;
        loop {
            if let Some(base) = self.live_base(last.as_deref()) {
                let req = hyper::Request::post(format!("{base}{path}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-slack-request-timestamp", &ts)
                    .header("x-slack-signature", &sig)
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap();
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    let resp = self.http.request(req).await.ok()?;
                    let status = resp.status().as_u16();
                    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
                    Some((status, String::from_utf8_lossy(&bytes).into_owned()))
                })
                .await;
                match answer {
                    Ok(Some((200, text))) => return text,
                    Ok(Some((status, text))) => panic!("{path} answered {status}: {text}"),
                    _ => {}
                }
                last = Some(base);
            }
            assert!(
                started.elapsed() < INPUT_DEADLINE,
                "no replica answered {path} within {INPUT_DEADLINE:?}"
            );
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One kill -9: which replica, when (from the first request), the grant and revoke jobs
/// it was running then (as `(kind, request id)`), which another replica runs again, and
/// how many clicks it had acknowledged but not acted on, which another replica acts on.
struct Kill {
    replica: usize,
    at: Duration,
    held: Vec<(String, i64)>,
    clicks: i64,
}

/// The replicas' processes; replica `i` listens at `slack.bases[i]` and has the replica
/// id `ids[i]` (a new one at every start).
struct Replicas {
    config: PathBuf,
    logs: PathBuf,
    bots: Vec<Option<Bot>>,
    ids: Vec<String>,
    /// Every replica id so far.
    every_id: HashSet<String>,
    slack: Slack,
    db: jitgate::store::Db,
}

impl Replicas {
    async fn start(&mut self, i: usize) {
        let log = self.logs.join(format!("replica-{i}.log"));
        let (bot, addr) = Bot::spawn(&self.config, &[], Some(log)).await;
        self.bots[i] = Some(bot);
        self.slack.bases.lock().unwrap()[i] = Some(format!("http://{addr}"));
        // It wrote its id before it listened; the only one not seen before is its.
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM replicas")
            .fetch_all(&self.db.read)
            .await
            .unwrap();
        let new: Vec<String> = ids
            .into_iter()
            .map(|r| r.0)
            .filter(|id| !self.every_id.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "one new replica id: {new:?}");
        self.every_id.insert(new[0].clone());
        self.ids[i] = new[0].clone();
    }

    /// SIGKILL. Slack still sends to its address until it is started again.
    fn kill(&mut self, i: usize) {
        if let Some(bot) = self.bots[i].take() {
            bot.kill();
        }
    }

    /// A replica caught running a grant or revoke job: the adapter is made to hang on both
    /// until one is running somewhere (at most 2 s), so that the kill after this has
    /// something to take over. The caller lets the adapter go after the kill.
    async fn holding_a_job(&self, app: &TestApp) -> Option<usize> {
        app.block_adapter("grant", true);
        app.block_adapter("revoke", true);
        let since = Instant::now();
        while since.elapsed() < Duration::from_secs(2) {
            let running: Vec<(String,)> = sqlx::query_as(
                "SELECT claimed_by FROM jobs WHERE state = 'running' AND kind IN ('grant', 'revoke') \
                 AND claimed_by IS NOT NULL",
            )
            .fetch_all(&self.db.read)
            .await
            .unwrap();
            if let Some(i) = running.iter().find_map(|(id,)| self.ids.iter().position(|x| x == id)) {
                // Claimed; in a moment the adapter is called, and hangs there.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// A replica caught deciding a click: Slack is made to hang on the group membership
    /// look-up a group member's click needs until one is recorded and undecided somewhere
    /// (at most 2 s). The caller lets Slack go after the kill.
    async fn deciding_a_click(&self, app: &TestApp) -> Option<usize> {
        app.slack.hang_method("usergroups.users.list", true);
        let since = Instant::now();
        while since.elapsed() < Duration::from_secs(2) {
            let recorded: Vec<(String,)> = sqlx::query_as(
                "SELECT claimed_by FROM deliveries WHERE pending_input IS NOT NULL AND claimed_by IS NOT NULL",
            )
            .fetch_all(&self.db.read)
            .await
            .unwrap();
            if app.slack.held_calls() > 0 {
                if let Some(i) = recorded.iter().find_map(|(id,)| self.ids.iter().position(|x| x == id)) {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Clicks replica `i`'s last process acknowledged and left undecided.
    async fn clicks_of(&self, i: usize) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE pending_input IS NOT NULL AND claimed_by = $1")
                .bind(&self.ids[i])
                .fetch_one(&self.db.read)
                .await
                .unwrap();
        n
    }

    /// The grant and revoke jobs replica `i`'s last process left running.
    async fn held_by(&self, i: usize) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT kind, request_id FROM jobs WHERE state = 'running' AND kind IN ('grant', 'revoke') \
             AND claimed_by = $1",
        )
        .bind(&self.ids[i])
        .fetch_all(&self.db.read)
        .await
        .unwrap()
    }
}

/// On a failed run, the replicas' warnings and errors, which say what went wrong.
struct ShowLogsOnFailure(PathBuf);

impl Drop for ShowLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..REPLICAS {
            let path = self.0.join(format!("replica-{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!("--- replica {i}: {} warnings and errors, the last 40:", lines.len());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// What was asked, and what the approver did.
#[derive(Debug, Clone)]
struct Asked {
    id: i64,
    user: String,
    approved: bool,
}

/// The request id of an approval card (its header reads `Access request JIT-<id>`).
fn card_of(body: &Value) -> Option<i64> {
    body.to_string().split(" request JIT-").skip(1).find_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        rest[digits.len()..]
            .starts_with('"')
            .then(|| digits.parse().ok())
            .flatten()
    })
}

/// Whether `text` names request `id` (as `JIT-<id>`, not the start of a longer number).
fn names(text: &str, id: i64) -> bool {
    text.split(&format!("JIT-{id}"))
        .skip(1)
        .any(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The kind of a DM jitgate sends a requester, by how it begins.
fn dm_kind(text: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        (":white_check_mark: Your request", "approved"),
        (":no_entry: Your request", "denied"),
        (":key: You have", "active"),
        (":hourglass: Your access", "ending soon"),
        (":lock: Your access", "ended"),
    ];
    KINDS
        .iter()
        .find(|(start, _)| text.starts_with(start))
        .map_or("other", |(_, kind)| kind)
}

/// One request's whole life as Slack sees it: `/jit request`, then a click on its card's
/// Approve (or Deny) button once the card shows.
async fn ask_and_decide(
    app: Arc<TestApp>,
    slack: Slack,
    cards: Arc<Mutex<HashSet<i64>>>,
    i: usize,
    duration_secs: u64,
    approve: bool,
    approver: &'static str,
) -> Asked {
    let user = format!("UREPLICA{i:04}");
    let command = serde_urlencoded::to_string([
        ("token", "legacy-ignored"),
        ("team_id", "T0TEAM"),
        ("team_domain", "acme"),
        ("channel_id", "C0GENERAL"),
        ("channel_name", "general"),
        ("user_id", user.as_str()),
        ("user_name", "someone"),
        ("command", "/jit"),
        (
            "text",
            &format!("request prod-db:read {duration_secs}s replicas under kill -9, #{i}"),
        ),
        ("api_app_id", "A0APP"),
        ("response_url", &app.slack.response_url(&format!("cmd-{i}"))),
        ("trigger_id", &app.slack.new_trigger_id()),
    ])
    .unwrap();
    let reply = slack.deliver("/slack/commands", command).await;
    let reply: Value = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("JSON reply: {reply}"));
    let text = reply["text"].as_str().unwrap_or_default();
    let id: i64 = text
        .split("JIT-")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request id in the reply to #{i}: {text}"));

    // An approver clicks once the card is in the channel (a replica that died holding
    // the card's post hands it over after the lease).
    let shown = Instant::now();
    while !cards.lock().unwrap().contains(&id) {
        assert!(shown.elapsed() < INPUT_DEADLINE, "JIT-{id}'s card never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let action = if approve { "jit_approve" } else { "jit_deny" };
    let click = app.click_body(approver, action, &id.to_string(), &format!("{approver}-{id}"));
    slack.deliver("/slack/interactions", click).await;
    Asked {
        id,
        user,
        approved: approve,
    }
}

/// Tells a message Slack got twice because of a kill from one sent twice by a defect.
///
/// Delivery is at least once: a replica killed after Slack took a message but before it
/// recorded that leaves the message unsent in the database, and another replica sends it
/// again once the dead one's lease has run out (no Slack API call can be made idempotent).
/// Such a second copy has a signature: the first arrived just before a kill, the second
/// only after the lease could have run out (the dead replica's last heartbeat was at most
/// `HEARTBEAT_EVERY_MS` before the kill). Anything else sent twice is a defect.
struct Resent<'a> {
    kills: &'a [Kill],
    /// When each of the fake Slack's successful calls arrived, by position.
    arrived: &'a [Duration],
}

impl Resent<'_> {
    /// From a Slack answer to its record in the database.
    const IN_FLIGHT: Duration = Duration::from_secs(2);
    /// How much later than Slack answered a call its arrival may be noted (the follower
    /// runs when it can; a request the dead replica had sent may be answered after it died).
    const NOTED_LATE: Duration = Duration::from_millis(500);

    /// `None` for a message Slack got once (`copies` holds positions in the fake's log);
    /// for one it got more than once, how kills explain each copy after the first; a
    /// panic, naming `what`, for anything else.
    fn explain(&self, what: &str, copies: &[usize]) -> Option<String> {
        if copies.len() < 2 {
            return None;
        }
        let earliest_takeover =
            Duration::from_millis((REPLICA_LEASE_MS - jitgate::scheduler::HEARTBEAT_EVERY_MS) as u64);
        let times: Vec<Duration> = copies.iter().map(|&seq| self.arrived[seq]).collect();
        let why: Vec<String> = times
            .windows(2)
            .map(|pair| {
                let (before, again) = (pair[0], pair[1]);
                let kill = self
                    .kills
                    .iter()
                    .find(|k| {
                        before <= k.at + Self::NOTED_LATE
                            && k.at <= before + Self::IN_FLIGHT
                            && again >= k.at + earliest_takeover
                    })
                    .unwrap_or_else(|| {
                        let kills: Vec<String> = self
                            .kills
                            .iter()
                            .map(|k| format!("#{}@{:.2}s", k.replica, k.at.as_secs_f64()))
                            .collect();
                        panic!(
                            "{what} was sent {} times, at {times:.2?}, and no kill explains it (kills: {})",
                            copies.len(),
                            kills.join(" ")
                        )
                    });
                format!(
                    "{:.1} s before the kill of replica {} at {:.1} s, again {:.1} s after",
                    kill.at.saturating_sub(before).as_secs_f64(),
                    kill.replica,
                    kill.at.as_secs_f64(),
                    (again - kill.at).as_secs_f64()
                )
            })
            .collect();
        Some(why.join(", then "))
    }
}

fn listed(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(" ({})", items.join("; "))
    }
}

/// p-th percentile of sorted `values`.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    sorted[(sorted.len() - 1) * p / 100]
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// One text column of each row `sql` returns.
async fn rows(db: &jitgate::store::Db, sql: &str) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&db.read).await.unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

async fn scalar(db: &jitgate::store::Db, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&db.read).await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_survive_kill_9_with_nothing_lost_or_doubled() {
    // It makes its own PostgreSQL database: once per suite is enough.
    if on_postgres() {
        eprintln!("skipped in the PostgreSQL run of the suite: it runs on PostgreSQL in the default run");
        return;
    }
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let wall = Instant::now();
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let url = database.url.clone();
    let app = TestApp::start_with(Setup {
        clock: TestClock::System,
        in_process: false,
        database: Some(database),
        requests_toml: format!("commands_per_minute = 10000\nending_soon = \"{ENDING_SOON_SECS}s\"\n"),
        ..Setup::default()
    })
    .await;
    let app = Arc::new(app);
    // Named, so the replicas' Slack self-check finds the approval channel.
    app.slack.set_channel(APPROVAL_CHANNEL, "approvals");
    let config = app.dir.path().join("jitgate.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let _logs = ShowLogsOnFailure(app.dir.path().to_path_buf());

    // The fake Slack's calls, followed as it answers them: which requests' cards are in
    // the approval channel (reading every call for every request would be quadratic), and
    // when each call arrived, to tell a message sent again after a kill.
    let started = Instant::now();
    let cards: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let arrived: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let follower = {
        let (fake, cards, arrived) = (app.slack.clone(), cards.clone(), arrived.clone());
        tokio::spawn(async move {
            let mut changes = fake.subscribe();
            let mut from = 0;
            loop {
                for o in fake.observed_since(from) {
                    from = o.seq + 1;
                    arrived.lock().unwrap().push(started.elapsed());
                    if o.method == "chat.postMessage" && o.body["channel"] == APPROVAL_CHANNEL {
                        if let Some(id) = card_of(&o.body) {
                            cards.lock().unwrap().insert(id);
                        }
                    }
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
    };

    let slack = Slack {
        http: Client::builder(TokioExecutor::new()).build_http(),
        bases: Arc::new(Mutex::new(vec![None; REPLICAS])),
        retries: Arc::default(),
    };
    let db = jitgate::store::Db::open(&url).await.unwrap();
    let mut replicas = Replicas {
        config,
        logs: app.dir.path().to_path_buf(),
        bots: (0..REPLICAS).map(|_| None).collect(),
        ids: vec![String::new(); REPLICAS],
        every_id: HashSet::new(),
        slack: slack.clone(),
        db: db.clone(),
    };
    for i in 0..REPLICAS {
        replicas.start(i).await;
    }

    // Requests, paced; each task asks, waits for its card and decides.
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let duration_secs = rng.gen_range(SHORTEST_SECS..=LONGEST_SECS);
        let approve = rng.gen_bool(0.9);
        // A group member's click waits for Slack to confirm the membership.
        let approver = [APPROVER1, APPROVER2, "UGROUPMEMBER"][rng.gen_range(0..3)];
        let (app, slack, cards) = (app.clone(), slack.clone(), cards.clone());
        let at = started + PACE * i as u32;
        asks.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            ask_and_decide(app, slack, cards, i, duration_secs, approve, approver).await
        });
    }

    // Meanwhile, kill -9 a replica every few seconds and start it again (a new process: a
    // new replica id): in turn any one at any moment, one caught running an adapter call,
    // and one caught deciding a click (once clicks are over, any one).
    let mut kills: Vec<Kill> = Vec::new();
    loop {
        let next = started.elapsed() + Duration::from_millis(rng.gen_range(KILL_EVERY));
        if next > KILLING_FOR {
            break;
        }
        tokio::time::sleep_until((started + next).into()).await;
        let caught = match kills.len() % 3 {
            1 => replicas.holding_a_job(&app).await,
            2 => replicas.deciding_a_click(&app).await,
            _ => None,
        };
        let victim = caught.unwrap_or_else(|| rng.gen_range(0..REPLICAS));
        replicas.kill(victim);
        let at = started.elapsed();
        app.block_adapter("grant", false);
        app.block_adapter("revoke", false);
        app.slack.hang_method("usergroups.users.list", false);
        // Slack keeps sending to the dead address for a moment (those deliveries are sent
        // again elsewhere). What the dead process held stays claimed by it until its lease
        // runs out, so it can be read now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        kills.push(Kill {
            replica: victim,
            at,
            held: replicas.held_by(victim).await,
            clicks: replicas.clicks_of(victim).await,
        });
        replicas.start(victim).await;
    }

    let mut asked: Vec<Asked> = Vec::new();
    while let Some(done) = asks.join_next().await {
        asked.push(done.expect("a request's task"));
    }
    asked.sort_by_key(|a| a.id);
    let decided_at = started.elapsed();
    let approved: Vec<&Asked> = asked.iter().filter(|a| a.approved).collect();

    // Everything settles: every approved grant active and then revoked, nothing left to
    // send, to run or to act on.
    let settle = Instant::now();
    loop {
        let unsettled = [
            (
                "grants not revoked",
                scalar(&db, "SELECT COUNT(*) FROM grants WHERE state <> 'revoked'").await,
            ),
            (
                "approved requests without a grant",
                approved.len() as i64 - scalar(&db, "SELECT COUNT(*) FROM grants").await,
            ),
            (
                "messages to send",
                scalar(&db, "SELECT COUNT(*) FROM outbox WHERE state <> 'sent'").await,
            ),
            (
                "jobs to run",
                scalar(&db, "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'running')").await,
            ),
            (
                "clicks to act on",
                scalar(&db, "SELECT COUNT(*) FROM deliveries WHERE pending_input IS NOT NULL").await,
            ),
        ];
        if unsettled.iter().all(|(_, n)| *n == 0) {
            break;
        }
        if settle.elapsed() > SETTLE_DEADLINE {
            let jobs = rows(
                &db,
                "SELECT 'JIT-' || request_id || ' ' || kind || ' ' || state || ' by ' || COALESCE(claimed_by, '-') \
                 FROM jobs WHERE state IN ('pending', 'running') LIMIT 20",
            )
            .await;
            let outbox = rows(
                &db,
                "SELECT id || ' ' || kind || ' JIT-' || COALESCE(request_id, 0) || ' ' || state || ' by ' \
                 || COALESCE(claimed_by, '-') FROM outbox WHERE state <> 'sent' LIMIT 20",
            )
            .await;
            panic!(
                "not settled {SETTLE_DEADLINE:?} after the last decision: {unsettled:?}\n\
                 jobs: {jobs:?}\noutbox: {outbox:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled_at = started.elapsed();
    for i in 0..REPLICAS {
        replicas.kill(i);
    }
    // Every call answered is followed before the follower stops.
    let answered = app.slack.observed_since(0).len();
    wait_for("the follower to see every Slack call", || async {
        (arrived.lock().unwrap().len() >= answered).then_some(())
    })
    .await;
    follower.abort();
    let arrived = arrived.lock().unwrap().clone();
    let observed = app.slack.observed_since(0);
    let sent_again = Resent {
        kills: &kills,
        arrived: &arrived,
    };

    // Grants: each applied and revoked. A call runs again, under the same grant id, only
    // for a job a killed replica was running (another replica takes it over); never more
    // revokes run again than there were kills.
    let grants: Vec<(i64, i64, String, i64, i64)> =
        sqlx::query_as("SELECT id, request_id, state, expires_at, revoked_at FROM grants ORDER BY id")
            .fetch_all(&db.read)
            .await
            .unwrap();
    let granted_requests: HashSet<i64> = grants.iter().map(|g| g.1).collect();
    let approved_ids: HashSet<i64> = approved.iter().map(|a| a.id).collect();
    assert_eq!(
        granted_requests, approved_ids,
        "a grant for each approved request, none other"
    );
    let mut calls: BTreeMap<(&str, i64), usize> = BTreeMap::new();
    let log = app.adapter_log();
    for line in &log {
        let mut words = line.split_whitespace();
        let (Some(action @ ("grant" | "revoke")), Some(id)) = (words.next(), words.next()) else {
            panic!("unexpected adapter call: {line}");
        };
        *calls.entry((action, id.parse().unwrap())).or_default() += 1;
    }
    let mut held: HashMap<(&str, i64), usize> = HashMap::new();
    for (kind, request) in kills.iter().flat_map(|k| &k.held) {
        *held.entry((kind.as_str(), *request)).or_default() += 1;
    }
    let (mut grant_reruns, mut revoke_reruns) = (0, 0);
    for (id, request, state, _, _) in &grants {
        assert_eq!(state, "revoked", "grant {id}");
        for action in ["grant", "revoke"] {
            let runs = calls.get(&(action, *id)).copied().unwrap_or(0);
            assert!(runs >= 1, "{action} {id} never ran");
            let again = runs - 1;
            let explained = held.get(&(action, *request)).copied().unwrap_or(0);
            assert!(
                again <= explained,
                "{action} {id} (JIT-{request}) ran {runs} times; killed replicas held it {explained} times"
            );
            match action {
                "grant" => grant_reruns += again,
                _ => revoke_reruns += again,
            }
        }
    }
    assert_eq!(
        calls.len(),
        2 * grants.len(),
        "adapter calls only for grants that exist"
    );
    assert!(
        revoke_reruns <= kills.len(),
        "{revoke_reruns} revokes ran again, more than the {} kills explain",
        kills.len()
    );

    // Punctual: late only by a takeover (a replica killed while it held a due revoke).
    let mut lateness: Vec<i64> = grants.iter().map(|g| g.4 - g.3).collect();
    lateness.sort_unstable();
    let (p50, p99, max) = (
        percentile(&lateness, 50),
        percentile(&lateness, 99),
        *lateness.last().unwrap(),
    );
    assert!(
        max < REPLICA_LEASE_MS + 10_000,
        "a revoke was {} late; a takeover explains at most {}",
        secs(max),
        secs(REPLICA_LEASE_MS + 10_000)
    );

    // One card per request, showing how the request ended. A second post is allowed
    // only where a kill explains it (see `Resent`).
    let mut posted: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut last_shown: HashMap<i64, String> = HashMap::new();
    for o in &observed {
        if o.body["channel"] != APPROVAL_CHANNEL {
            continue;
        }
        let Some(id) = card_of(&o.body) else { continue };
        match o.method.as_str() {
            "chat.postMessage" => posted.entry(id).or_default().push(o.seq),
            "chat.update" => {}
            _ => continue,
        }
        last_shown.insert(id, o.body.to_string());
    }
    let mut cards_resent = Vec::new();
    for a in &asked {
        let posts = posted.get(&a.id).map_or(&[][..], Vec::as_slice);
        assert!(!posts.is_empty(), "JIT-{} has no card", a.id);
        if let Some(why) = sent_again.explain(&format!("JIT-{}'s card", a.id), posts) {
            cards_resent.push(format!("JIT-{}: {why}", a.id));
        }
        let last = &last_shown[&a.id];
        let end = if a.approved {
            "Access ended (expired)"
        } else {
            ":no_entry: Denied by"
        };
        assert!(last.contains(end), "JIT-{}'s card ends showing {end:?}: {last}", a.id);
    }

    // Each DM once per request and kind of event (again, a second copy only where a kill
    // explains it).
    let mut dms_to: HashMap<&str, Vec<&jitgate::fakeslack::Observed>> = HashMap::new();
    for o in observed.iter().filter(|o| o.method == "chat.postMessage") {
        if let Some(channel) = o.body["channel"].as_str() {
            dms_to.entry(channel).or_default().push(o);
        }
    }
    let (mut dms, mut dms_resent) = (0, Vec::new());
    for a in &asked {
        let mut kinds: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for o in dms_to.get(a.user.as_str()).into_iter().flatten() {
            let text = o.body["text"].as_str().unwrap_or_default();
            assert!(names(text, a.id), "a DM to {} about another request: {text}", a.user);
            kinds.entry(dm_kind(text)).or_default().push(o.seq);
            dms += 1;
        }
        let expected: Vec<&str> = if a.approved {
            vec!["active", "approved", "ended", "ending soon"]
        } else {
            vec!["denied"]
        };
        assert_eq!(
            kinds.keys().copied().collect::<Vec<_>>(),
            expected,
            "kinds of DMs to {} about JIT-{}",
            a.user,
            a.id
        );
        for (kind, copies) in &kinds {
            if let Some(why) = sent_again.explain(&format!("the {kind} DM about JIT-{}", a.id), copies) {
                dms_resent.push(format!("JIT-{} {kind}: {why}", a.id));
            }
        }
    }

    // The audit chain, written by every replica in turn, verifies.
    let mut conn = db.read.acquire().await.unwrap();
    let entries = jitgate::audit::verify_chain(&audit_key(), &mut conn)
        .await
        .unwrap()
        .expect("the audit chain verifies");
    assert!(entries >= REQUESTS as i64, "{entries} audit entries");
    drop(conn);
    db.close().await;

    let kills_text: Vec<String> = kills
        .iter()
        .map(|k| {
            let mut held: Vec<String> = k.held.iter().map(|(kind, id)| format!(" {kind} JIT-{id}")).collect();
            if k.clicks > 0 {
                held.push(format!(" {} click(s)", k.clicks));
            }
            format!("#{}@{:.0}s{}", k.replica, k.at.as_secs_f64(), held.join(""))
        })
        .collect();
    eprintln!(
        "\n{REPLICAS} replicas on one PostgreSQL database under kill -9 (seed {seed}):\n\
         \x20 requests       {} ({} approved, {} denied), all decided after {:.0} s; {} deliveries retried on another replica\n\
         \x20 kills          {}, replica@time (and the adapter calls and clicks it held):\n\
         \x20                {}\n\
         \x20 adapter calls  {} grants applied ({grant_reruns} re-runs), {} revoked ({revoke_reruns} re-runs)\n\
         \x20 revoke late by p50 {}, p99 {}, max {}\n\
         \x20 Slack          {} cards, {} sent again after a kill{}\n\
         \x20                {dms} DMs, {} sent again after a kill{}\n\
         \x20 audit chain    {entries} entries, verified\n\
         \x20 wall time      {:.0} s (settled {:.0} s after the first request)\n",
        asked.len(),
        approved.len(),
        asked.len() - approved.len(),
        decided_at.as_secs_f64(),
        slack.retries.load(Ordering::Relaxed),
        kills.len(),
        kills_text.join(", "),
        grants.len(),
        grants.len(),
        secs(p50),
        secs(p99),
        secs(max),
        posted.len(),
        cards_resent.len(),
        listed(&cards_resent),
        dms_resent.len(),
        listed(&dms_resent),
        wall.elapsed().as_secs_f64(),
        settled_at.as_secs_f64(),
    );
}

#[test]
fn a_card_is_known_by_its_header_and_nothing_else() {
    let card = serde_json::json!({"a_fallback": "Access request JIT-41: <@U1> asks for prod-db:read for 1m",
                                  "blocks": [{"type": "header", "text": {"type": "plain_text", "text": "Access request JIT-42"}}]});
    assert_eq!(card_of(&card), Some(42));
    let dm = serde_json::json!({"text": ":key: You have `prod-db:read` now (JIT-42). It ends soon."});
    assert_eq!(card_of(&dm), None);
    assert!(names(":key: You have `prod-db:read` now (JIT-42).", 42));
    assert!(names("Your request JIT-42 for", 42));
    assert!(!names("Your request JIT-421 for", 42));
}
