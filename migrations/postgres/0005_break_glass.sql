-- PostgreSQL twin of ../0005_break_glass.sql.
-- Break-glass uses: a request granted at once, with no approver, that stays open for a
-- mandatory review. One row per break-glass request; `reviewed_*` are set once, by the
-- first eligible approver who clicks "Reviewed — OK" (or "Revoke now").
CREATE TABLE break_glass (
    request_id  BIGINT  PRIMARY KEY REFERENCES requests (id),
    used_at     BIGINT  NOT NULL,
    reviewed_by TEXT,
    reviewed_at BIGINT,
    -- 'ok' (reviewed and accepted) or 'revoked' (reviewed and ended at once).
    review      TEXT CHECK (review IN ('ok', 'revoked')),
    CHECK ((reviewed_by IS NULL) = (reviewed_at IS NULL) AND (reviewed_at IS NULL) = (review IS NULL))
);

-- The per-person rate limit counts a requester's recent uses.
CREATE INDEX break_glass_by_time ON break_glass (used_at);

-- Uses still waiting for their review (normally a handful).
CREATE INDEX break_glass_unreviewed ON break_glass (request_id) WHERE reviewed_at IS NULL;

-- Reports select requests by when they were made.
CREATE INDEX requests_by_created ON requests (created_at);
