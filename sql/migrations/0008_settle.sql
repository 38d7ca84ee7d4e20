-- One home for each rule that ends or takes back an attempt. What the
-- statements do to rows is unchanged; only where the rules are written moves.
--
-- 1. The retry rule, notifyworker.will_retry_v1(): asked by mark_finished for
--    the worker's own outcomes and by the sweeper for the attempts it kills.
--    Its Python twin, notifyworker.models.will_retry, words the job's log line.
-- 2. What the sweeper does to a running attempt whose worker will never report
--    it (overdue, or the worker died), once, in notifyworker.kill_running_v1():
--    sweep_overdue and rescue_dead_worker both call it.
-- 3. take_back_unstarted() decides whether a job goes back (lost claims under
--    the limit) once per row, instead of once per column.
--
-- New functions carry a version (_v1): a later change of rule adds a _v2 beside
-- it, so the workers of the release before keep working through a rolling deploy.

-- An attempt goes back to `new` when it did not end `done`, ended for a reason
-- worth another try (a handler's exception, a timeout, a dead worker; not bad
-- input or a cancel), and `attempts`, counting this one, is below `max_attempts`.
-- No SET search_path, unlike the other functions: PostgreSQL never inlines a
-- function with settings, and mark_finished asks this one for every row of the
-- hot path. Inlined, it costs what the expression costs (tests/test_query_plans.py
-- checks); its body names only built-in operators, which pg_catalog resolves first.
CREATE FUNCTION notifyworker.will_retry_v1(
    status text, retryable boolean, attempts integer, max_attempts integer
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT status <> 'done' AND retryable AND attempts < max_attempts
$$;

-- Ends running attempts that their worker will never report: the sweeper found
-- them past their timeout, or their worker dead. A kill is a cancellation worth
-- retrying, so each job goes back to `new` after the backoff while attempts
-- remain, else ends `cancelled`; `reasons` (one per id) say why, and the attempt
-- count is added to each. Rows no longer running are left alone. The caller
-- picks the rows; this locks them again, so their status is read as it is now.
CREATE FUNCTION notifyworker.kill_running_v1(
    ids bigint[], reasons text[], retry_backoff double precision,
    retry_backoff_max double precision
) RETURNS TABLE (id bigint, status text, run_at timestamptz)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH killed AS (
        SELECT j.id, k.reason,
               notifyworker.will_retry_v1('cancelled', true, j.attempts, j.max_attempts)
                   AS retry
        FROM unnest(ids, reasons) AS k (id, reason)
        JOIN notifyworker.jobs AS j ON j.id = k.id
        WHERE j.status = 'running'
        FOR UPDATE OF j
    )
    UPDATE notifyworker.jobs AS j
    SET status = CASE WHEN k.retry THEN 'new' ELSE 'cancelled' END,
        run_at = CASE
            WHEN k.retry
            THEN clock_timestamp() + notifyworker.retry_delay(
                j.attempts, retry_backoff, retry_backoff_max)
            ELSE j.run_at END,
        worker_id = CASE WHEN k.retry THEN NULL ELSE j.worker_id END,
        queued_at = CASE WHEN k.retry THEN NULL ELSE j.queued_at END,
        started_at = CASE WHEN k.retry THEN NULL ELSE j.started_at END,
        finished_at = CASE WHEN k.retry THEN NULL ELSE clock_timestamp() END,
        cancelled_at = CASE WHEN k.retry THEN NULL ELSE clock_timestamp() END,
        error = k.reason || ' (attempt ' || j.attempts || ' of ' || j.max_attempts || ')'
    FROM killed AS k
    WHERE j.id = k.id
    RETURNING j.id, j.status, j.run_at
$$;

-- The same function as in 0006, deciding `back` once per row. The rows are
-- locked as they are picked, so `back` is decided on the row as it is now.
CREATE OR REPLACE FUNCTION notifyworker.take_back_unstarted(
    from_worker text, keep bigint[], lost_claims_limit integer
) RETURNS TABLE (id bigint, status text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH taken AS (
        SELECT j.id, j.lost_claims + 1 AS lost_claims,
               j.lost_claims + 1 < lost_claims_limit AS back
        FROM notifyworker.jobs AS j
        WHERE j.worker_id = from_worker AND j.status = 'queued' AND j.id <> ALL (keep)
        FOR UPDATE
    )
    UPDATE notifyworker.jobs AS j
    SET status = CASE WHEN t.back THEN 'new' ELSE 'cancelled' END,
        lost_claims = t.lost_claims,
        worker_id = CASE WHEN t.back THEN NULL ELSE j.worker_id END,
        queued_at = CASE WHEN t.back THEN NULL ELSE j.queued_at END,
        finished_at = CASE WHEN t.back THEN NULL ELSE clock_timestamp() END,
        cancelled_at = CASE WHEN t.back THEN NULL ELSE clock_timestamp() END,
        error = CASE
            WHEN t.back THEN j.error
            ELSE 'cancelled: ' || t.lost_claims || ' workers died holding this job'
                || ' before it started, or lost its claim; it may be killing them'
        END
    FROM taken AS t
    WHERE j.id = t.id
    RETURNING j.id, j.status
$$;

-- The worker's alone, like the backoff.
REVOKE ALL ON FUNCTION notifyworker.will_retry_v1(text, boolean, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.will_retry_v1(text, boolean, integer, integer)
    TO notifyworker_worker;
REVOKE ALL ON FUNCTION notifyworker.kill_running_v1(
    bigint[], text[], double precision, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.kill_running_v1(
    bigint[], text[], double precision, double precision) TO notifyworker_worker;
