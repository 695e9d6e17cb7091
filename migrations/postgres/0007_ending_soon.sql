-- PostgreSQL twin of ../0007_ending_soon.sql.
-- The ending-soon notice: a job kind 'ending_soon' (a DM to the holder before access
-- ends). SQLite rebuilds the jobs table to widen its CHECK; PostgreSQL replaces the
-- named constraint in place (columns, rows and indexes are untouched).
ALTER TABLE jobs
    DROP CONSTRAINT jobs_kind_check,
    ADD CONSTRAINT jobs_kind_check
        CHECK (kind IN ('grant', 'revoke', 'expire_request', 'auto_approve', 'remind', 'extend', 'ending_soon'));
