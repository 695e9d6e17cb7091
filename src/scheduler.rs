//! The durable timer. Jobs (grants, revokes, request time-outs) live in the `jobs` table
//! with the time they are due; the loop sleeps until the earliest one, or until woken
//! because a sooner one was added, and never scans the table on a fixed interval.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::store::{self, Claim};
use crate::AppState;

/// How long to wait before attempt `attempt + 1` (attempt counts from 1): doubling from
/// `initial`, capped at `max`, with "equal jitter" (half fixed, half random) so that many
/// failing jobs do not retry in lockstep. `random` is in `[0, 1)`.
pub fn backoff(initial: Duration, max: Duration, attempt: u32, random: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    let capped = initial.saturating_mul(factor).min(max);
    capped / 2 + capped.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// How many due revoke jobs one task takes at most.
const REVOKE_BATCH: i64 = 256;

/// Claims due jobs for the free workers and starts them; returns how many it claimed.
///
/// Due revokes come first and go to one task as a batch (see `grants::run_revokes`),
/// which runs their adapter calls on as many workers as it is given. When other jobs are
/// due as well they get at least half of the free workers, so a long wave of expiries
/// cannot starve grants.
pub async fn claim_and_spawn(app: &AppState, now_ms: i64) -> anyhow::Result<usize> {
    // Take the free workers before claiming, so every claimed job has one even when
    // another caller (`run_due`) claims at the same time; those left over are given back.
    let free = app.job_permits.available_permits();
    let Some(mut permits) = (free > 0)
        .then(|| app.job_permits.clone().try_acquire_many_owned(free as u32).ok())
        .flatten()
    else {
        return Ok(0);
    };
    let (revokes, others) = {
        let mut tx = app.db.begin().await?;
        let revokes = store::claim_due_jobs(&mut tx, now_ms, Claim::Revokes, REVOKE_BATCH).await?;
        let limit = if revokes.is_empty() { free } else { free / 2 };
        let others = store::claim_due_jobs(&mut tx, now_ms, Claim::AllButRevokes, limit as i64).await?;
        tx.commit().await?;
        (revokes, others)
    };
    let n = revokes.len() + others.len();
    if !revokes.is_empty() {
        let workers = (free - others.len()).min(revokes.len()).max(1);
        let permits = permits.split(workers).expect("claimed within the free workers");
        let task_app = app.clone();
        app.tasks.spawn(async move {
            let ids: Vec<i64> = revokes.iter().map(|j| j.id).collect();
            if let Err(e) = crate::grants::run_revokes(&task_app, revokes, workers).await {
                retry_after_error(&task_app, &ids, &e).await;
            }
            drop(permits);
            task_app.wake_scheduler();
        });
    }
    for job in others {
        let permit = permits.split(1).expect("claimed within the free workers");
        let task_app = app.clone();
        app.tasks.spawn(async move {
            let id = job.id;
            if let Err(e) = crate::grants::run_job(&task_app, job).await {
                retry_after_error(&task_app, &[id], &e).await;
            }
            drop(permit);
            task_app.wake_scheduler();
        });
    }
    Ok(n)
}

/// Puts claimed jobs whose run failed before it recorded anything back for a minute later
/// (jobs the run already finished are left alone).
pub(crate) async fn retry_after_error(app: &AppState, ids: &[i64], error: &anyhow::Error) {
    tracing::error!(jobs = ?ids, error = format!("{error:#}"), "job failed; retrying in a minute");
    let retry_at = app.now_ms() + 60_000;
    if let Ok(mut conn) = app.db.write.acquire().await {
        for &id in ids {
            let _ = store::retry_job(&mut conn, id, retry_at, "internal error; see the jitgate log", None).await;
        }
    }
}

/// Runs every job due at `now_ms` and waits for them to finish. Returns how many ran.
/// Tests and one-off commands drive the scheduler with this.
pub async fn run_due(app: &AppState, now_ms: i64) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let n = claim_and_spawn(app, now_ms).await?;
        total += n;
        // Wait until every worker is free again, i.e. the claimed jobs are done.
        let all = app.config.jobs.concurrency as u32;
        drop(app.job_permits.acquire_many(all).await?);
        if n == 0 {
            return Ok(total);
        }
    }
}

/// The scheduler loop, until shutdown.
pub async fn run(app: AppState) {
    loop {
        if app.shutdown.is_cancelled() {
            break;
        }
        // While looking, any new job may be the next one: ask to be woken for all of them.
        app.scheduler_next.store(i64::MAX, Ordering::SeqCst);
        if let Err(e) = claim_and_spawn(&app, app.now_ms()).await {
            tracing::error!(error = format!("{e:#}"), "scheduler could not claim jobs; retrying");
        }
        let next = match app.db.read.acquire().await {
            Ok(mut conn) => store::next_job_due(&mut conn).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "scheduler could not read the next due time");
                Some(app.now_ms() + 5_000)
            }),
            Err(e) => {
                tracing::error!(error = %e, "scheduler could not reach the database");
                Some(app.now_ms() + 5_000)
            }
        };
        // From here, `wake_scheduler_for` wakes us only for a job due before `next`; one
        // added after the read above but due sooner still wakes us (the store comes after
        // the read, the creator's check after its commit, and Notify keeps the permit).
        app.scheduler_next.store(next.unwrap_or(i64::MAX), Ordering::SeqCst);
        let sleep = match next {
            // With every worker busy, a finishing job wakes us.
            Some(at) if app.job_permits.available_permits() > 0 => app
                .clock
                .sleep_until(chrono::DateTime::from_timestamp_millis(at).unwrap_or_default()),
            _ => Box::pin(std::future::pending()),
        };
        tokio::select! {
            _ = sleep => {}
            _ = app.scheduler_wake.notified() => {}
            _ = app.shutdown.cancelled() => break,
        }
    }
    tracing::info!("scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(300), 1, 1.0), s(5));
        assert_eq!(backoff(s(5), s(300), 2, 1.0), s(10));
        assert_eq!(backoff(s(5), s(300), 3, 0.0), s(10));
        assert_eq!(backoff(s(5), s(300), 50, 1.0), s(300));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_half_and_full_of_the_capped_delay(attempt in 0u32..100, r in 0.0f64..1.0) {
            let d = backoff(Duration::from_secs(2), Duration::from_secs(600), attempt, r);
            prop_assert!(d >= Duration::from_secs(1));
            prop_assert!(d <= Duration::from_secs(600));
        }
    }
}
