-- PostgreSQL twin of ../0008_deliveries_hold_clicks_and_requests.sql.
-- A click is stored with its delivery key before Slack gets the acknowledgement, and
-- cleared once it has been acted on: a click acknowledged just before a crash is acted on
-- at the next start instead of being lost. Holds the click's user, action, value and
-- response_url (a short-lived capability, erased with the rest once handled).
ALTER TABLE deliveries ADD COLUMN pending_input TEXT;
CREATE INDEX deliveries_pending ON deliveries (seen_at) WHERE pending_input IS NOT NULL;
-- The request a slash command created: its key is written in the same transaction as the
-- request (the group commit), so a re-delivered or replayed command finds it and is
-- answered with the same confirmation, creating nothing.
ALTER TABLE deliveries ADD COLUMN request_id BIGINT;
-- Pending extension requests by the request they extend: closed when its grant ends, in
-- the revoke's transaction.
CREATE INDEX requests_pending_extensions ON requests (extends_request_id)
    WHERE kind = 'extension' AND state = 'pending';
