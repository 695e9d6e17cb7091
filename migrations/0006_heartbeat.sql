-- The scheduler's heartbeat: one row, rewritten by the scheduler loop every few seconds.
-- `/readyz` reads the time of the last successful write (kept in memory), so a database
-- that stopped taking writes (full disk, read-only file) makes jitgate not ready.
CREATE TABLE heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
) STRICT;
