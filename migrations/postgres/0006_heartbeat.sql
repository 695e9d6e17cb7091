-- PostgreSQL twin of ../0006_heartbeat.sql.
-- The scheduler's heartbeat: one row, rewritten by the scheduler loop every few seconds.
-- `/readyz` reads the time of the last successful write (kept in memory), so a database
-- that stopped taking writes makes jitgate not ready.
CREATE TABLE heartbeat (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
