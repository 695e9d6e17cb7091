-- jitgate core schema. Times are INTEGER unix milliseconds (UTC).
-- Never edit a migration once it has landed; add a new one.

-- One row per `/jit request`.
CREATE TABLE requests (
    id                 INTEGER PRIMARY KEY,
    requester_id       TEXT    NOT NULL,
    team_id            TEXT    NOT NULL,
    resource           TEXT    NOT NULL,
    role               TEXT    NOT NULL,
    duration_secs      INTEGER NOT NULL CHECK (duration_secs > 0),
    reason             TEXT    NOT NULL,
    origin_channel     TEXT    NOT NULL,
    approval_channel   TEXT    NOT NULL,
    approvals_required INTEGER NOT NULL CHECK (approvals_required > 0),
    state              TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    created_at         INTEGER NOT NULL,
    decided_at         INTEGER,
    card_channel       TEXT,
    card_ts            TEXT,
    -- 'extension' requests ask for more time on the grant of `extends_request_id`.
    kind               TEXT    NOT NULL DEFAULT 'access' CHECK (kind IN ('access', 'extension')),
    extends_request_id INTEGER REFERENCES requests (id)
) STRICT;
CREATE INDEX requests_by_requester ON requests (requester_id, state);

-- One decision per approver per request: the primary key makes double clicks harmless.
CREATE TABLE decisions (
    request_id  INTEGER NOT NULL REFERENCES requests (id),
    approver_id TEXT    NOT NULL,
    verdict     TEXT    NOT NULL CHECK (verdict IN ('approve', 'deny')),
    decided_at  INTEGER NOT NULL,
    -- Why, when the decider is a policy rather than a person (e.g. on-call evidence).
    reason      TEXT,
    PRIMARY KEY (request_id, approver_id)
) STRICT;

-- At most one grant per request (UNIQUE request_id): two approvals racing cannot grant twice.
CREATE TABLE grants (
    id            INTEGER PRIMARY KEY,
    request_id    INTEGER NOT NULL UNIQUE REFERENCES requests (id),
    user_id       TEXT    NOT NULL,
    resource      TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    adapter       TEXT    NOT NULL,
    duration_secs INTEGER NOT NULL CHECK (duration_secs > 0),
    -- 'superseded': ended while another grant of the same user, resource and role still
    -- covered the same access, so the adapter was left alone (see README, overlapping grants).
    state         TEXT    NOT NULL CHECK (state IN ('granting', 'active', 'revoked', 'failed', 'superseded')),
    created_at    INTEGER NOT NULL,
    granted_at    INTEGER,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    -- Set when someone ends the grant early; the revoke job then runs at once.
    revoke_requested_by TEXT,
    revoke_requested_at INTEGER,
    adapter_state TEXT,
    last_error    TEXT
) STRICT;
CREATE INDEX grants_by_user ON grants (user_id, state);
CREATE INDEX grants_by_access ON grants (user_id, resource, role, state);

-- Durable timers and retries for adapter calls and request time-outs.
-- One job of each kind per request; a job is claimed by moving it to 'running'.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY,
    request_id    INTEGER NOT NULL REFERENCES requests (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('grant', 'revoke', 'expire_request', 'auto_approve', 'remind', 'extend')),
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    run_at        INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    last_alert_at INTEGER,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    UNIQUE (kind, request_id)
) STRICT;
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'pending';

-- Slack messages to send: written in the same transaction as the state change they
-- report, delivered afterwards, retried until Slack takes them.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('post_card', 'update_card', 'message', 'ephemeral')),
    request_id      INTEGER REFERENCES requests (id),
    channel         TEXT,
    body            TEXT,
    response_url    TEXT,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    -- The body is a secret (generated credentials): erased once Slack has taken it.
    sensitive       INTEGER NOT NULL DEFAULT 0 CHECK (sensitive IN (0, 1))
) STRICT;
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE state = 'pending';

-- Append-only audit log. Each row carries the SHA-256 of its predecessor's hash and its
-- own content, so an edit or a deletion breaks the chain (`jitgate audit verify`).
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    request_id INTEGER,
    details    TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL
) STRICT;
CREATE INDEX audit_by_request ON audit_log (request_id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
