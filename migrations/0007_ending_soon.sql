-- The ending-soon notice: a job kind 'ending_soon' (a DM to the holder before access
-- ends). SQLite cannot change a CHECK constraint, so the jobs table is rebuilt with the
-- same columns, rows and indexes, and the new kind allowed. Nothing references jobs.
CREATE TABLE jobs_new (
    id            INTEGER PRIMARY KEY,
    request_id    INTEGER NOT NULL REFERENCES requests (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('grant', 'revoke', 'expire_request', 'auto_approve', 'remind', 'extend', 'ending_soon')),
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    run_at        INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    last_alert_at INTEGER,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    UNIQUE (kind, request_id)
) STRICT;
INSERT INTO jobs_new (id, request_id, kind, state, run_at, attempts, last_error, last_alert_at, created_at, finished_at)
    SELECT id, request_id, kind, state, run_at, attempts, last_error, last_alert_at, created_at, finished_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'pending';
CREATE INDEX jobs_running ON jobs (id) WHERE state = 'running';
