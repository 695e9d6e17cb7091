-- Several replicas on one database (see the README, "Several replicas"). Each process
-- has an id and writes when it was last alive; the jobs, outgoing messages and clicks it
-- takes are marked with its id, so what a replica that died had taken is taken over by
-- the others once its heartbeat is stale.
CREATE TABLE replicas (
    id         TEXT   PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);

ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;

-- Wake-ups: a job or message added (or moved to another time) by one replica wakes the
-- scheduler or outbox worker of every replica, which LISTEN on these channels. Once per
-- statement; PostgreSQL delivers them at commit, one per channel per transaction.
CREATE FUNCTION jitgate_wake_scheduler() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jitgate_jobs', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_wake AFTER INSERT OR UPDATE OF run_at ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jitgate_wake_scheduler();

CREATE FUNCTION jitgate_wake_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jitgate_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_wake AFTER INSERT OR UPDATE OF next_attempt_at ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION jitgate_wake_outbox();
