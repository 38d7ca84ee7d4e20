-- What an adversarial test found a row or a role could do to the fleet.
--
-- 1. Bounds on what a job row may say where a value cannot be meant: a
--    timeout of 300,000 years made the sweeper's arithmetic overflow. A job
--    may run for up to a year; longer is a mistake, refused by name.
--    created_at must be a real time (pickup latency is measured from it).
--    Rows already beyond the bounds are brought inside them first, so the
--    constraints can be validated; NOT VALID then VALIDATE checks existing
--    rows without blocking writers.
-- 2. One rule for taking back a job that was claimed but never started
--    (its worker died, or the claim's answer was lost): back to `new`,
--    counting a lost claim, and cancelled at the limit, so a job that keeps
--    breaking its claims or its workers cannot loop for ever. The sweeper's
--    rescue and the worker's own lost-claim check both call it.
-- 3. The sweeper's leadership, which any role could take by holding an
--    advisory lock (those need no privilege): now a row lock on a table of
--    its own that only the worker role may lock. The row also records when
--    the fleet last swept, so every worker can tell when nobody does.

UPDATE notifyworker.jobs SET timeout = interval '1 year' WHERE timeout > interval '1 year';
UPDATE notifyworker.jobs SET created_at = clock_timestamp() WHERE NOT isfinite(created_at);

ALTER TABLE notifyworker.jobs
    ADD CONSTRAINT timeout_at_most_a_year CHECK (timeout <= interval '1 year') NOT VALID,
    ADD CONSTRAINT created_at_is_finite CHECK (isfinite(created_at)) NOT VALID;
ALTER TABLE notifyworker.jobs VALIDATE CONSTRAINT timeout_at_most_a_year;
ALTER TABLE notifyworker.jobs VALIDATE CONSTRAINT created_at_is_finite;

-- One row: whoever holds its lock sweeps; swept_at says when someone last did.
CREATE TABLE notifyworker.sweeper (
    one       boolean PRIMARY KEY DEFAULT true CONSTRAINT sweeper_has_one_row CHECK (one),
    swept_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    swept_by  text
);
INSERT INTO notifyworker.sweeper DEFAULT VALUES;

-- SELECT … FOR UPDATE needs UPDATE: the worker role's alone (and the owner's).
GRANT SELECT, UPDATE ON notifyworker.sweeper TO notifyworker_worker;

-- Takes back `from_worker`'s claimed-but-unstarted jobs, except those in `keep`.
CREATE FUNCTION notifyworker.take_back_unstarted(
    from_worker text, keep bigint[], lost_claims_limit integer
) RETURNS TABLE (id bigint, status text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE notifyworker.jobs AS j
    SET status = CASE WHEN j.lost_claims + 1 < lost_claims_limit THEN 'new' ELSE 'cancelled' END,
        lost_claims = j.lost_claims + 1,
        worker_id = CASE WHEN j.lost_claims + 1 < lost_claims_limit THEN NULL ELSE j.worker_id END,
        queued_at = CASE WHEN j.lost_claims + 1 < lost_claims_limit THEN NULL ELSE j.queued_at END,
        finished_at = CASE
            WHEN j.lost_claims + 1 < lost_claims_limit THEN NULL ELSE clock_timestamp() END,
        cancelled_at = CASE
            WHEN j.lost_claims + 1 < lost_claims_limit THEN NULL ELSE clock_timestamp() END,
        error = CASE
            WHEN j.lost_claims + 1 < lost_claims_limit THEN j.error
            ELSE 'cancelled: ' || (j.lost_claims + 1) || ' workers died holding this job'
                || ' before it started, or lost its claim; it may be killing them'
        END
    WHERE j.worker_id = from_worker AND j.status = 'queued' AND j.id <> ALL (keep)
    RETURNING j.id, j.status
$$;

REVOKE ALL ON FUNCTION notifyworker.take_back_unstarted(text, bigint[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.take_back_unstarted(text, bigint[], integer)
    TO notifyworker_worker;
