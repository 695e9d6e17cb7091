//! The durable timer. Jobs (grants, revokes, request time-outs) live in the `jobs` table
//! with the time they are due; the loop sleeps until the earliest one, or until woken
//! because a sooner one was added, and never scans the table on a fixed interval.
//!
//! The scheduler knows when jobs are due and how many may run at once, not what they do:
//! it hands claimed jobs to a [`Runner`] (the dispatch table in `jobs`), so the job
//! handlers never reach back into it. Handlers tell it about new work through the
//! [`SchedulerHandle`] in the app state.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::SharedClock;
use crate::store::{self, Claim, Db, JobRow};

/// How many due revoke jobs one task takes at most.
const REVOKE_BATCH: i64 = 256;

/// The loop writes its heartbeat this often, and wakes at least this often to do so.
pub const HEARTBEAT_EVERY_MS: i64 = 5_000;

/// The scheduler's side of the app state: wake-ups and the workers. Cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
    /// When the scheduler next wakes on its own (unix ms); `i64::MAX` while it is looking
    /// for work or has none. See `wake_for`.
    next: Arc<AtomicI64>,
    /// One permit per worker: a claimed job always holds one.
    permits: Arc<Semaphore>,
    workers: usize,
    /// When the loop last wrote its heartbeat (unix ms, by the injected clock); 0 before
    /// the first.
    beat: Arc<AtomicI64>,
}

impl SchedulerHandle {
    /// A handle for a scheduler running at most `workers` jobs at once.
    pub fn new(workers: usize) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            next: Arc::new(AtomicI64::new(i64::MAX)),
            permits: Arc::new(Semaphore::new(workers)),
            workers,
            beat: Arc::new(AtomicI64::new(0)),
        }
    }

    /// When the loop last wrote its heartbeat to the database (unix ms); 0 if never.
    pub fn last_beat_ms(&self) -> i64 {
        self.beat.load(Ordering::SeqCst)
    }

    /// Tells the scheduler that a job may be due sooner than it thought.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tells the scheduler about a new job due at `at_ms`, if it planned to sleep past it.
    /// Cheaper than `wake` when jobs are added often but due late (request time-outs): the
    /// scheduler is not made to look for work it cannot have.
    pub fn wake_for(&self, at_ms: i64) {
        if at_ms < self.next.load(Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// What runs claimed jobs. Implemented by the dispatch table in `jobs`.
pub trait Runner: Clone + Send + Sync + 'static {
    /// Runs one claimed job to its next state.
    fn run_one(&self, job: JobRow) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Runs a batch of claimed revoke jobs, at most `workers` adapter calls at a time.
    fn run_revokes(&self, jobs: Vec<JobRow>, workers: usize) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Everything the loop needs: where the jobs are, the time, the workers, and what runs
/// them.
#[derive(Clone)]
pub struct Scheduler<R> {
    pub db: Db,
    pub clock: SharedClock,
    pub handle: SchedulerHandle,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub runner: R,
}

impl<R: Runner> Scheduler<R> {
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Claims due jobs for the free workers and starts them; returns how many it claimed.
    ///
    /// Due revokes come first and go to one task as a batch (see `grants::run_revokes`),
    /// which runs their adapter calls on as many workers as it is given. When other jobs
    /// are due as well they get at least half of the free workers, so a long wave of
    /// expiries cannot starve grants.
    pub async fn claim_and_spawn(&self, now_ms: i64) -> anyhow::Result<usize> {
        // Take the free workers before claiming, so every claimed job has one even when
        // another caller (`run_due`) claims at the same time; those left over are given back.
        let permits = &self.handle.permits;
        let free = permits.available_permits();
        let Some(mut permits) = (free > 0)
            .then(|| permits.clone().try_acquire_many_owned(free as u32).ok())
            .flatten()
        else {
            return Ok(0);
        };
        let (revokes, others) = {
            let mut tx = self.db.begin().await?;
            let revokes =
                store::claim_due_jobs(&mut tx, now_ms, Claim::Revokes, REVOKE_BATCH, &self.db.replica).await?;
            let limit = if revokes.is_empty() { free } else { free / 2 };
            let others =
                store::claim_due_jobs(&mut tx, now_ms, Claim::AllButRevokes, limit as i64, &self.db.replica).await?;
            tx.commit().await?;
            (revokes, others)
        };
        let n = revokes.len() + others.len();
        if !revokes.is_empty() {
            let workers = (free - others.len()).min(revokes.len()).max(1);
            let permits = permits.split(workers).expect("claimed within the free workers");
            let this = self.clone();
            self.tasks.spawn(async move {
                let ids: Vec<i64> = revokes.iter().map(|j| j.id).collect();
                if let Err(e) = this.runner.run_revokes(revokes, workers).await {
                    retry_after_error(&this.db, this.now_ms(), &ids, &e).await;
                }
                drop(permits);
                this.handle.wake();
            });
        }
        for job in others {
            let permit = permits.split(1).expect("claimed within the free workers");
            let this = self.clone();
            self.tasks.spawn(async move {
                let id = job.id;
                if let Err(e) = this.runner.run_one(job).await {
                    retry_after_error(&this.db, this.now_ms(), &[id], &e).await;
                }
                drop(permit);
                this.handle.wake();
            });
        }
        Ok(n)
    }

    /// Runs every job due at `now_ms` and waits for them to finish. Returns how many ran.
    /// Tests and one-off commands drive the scheduler with this.
    pub async fn run_due(&self, now_ms: i64) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self.claim_and_spawn(now_ms).await?;
            total += n;
            // Wait until every worker is free again, i.e. the claimed jobs are done.
            drop(self.handle.permits.acquire_many(self.handle.workers as u32).await?);
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Writes the heartbeat (see `store::heartbeat`) when the last one is older than
    /// `HEARTBEAT_EVERY_MS`; `/readyz` reads when it last succeeded.
    async fn beat(&self, last_try: &mut i64) {
        let now = self.now_ms();
        if now - *last_try < HEARTBEAT_EVERY_MS {
            return;
        }
        *last_try = now;
        let written = match self.db.write.acquire().await {
            Ok(mut conn) => store::heartbeat(&mut conn, now).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => self.handle.beat.store(now, Ordering::SeqCst),
            Err(e) => {
                tracing::error!(error = %e, "scheduler: cannot write its heartbeat; the database takes no writes")
            }
        }
    }

    /// The scheduler loop, until shutdown.
    pub async fn run(self) {
        let handle = &self.handle;
        let mut last_try = i64::MIN / 2;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            self.beat(&mut last_try).await;
            // While looking, any new job may be the next one: ask to be woken for all of them.
            handle.next.store(i64::MAX, Ordering::SeqCst);
            if let Err(e) = self.claim_and_spawn(self.now_ms()).await {
                tracing::error!(error = format!("{e:#}"), "scheduler could not claim jobs; retrying");
            }
            let next = match self.db.read.acquire().await {
                Ok(mut conn) => store::next_job_due(&mut conn).await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "scheduler could not read the next due time");
                    Some(self.now_ms() + 5_000)
                }),
                Err(e) => {
                    tracing::error!(error = %e, "scheduler could not reach the database");
                    Some(self.now_ms() + 5_000)
                }
            };
            // From here, `wake_for` wakes us only for a job due before `next`; one added
            // after the read above but due sooner still wakes us (the store comes after the
            // read, the creator's check after its commit, and Notify keeps the permit).
            handle.next.store(next.unwrap_or(i64::MAX), Ordering::SeqCst);
            // Wake for the next due job (with every worker busy, a finishing job wakes us)
            // and at least every HEARTBEAT_EVERY_MS for the heartbeat.
            let heartbeat_at = last_try.saturating_add(HEARTBEAT_EVERY_MS);
            let wake_at = match next {
                Some(at) if handle.permits.available_permits() > 0 => at.min(heartbeat_at),
                _ => heartbeat_at,
            };
            let sleep = self
                .clock
                .sleep_until(chrono::DateTime::from_timestamp_millis(wake_at).unwrap_or_default());
            tokio::select! {
                _ = sleep => {}
                _ = handle.wake.notified() => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        tracing::info!("scheduler stopped");
    }
}

/// Puts claimed jobs whose run failed before it recorded anything back for a minute later
/// (jobs the run already finished are left alone).
pub async fn retry_after_error(db: &Db, now_ms: i64, ids: &[i64], error: &anyhow::Error) {
    tracing::error!(jobs = ?ids, error = format!("{error:#}"), "job failed; retrying in a minute");
    let retry_at = now_ms + 60_000;
    if let Ok(mut conn) = db.write.acquire().await {
        for &id in ids {
            let _ = store::retry_job(&mut conn, id, retry_at, "internal error; see the jitgate log", None).await;
        }
    }
}
