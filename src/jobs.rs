//! What each kind of job does: the scheduler's dispatch table. The scheduler decides when
//! jobs run; the handlers here (in `grants` and `approvals`) decide what happens, and
//! never call back into the scheduler.

use crate::app::AppState;
use crate::scheduler::{Runner, Scheduler};
use crate::store::{JobKind, JobRow};
use crate::{approvals, grants};

/// The job handlers, over the app state.
#[derive(Clone)]
pub struct Jobs(pub AppState);

impl Runner for Jobs {
    async fn run_one(&self, job: JobRow) -> anyhow::Result<()> {
        let app = &self.0;
        match job.kind {
            JobKind::Grant => grants::run_grant(app, job).await,
            JobKind::Revoke => grants::run_revoke(app, job).await,
            JobKind::ExpireRequest => grants::expire_request(app, job).await,
            JobKind::Remind => approvals::breakglass::remind(app, job).await,
            JobKind::Extend => grants::run_extend(app, job).await,
            JobKind::AutoApprove => approvals::oncall::run(app, job).await,
            JobKind::EndingSoon => grants::ending_soon(app, job).await,
        }
    }

    async fn run_revokes(&self, jobs: Vec<JobRow>, workers: usize) -> anyhow::Result<()> {
        grants::run_revokes(&self.0, jobs, workers).await
    }
}

/// The scheduler for `app`'s jobs.
pub fn scheduler(app: &AppState) -> Scheduler<Jobs> {
    Scheduler {
        db: app.db.clone(),
        clock: app.clock.clone(),
        handle: app.scheduler.clone(),
        tasks: app.tasks.clone(),
        shutdown: app.shutdown.clone(),
        runner: Jobs(app.clone()),
    }
}

/// Runs every job due at `now_ms` and waits for them to finish. Returns how many ran.
/// Tests and one-off commands drive the scheduler with this.
pub async fn run_due(app: &AppState, now_ms: i64) -> anyhow::Result<usize> {
    scheduler(app).run_due(now_ms).await
}
