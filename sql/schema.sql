-- notifyworker's schema as the migrations leave it, in one file to be read.
--
-- `notifyworker migrate` never runs this file: it applies sql/migrations/ in
-- order, and those stay the truth. Update this file with every migration:
-- tests/test_schema.py builds one database from the migrations and one from
-- this file, and fails with a diff on any difference in tables, columns,
-- constraints, indexes, functions, triggers, grants, comments, or the rows a
-- schema comes with (the record of migrations, the sweeper's row).
--
-- Applied to an empty database (psql -v ON_ERROR_STOP=1 -f sql/schema.sql) it
-- builds that same schema, recorded as migrated up to the last file.
--
-- Up to date with: 0011_retention.

BEGIN;

CREATE SCHEMA notifyworker;


-- ============================================================================
-- Tables
-- ============================================================================

-- The jobs. A job is `new` (waiting, due at run_at), `queued` (claimed by a
-- worker), `running` (its handler started), then `done`, `failed` or
-- `cancelled`. Applications insert rows; workers move them along.
CREATE TABLE notifyworker.jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}',
    -- The application's own reference; notifyworker never interprets it.
    object_id    text,
    status       text NOT NULL DEFAULT 'new',
    -- Starts so far, counted when a handler starts.
    attempts     integer NOT NULL DEFAULT 0,
    -- A job running longer than this is dead: the sweeper kills it.
    timeout      interval NOT NULL DEFAULT '10 seconds',
    -- clock_timestamp(), not now(): pickup latency is measured from the
    -- insert itself, not from the start of the inserting transaction.
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Stamped anew by every claim: the claim fence. A worker's marks land
    -- only while it still matches the claim they belong to.
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    cancelled_at timestamptz,
    -- The worker that holds a queued or running job; a finished job keeps
    -- the name of the worker that ran it.
    worker_id    text,
    error        text,
    result       jsonb,
    -- How many times the job may start; retried while attempts < max_attempts.
    max_attempts integer NOT NULL DEFAULT 1,
    -- Not before this time (a retry waits out its backoff here). now(), not
    -- clock_timestamp(), as when the column was added to a filled table.
    run_at       timestamptz NOT NULL DEFAULT now(),
    -- Times the job was taken back before its start was written (its worker
    -- died, or the claim's answer was lost); bounded, so it cannot loop.
    lost_claims  integer NOT NULL DEFAULT 0,

    -- Named constraints, so that PostgreSQL's own error says what was wrong.
    -- 1 to 200 characters, no whitespace (no regex: checked on every UPDATE).
    CONSTRAINT task_is_a_name CHECK (
        length(task) BETWEEN 1 AND 200 AND translate(task, E' \t\r\n\v\f', '') = task
    ),
    CONSTRAINT payload_is_an_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT status_is_known CHECK (
        status IN ('new', 'queued', 'running', 'done', 'failed', 'cancelled')
    ),
    CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    CONSTRAINT timeout_is_positive CHECK (timeout > interval '0'),
    -- A job may run for up to a year; longer is a mistake (and overflowed
    -- the sweeper's arithmetic).
    CONSTRAINT timeout_at_most_a_year CHECK (timeout <= interval '1 year'),
    -- Pickup latency is measured from it.
    CONSTRAINT created_at_is_finite CHECK (isfinite(created_at)),
    CONSTRAINT active_has_worker CHECK (
        status NOT IN ('queued', 'running') OR worker_id IS NOT NULL
    ),
    CONSTRAINT running_has_started_at CHECK (status <> 'running' OR started_at IS NOT NULL),
    CONSTRAINT finished_has_finished_at CHECK (
        status NOT IN ('done', 'failed', 'cancelled') OR finished_at IS NOT NULL
    ),
    CONSTRAINT cancelled_has_cancelled_at CHECK (status <> 'cancelled' OR cancelled_at IS NOT NULL),
    CONSTRAINT max_attempts_in_range CHECK (max_attempts BETWEEN 1 AND 100),
    CONSTRAINT lost_claims_not_negative CHECK (lost_claims >= 0)
);

-- One row per live (or recently dead) worker process. The sweeper tells a
-- dead worker from a slow one by heartbeat_at, never by what its jobs do.
CREATE TABLE notifyworker.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Cluster-wide knobs changed while workers run; every worker reads them with
-- its heartbeat. 'rate': job starts per second per worker (no row: each
-- worker's own), by the rule of notifyworker.models.rate_problem.
CREATE TABLE notifyworker.settings (
    name  text PRIMARY KEY,
    value double precision NOT NULL,
    CONSTRAINT setting_is_known CHECK (name IN ('rate')),
    -- 0 (unlimited) or 0.001 to 100,000; refuses NaN and ±Infinity too.
    CONSTRAINT rate_in_bounds
        CHECK (name <> 'rate' OR value = 0 OR value BETWEEN 0.001::float8 AND 100000::float8)
);

-- One row: whoever holds its lock sweeps (a row lock only the worker role may
-- take); swept_at says when someone last did.
CREATE TABLE notifyworker.sweeper (
    one       boolean PRIMARY KEY DEFAULT true CONSTRAINT sweeper_has_one_row CHECK (one),
    swept_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    swept_by  text
);

-- One row: whoever holds its lock prunes a batch of finished jobs (a row lock
-- only the worker role may take, apart from the sweeper's so a batch never
-- holds that); the fleet's next batch is not due before due_at.
CREATE TABLE notifyworker.pruner (
    one        boolean PRIMARY KEY DEFAULT true CONSTRAINT pruner_has_one_row CHECK (one),
    due_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    pruned_at  timestamptz,
    pruned_by  text
);

-- The migration files applied. `notifyworker migrate` creates it before the
-- first one runs (migrate_bookkeeping in sql/queries/admin.sql).
CREATE TABLE notifyworker.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);


-- ============================================================================
-- Indexes
-- ============================================================================

-- The claim takes due waiting jobs, earliest first; finished rows never enter
-- this index, and a retry waiting out its backoff sits at its far end.
CREATE INDEX jobs_waiting ON notifyworker.jobs (run_at, id) WHERE status = 'new';

-- The sweeper, the rescue and shutdown read only the jobs that sit on a worker.
CREATE INDEX jobs_on_worker ON notifyworker.jobs (worker_id, status)
    WHERE status IN ('queued', 'running');

-- Retention deletes finished jobs by status, oldest first: a batch reads only
-- the rows it deletes. Active rows never enter it.
CREATE INDEX jobs_finished ON notifyworker.jobs (status, finished_at)
    WHERE status IN ('done', 'failed', 'cancelled');


-- ============================================================================
-- Functions
-- ============================================================================
-- All pin search_path but will_retry_v1, which must be inlined (see there).

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

-- The retry rule: an attempt goes back to `new` when it did not end `done`,
-- ended for a reason worth another try, and `attempts`, counting this one, is
-- below `max_attempts`. Asked by mark_finished (the worker's outcomes) and by
-- kill_running_v1 (the sweeper's); notifyworker.models.will_retry is its
-- Python twin. No SET search_path: PostgreSQL never inlines a function with
-- settings, and the hot path asks this one for every row.
CREATE FUNCTION notifyworker.will_retry_v1(
    status text, retryable boolean, attempts integer, max_attempts integer
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT status <> 'done' AND retryable AND attempts < max_attempts
$$;

-- The sweeper's verdict on running attempts their worker will never report
-- (overdue, or the worker died): a cancellation worth retrying, so back to
-- `new` after the backoff while attempts remain, else `cancelled`, saying why.
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

-- The lost-claim rule: a job claimed but never started (its worker died, or
-- the claim's answer was lost) goes back to `new` counting a lost claim, and
-- is cancelled at the limit, as one that may be killing its workers. Takes
-- back `from_worker`'s such jobs, except those in `keep`.
CREATE FUNCTION notifyworker.take_back_unstarted(
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

-- Deletes those of `ids` that are finished; returns what it deleted. The
-- pruner picks the rows (prune_finished) and locks them; this deletes them.
-- SECURITY DEFINER: the worker role may delete no row itself.
CREATE FUNCTION notifyworker.delete_finished_v1(ids bigint[])
RETURNS TABLE (id bigint, status text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM notifyworker.jobs AS j
    WHERE j.id = ANY (ids) AND j.status IN ('done', 'failed', 'cancelled')
    RETURNING j.id, j.status
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

-- The insert trigger's body (below).
CREATE FUNCTION notifyworker.notify_jobs_inserted_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyworker_jobs', 'inserted');
    RETURN NULL;
END;
$$;


-- ============================================================================
-- Triggers
-- ============================================================================

-- Wakes the workers. Statement-level with a constant payload: a 10,000-row
-- INSERT wakes them once, and PostgreSQL folds identical notifications of one
-- transaction into one.
CREATE TRIGGER jobs_inserted_notify
    AFTER INSERT ON notifyworker.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notifyworker.notify_jobs_inserted_v1();


-- ============================================================================
-- Roles & grants
-- ============================================================================
-- Grant the roles to your login roles:
--   CREATE ROLE shop LOGIN PASSWORD '…' IN ROLE notifyworker_app;
--   CREATE ROLE worker LOGIN PASSWORD '…' IN ROLE notifyworker_worker;
-- Migrations, `notifyworker rate` and the CLI's reports stay with the
-- schema's owner. Roles belong to the whole server, so they may exist already
-- (another database migrated first, or a migration racing this one).

DO $$
BEGIN
    CREATE ROLE notifyworker_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;

DO $$
BEGIN
    CREATE ROLE notifyworker_worker NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END;
$$;

-- The application: insert jobs (only the columns a new job may set), read
-- them back, cancel them. It cannot change a job's status any other way.
GRANT USAGE ON SCHEMA notifyworker TO notifyworker_app;
GRANT SELECT ON notifyworker.jobs TO notifyworker_app;
GRANT INSERT (task, payload, object_id, timeout, max_attempts, run_at)
    ON notifyworker.jobs TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.cancel(bigint) TO notifyworker_app;

-- The worker: claim and record jobs, keep its registry row, sweep, prune
-- finished jobs, read the rate setting and the migration record. It never
-- inserts jobs, deletes only finished ones (through delete_finished_v1), and
-- cannot change the schema or the settings.
GRANT USAGE ON SCHEMA notifyworker TO notifyworker_worker;
GRANT SELECT ON notifyworker.jobs TO notifyworker_worker;
GRANT UPDATE (
    status, attempts, run_at, lost_claims, queued_at, started_at, finished_at, cancelled_at,
    worker_id, error, result
) ON notifyworker.jobs TO notifyworker_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifyworker.workers TO notifyworker_worker;
GRANT SELECT ON notifyworker.settings TO notifyworker_worker;
-- SELECT … FOR UPDATE (the sweep lease) needs UPDATE.
GRANT SELECT, UPDATE ON notifyworker.sweeper TO notifyworker_worker;
GRANT SELECT, UPDATE ON notifyworker.pruner TO notifyworker_worker;
GRANT SELECT ON notifyworker.migrations TO notifyworker_worker;

-- Functions are executable by everyone unless revoked: cancel() is the
-- application's, the state machine's functions the worker's.
REVOKE ALL ON FUNCTION notifyworker.cancel(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.retry_delay(integer, double precision, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.retry_delay(integer, double precision, double precision)
    TO notifyworker_worker;
REVOKE ALL ON FUNCTION notifyworker.will_retry_v1(text, boolean, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.will_retry_v1(text, boolean, integer, integer)
    TO notifyworker_worker;
REVOKE ALL ON FUNCTION notifyworker.kill_running_v1(
    bigint[], text[], double precision, double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.kill_running_v1(
    bigint[], text[], double precision, double precision) TO notifyworker_worker;
REVOKE ALL ON FUNCTION notifyworker.take_back_unstarted(text, bigint[], integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.take_back_unstarted(text, bigint[], integer)
    TO notifyworker_worker;
REVOKE ALL ON FUNCTION notifyworker.delete_finished_v1(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.delete_finished_v1(bigint[]) TO notifyworker_worker;


-- ============================================================================
-- Rows the schema comes with
-- ============================================================================

INSERT INTO notifyworker.sweeper DEFAULT VALUES;
INSERT INTO notifyworker.pruner DEFAULT VALUES;

INSERT INTO notifyworker.migrations (version, name) VALUES
    (1, 'jobs_and_workers'),
    (2, 'cheaper_task_check'),
    (3, 'rate_setting'),
    (4, 'retries_and_cancel'),
    (5, 'roles'),
    (6, 'hardening'),
    (7, 'rate_bounds'),
    (8, 'settle'),
    (11, 'retention');

COMMIT;
