-- Messages holding secrets (generated credentials) are marked sensitive; their body is
-- erased as soon as Slack has taken them.
ALTER TABLE outbox ADD COLUMN sensitive INTEGER NOT NULL DEFAULT 0 CHECK (sensitive IN (0, 1));
