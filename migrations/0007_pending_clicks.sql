-- A click is stored with its delivery key before Slack gets the acknowledgement, and
-- cleared once it has been acted on: a click acknowledged just before a crash is acted on
-- at the next start instead of being lost. Holds the click's user, action, value and
-- response_url (a short-lived capability, erased with the rest once handled).
ALTER TABLE deliveries ADD COLUMN pending_input TEXT;
CREATE INDEX deliveries_pending ON deliveries (seen_at) WHERE pending_input IS NOT NULL;
