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
-- Up to date with: 0013_task_names_with_v.

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
    -- While the job is new, queued or running, no other job may hold this key
    -- (jobs_active_unique_key); once it finishes the key is free again, and
    -- the finished row keeps it as a record.
    unique_key   text,
    -- Times notifyworker.retry() sent the job back, the last of them, and the
    -- starts and the error the job had then (the next outcome writes `error`
    -- anew). max_attempts grows by the job's budget with every retry.
    retries      integer NOT NULL DEFAULT 0,
    retried_at   timestamptz,
    attempts_before_retry integer NOT NULL DEFAULT 0,
    error_before_retry    text,

    -- Named constraints, so that PostgreSQL's own error says what was wrong.
    -- 1 to 200 characters, no whitespace (no regex: checked on every UPDATE).
    CONSTRAINT task_is_a_name CHECK (
        length(task) BETWEEN 1 AND 200 AND translate(task, E' \t\r\n\x0b\f', '') = task
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
    -- The budget of a round: the starts a job was inserted with, or was given
    -- again by its last retry.
    CONSTRAINT max_attempts_in_range
        CHECK (max_attempts - attempts_before_retry BETWEEN 1 AND 100),
    CONSTRAINT lost_claims_not_negative CHECK (lost_claims >= 0),
    CONSTRAINT retry_counts_not_negative CHECK (retries >= 0 AND attempts_before_retry >= 0),
    CONSTRAINT unique_key_1_to_200_characters CHECK (length(unique_key) BETWEEN 1 AND 200)
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

-- Cron schedules. Every worker's scheduler fires a due tick by moving
-- last_tick forward to it (compare-and-set) and inserting its job in the same
-- transaction, so each tick makes exactly one job whatever the replicas. The
-- cron expression and time zone are parsed by the worker (a row that passes
-- these constraints and still does not parse is skipped with one warning).
CREATE TABLE notifyworker.schedules (
    name       text PRIMARY KEY,
    -- Five fields (minute hour day-of-month month day-of-week), six with
    -- seconds first, or a nickname such as @daily; read in `tz`.
    cron       text NOT NULL,
    -- An IANA time zone name, e.g. Europe/Paris.
    tz         text NOT NULL DEFAULT 'UTC',
    task       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    -- A paused schedule fires nothing; resumed, it starts from its next tick.
    paused     boolean NOT NULL DEFAULT false,
    -- After ticks were missed (no scheduler ran for a while): 'one' fires the
    -- latest of them once, 'none' fires none; never one job per missed tick.
    catch_up   text NOT NULL DEFAULT 'one',
    -- The last tick fired (or skipped); only ever moves forward.
    last_tick  timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The last change of the definition (not of last_tick): ticks before it
    -- belong to the definition before, and never fire.
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),

    -- 1 to 200 characters, no whitespace. The vertical tab is written \x0b:
    -- PostgreSQL reads E'\v' as a plain 'v'.
    CONSTRAINT name_is_a_name CHECK (
        length(name) BETWEEN 1 AND 200 AND translate(name, E' \t\r\n\x0b\f', '') = name
    ),
    CONSTRAINT task_is_a_name CHECK (
        length(task) BETWEEN 1 AND 200 AND translate(task, E' \t\r\n\x0b\f', '') = task
    ),
    CONSTRAINT payload_is_an_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT cron_is_cron_shaped CHECK (
        length(cron) <= 200
        AND cron ~ '^(@[a-z]+|[0-9A-Za-z*/,#-]+( +[0-9A-Za-z*/,#-]+){4,5})$'
    ),
    CONSTRAINT tz_is_zone_shaped CHECK (
        length(tz) <= 64 AND tz ~ '^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$'
    ),
    CONSTRAINT catch_up_is_known CHECK (catch_up IN ('one', 'none')),
    CONSTRAINT last_tick_is_finite CHECK (isfinite(last_tick))
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

-- `notifyworker jobs --status failed` (or cancelled), newest first: a job
-- enters it only when it ends that way, so one that succeeds never pays for it.
CREATE INDEX jobs_failed_or_cancelled ON notifyworker.jobs (status, id)
    WHERE status IN ('failed', 'cancelled');

-- `notifyworker jobs --object-id X`, newest first, and an application's own
-- lookups by its reference. Jobs without an object_id never enter it.
CREATE INDEX jobs_object_id ON notifyworker.jobs (object_id, id)
    WHERE object_id IS NOT NULL;

-- Unique jobs: one waiting or running job per key. A plain INSERT of a held
-- key fails here; notifyworker.enqueue() returns the holder's id instead.
CREATE UNIQUE INDEX jobs_active_unique_key ON notifyworker.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('new', 'queued', 'running');

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

-- Enqueues jobs, given one array per column (NULL, or one value per job): their
-- ids in the order given, a held unique_key giving its holder's id. A NULL value
-- is the column's default, as a plain INSERT leaves it (tests/test_producer.py
-- checks they agree). One statement for the caller, all or nothing.
-- SECURITY INVOKER: it needs nothing a plain INSERT does not (the INSERT and
-- SELECT privileges), so who may enqueue stays who may insert.
CREATE FUNCTION notifyworker.enqueue_many(
    tasks text[], payloads jsonb[] DEFAULT NULL, object_ids text[] DEFAULT NULL,
    timeouts interval[] DEFAULT NULL, max_attempts integer[] DEFAULT NULL,
    run_ats timestamptz[] DEFAULT NULL, unique_keys text[] DEFAULT NULL
) RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    total integer := coalesce(cardinality(tasks), 0);
    ids bigint[];
    keyless bigint[];
    placed integer;
BEGIN
    IF cardinality(payloads) NOT IN (0, total) OR cardinality(object_ids) NOT IN (0, total)
        OR cardinality(timeouts) NOT IN (0, total)
        OR cardinality(enqueue_many.max_attempts) NOT IN (0, total)
        OR cardinality(run_ats) NOT IN (0, total) OR cardinality(unique_keys) NOT IN (0, total)
    THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('notifyworker.enqueue_many: each array must be NULL or hold one'
                             ' value per task (%s)', total);
    END IF;
    IF total = 0 THEN
        RETURN '{}';
    END IF;

    -- No keys: one INSERT. Identities are handed out in insertion order, which
    -- is the order given (ORDER BY r.n), so sorted ids are the jobs in order.
    IF coalesce(cardinality(array_remove(unique_keys, NULL)), 0) = 0 THEN
        WITH inserted AS (
            INSERT INTO notifyworker.jobs (task, payload, object_id, timeout, max_attempts, run_at)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now())
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at, n)
            ORDER BY r.n
            RETURNING id
        )
        SELECT array_agg(inserted.id ORDER BY inserted.id) INTO ids FROM inserted;
        RETURN ids;
    END IF;

    -- Keys: insert the jobs not yet placed, a held key skipped (the first of
    -- several equal keys in the call takes it). The keyless ones are placed by
    -- order, as above; each keyed one by looking up its key's holder, in a new
    -- snapshot, which sees this call's own jobs too. A holder that finished in
    -- between has left its key free: go round again for those.
    ids := array_fill(NULL::bigint, ARRAY[total]);
    LOOP
        WITH inserted AS (
            INSERT INTO notifyworker.jobs
                (task, payload, object_id, timeout, max_attempts, run_at, unique_key)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now()), r.unique_key
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats,
                        unique_keys)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at,
                                       unique_key, n)
            WHERE ids[r.n] IS NULL
            ORDER BY r.n
            ON CONFLICT (unique_key)
                WHERE unique_key IS NOT NULL AND status IN ('new', 'queued', 'running')
                DO NOTHING
            RETURNING id, unique_key
        )
        SELECT array_agg(inserted.id ORDER BY inserted.id)
               FILTER (WHERE inserted.unique_key IS NULL)
        INTO keyless FROM inserted;

        placed := 0;
        FOR i IN 1 .. total LOOP
            IF ids[i] IS NULL AND unique_keys[i] IS NULL THEN
                placed := placed + 1;
                ids[i] := keyless[placed];
            END IF;
        END LOOP;

        -- The newest holder: under repeatable read this transaction may still
        -- see an older one that has finished since its snapshot.
        SELECT array_agg(coalesce(ids[k.n], held.id) ORDER BY k.n) INTO ids
        FROM unnest(unique_keys) WITH ORDINALITY AS k (unique_key, n)
        LEFT JOIN LATERAL (
            SELECT j.id FROM notifyworker.jobs AS j
            WHERE ids[k.n] IS NULL AND j.unique_key = k.unique_key
              AND j.status IN ('new', 'queued', 'running')
            ORDER BY j.id DESC
            LIMIT 1
        ) AS held ON true;

        EXIT WHEN array_position(ids, NULL) IS NULL;
    END LOOP;
    RETURN ids;
END;
$$;

-- One job: the SQL application's way to enqueue with a unique_key, e.g.
--   SELECT notifyworker.enqueue('resize', '{"image_id": 7}', unique_key => 'image-7');
-- NULL arguments take the column's default, as enqueue_many's do.
CREATE FUNCTION notifyworker.enqueue(
    task text, payload jsonb DEFAULT '{}', object_id text DEFAULT NULL,
    timeout interval DEFAULT NULL, max_attempts integer DEFAULT NULL,
    run_at timestamptz DEFAULT NULL, unique_key text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (notifyworker.enqueue_many(
        ARRAY[task], ARRAY[payload], ARRAY[object_id], ARRAY[timeout], ARRAY[max_attempts],
        ARRAY[run_at], ARRAY[unique_key]))[1];
END;
$$;

-- Stamps a schedule's updated_at when its definition changes, from any
-- client; firing a tick (last_tick alone) is not a change.
CREATE FUNCTION notifyworker.schedule_changed_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.name, NEW.cron, NEW.tz, NEW.task, NEW.payload, NEW.paused, NEW.catch_up)
        IS DISTINCT FROM
       (OLD.name, OLD.cron, OLD.tz, OLD.task, OLD.payload, OLD.paused, OLD.catch_up) THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
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

CREATE TRIGGER schedules_changed
    BEFORE UPDATE ON notifyworker.schedules
    FOR EACH ROW EXECUTE FUNCTION notifyworker.schedule_changed_v1();


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

-- The application: insert jobs (only the columns a new job may set, also
-- through enqueue() and enqueue_many()), read them back, cancel them, retry
-- them. It cannot change a job's status any other way.
GRANT USAGE ON SCHEMA notifyworker TO notifyworker_app;
GRANT SELECT ON notifyworker.jobs TO notifyworker_app;
GRANT INSERT (task, payload, object_id, timeout, max_attempts, run_at, unique_key)
    ON notifyworker.jobs TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.cancel(bigint) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.retry(bigint) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[]) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text) TO notifyworker_app;
-- It may manage schedules, which make only jobs it could insert itself; it
-- cannot set last_tick, so it cannot make a tick fire twice.
GRANT SELECT, DELETE ON notifyworker.schedules TO notifyworker_app;
GRANT INSERT (name, cron, tz, task, payload, paused, catch_up) ON notifyworker.schedules
    TO notifyworker_app;
GRANT UPDATE (cron, tz, task, payload, paused, catch_up) ON notifyworker.schedules
    TO notifyworker_app;

-- The worker: claim and record jobs, keep its registry row, sweep, prune
-- finished jobs, read the rate setting and the migration record, sync the
-- schedules declared in code and fire their ticks. The only jobs it inserts
-- are its schedules' (task, payload, object_id); it deletes only finished
-- ones (through delete_finished_v1), cannot pause or delete a schedule, and
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
GRANT SELECT ON notifyworker.schedules TO notifyworker_worker;
GRANT INSERT (name, cron, tz, task, payload, catch_up) ON notifyworker.schedules
    TO notifyworker_worker;
GRANT UPDATE (cron, tz, task, payload, catch_up, last_tick) ON notifyworker.schedules
    TO notifyworker_worker;
GRANT INSERT (task, payload, object_id) ON notifyworker.jobs TO notifyworker_worker;

-- Functions are executable by everyone unless revoked: cancel(), retry() and
-- the enqueue functions are the application's, the state machine's the worker's.
REVOKE ALL ON FUNCTION notifyworker.cancel(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.retry(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text) FROM PUBLIC;
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
    (9, 'unique_jobs'),
    (10, 'schedules'),
    (11, 'retention'),
    (12, 'retry'),
    (13, 'task_names_with_v');

COMMIT;
