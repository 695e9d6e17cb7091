-- Deliveries from Slack already acted on: Socket Mode re-deliveries (keyed on the
-- payload's trigger_id, since a re-delivery may carry a new envelope id) and Events API
-- retries (keyed on event_id). One row per (kind, key), claimed with
-- INSERT … ON CONFLICT DO NOTHING, so the claim is atomic across connections and
-- processes; rows are purged once `expires_at` has passed (Slack re-delivers within
-- minutes, so a retention of hours is ample). Built to be reused for other "at most once"
-- keys (replay protection of signed requests, several replicas on one database).
CREATE TABLE deliveries (
    kind       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    seen_at    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- What the first delivery was answered with (a slash command's confirmation), so a
    -- re-delivery whose first answer was lost can repeat it.
    reply      TEXT,
    PRIMARY KEY (kind, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX deliveries_expiry ON deliveries (expires_at);

-- When Slack first refused an outbox message for good (not_in_channel, invalid_auth, …).
-- Such a message stays 'pending' on a slow retry schedule until an operator fixes the
-- cause (it is also retried at every start and by `jitgate outbox retry`); NULL for
-- messages Slack never refused.
ALTER TABLE outbox ADD COLUMN refused_at INTEGER;
CREATE INDEX outbox_refused ON outbox (request_id) WHERE state = 'pending' AND refused_at IS NOT NULL;
