-- Retries with backoff, cancellation from SQL, and the claim fence.
--
-- max_attempts: how many times a job may start. A handler that raises, or a
-- job the sweeper kills (overdue, or its worker died), is tried again while
-- attempts < max_attempts, after an exponential backoff with jitter (run_at);
-- the last attempt's failure is final. The default, 1, keeps the old rule: a
-- dead job is cancelled, never re-run.
--
-- queued_at doubles as the claim fence: every claim stamps it anew, and a
-- worker's marks only land while it still matches the claim they belong to,
-- so a worker that lost a job (rescued, retried, re-claimed) never writes
-- over a later attempt.

ALTER TABLE notifyworker.jobs
    ADD COLUMN max_attempts integer NOT NULL DEFAULT 1,
    -- Not before this time. now(), not clock_timestamp(): a stable default
    -- fills existing rows without rewriting the table.
    ADD COLUMN run_at timestamptz NOT NULL DEFAULT now(),
    -- Times the job was taken back from a worker that died before the job's
    -- start was written. Bounded, so a job that kills its worker at once
    -- cannot loop forever without ever spending an attempt.
    ADD COLUMN lost_claims integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT max_attempts_in_range CHECK (max_attempts BETWEEN 1 AND 100),
    ADD CONSTRAINT lost_claims_not_negative CHECK (lost_claims >= 0);

-- The claim takes due jobs, earliest first; a retry waiting out its backoff
-- sits at the far end of this index, so claims never scan past it.
DROP INDEX notifyworker.jobs_waiting;
CREATE INDEX jobs_waiting ON notifyworker.jobs (run_at, id) WHERE status = 'new';

-- Functions

-- Exponential backoff with equal jitter: half the delay is fixed, half random,
-- so jobs that failed together do not all come back in the same instant.
CREATE FUNCTION notifyworker.retry_delay(
    attempts integer, base_seconds double precision, max_seconds double precision
) RETURNS interval
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT make_interval(secs => least(max_seconds, base_seconds * 2 ^ least(attempts - 1, 30))
                                 * (0.5 + random() / 2))
$$;

-- Cancels a job from SQL: a waiting job never starts; a claimed or running one
-- ends `cancelled` at once in the table, and its worker, told through NOTIFY,
-- cancels the handler. A finished job is left as it is. Returns the job's
-- status afterwards, NULL when there is no such job.
-- SECURITY DEFINER: applications may cancel without the right to update jobs.
CREATE FUNCTION notifyworker.cancel(job_id bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    was text;
BEGIN
    SELECT status INTO was FROM notifyworker.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF was IN ('done', 'failed', 'cancelled') THEN
        RETURN was;
    END IF;
    UPDATE notifyworker.jobs
    SET status = 'cancelled', finished_at = clock_timestamp(), cancelled_at = clock_timestamp(),
        error = 'cancelled with notifyworker.cancel() while ' || was
    WHERE id = job_id;
    IF was IN ('queued', 'running') THEN
        PERFORM pg_notify('notifyworker_cancel', job_id::text);
    END IF;
    RETURN 'cancelled';
END;
$$;

REVOKE ALL ON FUNCTION notifyworker.cancel(bigint) FROM PUBLIC;
