-- PostgreSQL twin of ../0002_indexes_for_scale.sql (identical: partial indexes work alike).
-- Indexes that keep start-up and the background workers independent of history size.
-- Each is partial: it holds only the rows still in play (normally a handful), so it
-- costs next to nothing on insert while the tables grow to millions of rows.

-- Start-up puts jobs left 'running' by a crash back to pending; without this it scans
-- every job ever run.
CREATE INDEX jobs_running ON jobs (id) WHERE state = 'running';

-- The outbox worker reads pending entries in the order they were written; without this
-- it walks the table from its first row, past every message already sent.
CREATE INDEX outbox_pending ON outbox (id) WHERE state = 'pending';

-- "Is this request's card still waiting to be posted?" (a card update before its post).
CREATE INDEX outbox_pending_by_request ON outbox (request_id) WHERE state = 'pending';

-- Grants in force, read at start-up and by reconciliation.
CREATE INDEX grants_live ON grants (id) WHERE state IN ('granting', 'active');
