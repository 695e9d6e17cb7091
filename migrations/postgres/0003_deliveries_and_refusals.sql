-- PostgreSQL twin of ../0003_deliveries_and_refusals.sql.
-- Deliveries from Slack already acted on: Socket Mode re-deliveries (keyed on the
-- payload's trigger_id, since a re-delivery may carry a new envelope id) and Events API
-- retries (keyed on event_id). One row per (kind, key), claimed with
-- INSERT … ON CONFLICT DO NOTHING, so the claim is atomic across connections and
-- processes; rows are purged once `expires_at` has passed.
CREATE TABLE deliveries (
    kind       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    seen_at    BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    -- What the first delivery was answered with (a slash command's confirmation), so a
    -- re-delivery whose first answer was lost can repeat it.
    reply      TEXT,
    PRIMARY KEY (kind, key)
);
CREATE INDEX deliveries_expiry ON deliveries (expires_at);

-- When Slack first refused an outbox message for good (not_in_channel, invalid_auth, …);
-- NULL for messages Slack never refused.
ALTER TABLE outbox ADD COLUMN refused_at BIGINT;
CREATE INDEX outbox_refused ON outbox (request_id) WHERE state = 'pending' AND refused_at IS NOT NULL;
