-- Several replicas on one database (PostgreSQL; see the README, "Several replicas").
-- Each process has an id and writes when it was last alive; the jobs, outgoing messages
-- and clicks it takes are marked with its id, so what a replica that died had taken is
-- taken over by the others once its heartbeat is stale. SQLite has one process: the
-- columns are written there too, and everything left running is resumed at start-up.
CREATE TABLE replicas (
    id         TEXT    PRIMARY KEY,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
) STRICT;

ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
