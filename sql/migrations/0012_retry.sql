-- Operating a single job by hand: retry a failed or cancelled one, and find
-- jobs by status or object_id without reading the whole table.
--
-- 1. notifyworker.retry(id) sends a `failed` or `cancelled` job back to `new`
--    with a fresh attempt budget, keeping its story: `attempts` still counts
--    every start the job ever had, and `max_attempts` grows by the job's own
--    budget (what it was inserted with), so the next round has as many starts
--    as the first. The workers' rules are unchanged: they retry while
--    attempts < max_attempts, whichever release they run. Four columns keep
--    the rest of the story: how often and when it was retried, how many
--    starts it had by then, and the error it had then (the next outcome
--    writes `error` anew).
-- 2. The budget of a round, max_attempts - attempts_before_retry, is what
--    max_attempts_in_range bounds now (1 to 100, as before); a job that was
--    never retried has attempts_before_retry = 0, so for every row inserted
--    the rule is the one it was. Every existing row is such a row.
-- 3. Indexes for `notifyworker jobs --status failed|cancelled` and
--    `--object-id`. Both are partial, so a job pays for them only if it ends
--    failed or cancelled (one entry), or carries an object_id.
--
-- Cost of the migration on a big table: building the two indexes and
-- validating the new CHECK read the table once each, under the migration's
-- lock (workers wait for it to commit).

ALTER TABLE notifyworker.jobs
    -- Times notifyworker.retry() sent the job back, the last of them, and the
    -- starts and the error the job had then.
    ADD COLUMN retries integer NOT NULL DEFAULT 0,
    ADD COLUMN retried_at timestamptz,
    ADD COLUMN attempts_before_retry integer NOT NULL DEFAULT 0,
    ADD COLUMN error_before_retry text,
    ADD CONSTRAINT retry_counts_not_negative
        CHECK (retries >= 0 AND attempts_before_retry >= 0),
    DROP CONSTRAINT max_attempts_in_range,
    ADD CONSTRAINT max_attempts_in_range
        CHECK (max_attempts - attempts_before_retry BETWEEN 1 AND 100);

-- `jobs --status failed` (or cancelled), newest first: rows enter it only
-- when a job ends that way, so the hot path of a job that succeeds never
-- touches it.
CREATE INDEX jobs_failed_or_cancelled ON notifyworker.jobs (status, id)
    WHERE status IN ('failed', 'cancelled');

-- `jobs --object-id X`, newest first, and an application's own lookups by
-- its reference. Jobs without an object_id never enter it.
CREATE INDEX jobs_object_id ON notifyworker.jobs (object_id, id)
    WHERE object_id IS NOT NULL;

-- Sends a `failed` or `cancelled` job back to `new` with a fresh attempt
-- budget, due at once (or at its run_at, if that is still ahead: a job
-- cancelled before it was due keeps its time), and wakes the workers as an
-- INSERT does. The job keeps its id, created_at, attempts and error; its
-- worker, claim, start, end, result and lost claims are cleared, as for any
-- job going back to `new`. Returns 'new', or NULL when there is no such job;
-- refuses any other status (SQLSTATE 55000, object_not_in_prerequisite_state),
-- the status named in the message. The row lock serialises it with a
-- concurrent retry, cancel() or sweep: the status is read as it is now.
-- SECURITY DEFINER: applications may retry without the right to update jobs.
CREATE FUNCTION notifyworker.retry(job_id bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job record;
    holder bigint;
BEGIN
    SELECT j.status, j.attempts, j.max_attempts, j.attempts_before_retry, j.error, j.unique_key
    INTO job
    FROM notifyworker.jobs AS j WHERE j.id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF job.status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'job % is %: only a failed or cancelled job can be retried',
            job_id, job.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- A unique job's key may have gone to a newer job meanwhile: say which,
    -- rather than fail on jobs_active_unique_key.
    SELECT j.id INTO holder FROM notifyworker.jobs AS j
    WHERE j.unique_key = job.unique_key AND j.status IN ('new', 'queued', 'running')
    LIMIT 1;
    IF holder IS NOT NULL THEN
        RAISE EXCEPTION 'job % holds unique key %: job % can be retried once it ends',
            holder, job.unique_key, job_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE notifyworker.jobs
    SET status = 'new',
        run_at = greatest(run_at, clock_timestamp()),
        max_attempts = job.attempts + (job.max_attempts - job.attempts_before_retry),
        attempts_before_retry = job.attempts,
        retries = retries + 1,
        retried_at = clock_timestamp(),
        error_before_retry = job.error,
        lost_claims = 0,
        worker_id = NULL, queued_at = NULL, started_at = NULL, finished_at = NULL,
        cancelled_at = NULL, result = NULL
    WHERE id = job_id;
    -- The insert trigger's channel: every idle worker claims at once.
    PERFORM pg_notify('notifyworker_jobs', 'retried');
    RETURN 'new';
END;
$$;

-- The application's, like cancel(); not the worker's, which runs jobs and
-- never decides to run one again.
REVOKE ALL ON FUNCTION notifyworker.retry(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.retry(bigint) TO notifyworker_app;
