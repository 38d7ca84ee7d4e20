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
-- Up to date with: 0014_queues.

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
    -- The job's queue: its settings, if any, are the queue's row of
    -- notifyworker.queues; a queue without a row runs with each worker's own.
    queue        text NOT NULL DEFAULT 'default',
    -- Higher first; within one priority, oldest first.
    priority     integer NOT NULL DEFAULT 0,
    -- The application's tenant or account: what the queue's key limits count
    -- by, and what the claim takes round-robin.
    limit_key    text,

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
    CONSTRAINT unique_key_1_to_200_characters CHECK (length(unique_key) BETWEEN 1 AND 200),
    -- 1 to 100 characters, no whitespace (as task names).
    CONSTRAINT queue_is_a_name CHECK (
        length(queue) BETWEEN 1 AND 100 AND translate(queue, E' \t\r\n\x0b\f', '') = queue
    ),
    CONSTRAINT priority_in_range CHECK (priority BETWEEN -1000000 AND 1000000),
    CONSTRAINT limit_key_1_to_200_characters CHECK (length(limit_key) BETWEEN 1 AND 200)
);

-- One row per live (or recently dead) worker process. The sweeper tells a
-- dead worker from a slow one by heartbeat_at, never by what its jobs do.
CREATE TABLE notifyworker.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- What it serves (NULL: every queue) and its free consumer slots, as of
    -- its last beat: the fleet reads them to agree on whom a new job wakes.
    queues       text[],
    free_slots   integer
);

-- Cluster-wide knobs. Unused since 0014: 'rate' (a rate per worker, read
-- with the heartbeat) became the default queue's fleet rate in
-- notifyworker.queues, where the migration moved a rate found here; no worker
-- reads this table any more. Kept, empty, for a knob to come.
CREATE TABLE notifyworker.settings (
    name  text PRIMARY KEY,
    value double precision NOT NULL,
    CONSTRAINT setting_is_known CHECK (name IN ('rate')),
    -- 0 (unlimited) or 0.001 to 100,000; refuses NaN and ±Infinity too.
    CONSTRAINT rate_in_bounds
        CHECK (name <> 'rate' OR value = 0 OR value BETWEEN 0.001::float8 AND 100000::float8)
);

-- A queue's settings, for the whole fleet: every claim reads its row, so a
-- plain UPDATE from any client applies to the next claim of every worker.
-- A queue without a row runs with each worker's own settings.
CREATE TABLE notifyworker.queues (
    name            text PRIMARY KEY,
    -- Starts per second for the whole fleet, 1/rate apart; 0: unpaced (not
    -- even each worker's own limiter); NULL: each worker's own rate.
    rate            double precision,
    -- Jobs held (queued or running) at once by the whole fleet; NULL: no limit.
    concurrency     integer,
    -- The same for each limit_key of the queue; jobs without a key are not
    -- limited by them.
    key_rate        double precision,
    key_concurrency integer,
    -- A paused queue's jobs stay `new`; resumed, they are claimed at once.
    paused          boolean NOT NULL DEFAULT false,
    -- The fleet's next free start slot (kept by the claim).
    next_start_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),

    CONSTRAINT name_is_a_name CHECK (
        length(name) BETWEEN 1 AND 100 AND translate(name, E' \t\r\n\x0b\f', '') = name
    ),
    -- As the rate setting: 0, or 0.001 to 100,000; refuses NaN and ±Infinity.
    CONSTRAINT rate_in_bounds
        CHECK (rate = 0 OR rate BETWEEN 0.001::float8 AND 100000::float8),
    CONSTRAINT key_rate_in_bounds CHECK (key_rate BETWEEN 0.001::float8 AND 100000::float8),
    CONSTRAINT concurrency_in_bounds CHECK (concurrency BETWEEN 1 AND 100000),
    CONSTRAINT key_concurrency_in_bounds CHECK (key_concurrency BETWEEN 1 AND 100000),
    CONSTRAINT next_start_at_is_finite CHECK (isfinite(next_start_at))
);

-- The next free start slot of each key of a queue with a key_rate. A row
-- whose slot is long past holds nothing: the pruner deletes those.
CREATE TABLE notifyworker.queue_keys (
    queue         text NOT NULL,
    key           text NOT NULL,
    next_start_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
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

-- The claim reads a queue's due jobs, highest priority first, then oldest:
-- those without a key (coalesce(limit_key, '') = '', which no key can be),
-- or one key's; and walks the keys that wait. Finished rows never enter it.
CREATE INDEX jobs_waiting
    ON notifyworker.jobs (queue, (coalesce(limit_key, '')), priority DESC, run_at, id)
    WHERE status = 'new';

-- Concurrency limits count the jobs a queue (and a key) holds on workers.
CREATE INDEX jobs_held_by_queue ON notifyworker.jobs (queue, limit_key)
    WHERE status IN ('queued', 'running');

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
    run_ats timestamptz[] DEFAULT NULL, unique_keys text[] DEFAULT NULL,
    queues text[] DEFAULT NULL, priorities integer[] DEFAULT NULL,
    limit_keys text[] DEFAULT NULL
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
        OR cardinality(queues) NOT IN (0, total) OR cardinality(priorities) NOT IN (0, total)
        OR cardinality(limit_keys) NOT IN (0, total)
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
            INSERT INTO notifyworker.jobs
                (task, payload, object_id, timeout, max_attempts, run_at, queue, priority,
                 limit_key)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now()), coalesce(r.queue, 'default'),
                   coalesce(r.priority, 0), r.limit_key
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats,
                        queues, priorities, limit_keys)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at,
                                       queue, priority, limit_key, n)
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
                (task, payload, object_id, timeout, max_attempts, run_at, unique_key, queue,
                 priority, limit_key)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now()), r.unique_key, coalesce(r.queue, 'default'),
                   coalesce(r.priority, 0), r.limit_key
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats,
                        unique_keys, queues, priorities, limit_keys)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at,
                                       unique_key, queue, priority, limit_key, n)
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
    run_at timestamptz DEFAULT NULL, unique_key text DEFAULT NULL,
    queue text DEFAULT NULL, priority integer DEFAULT NULL, limit_key text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (notifyworker.enqueue_many(
        ARRAY[task], ARRAY[payload], ARRAY[object_id], ARRAY[timeout], ARRAY[max_attempts],
        ARRAY[run_at], ARRAY[unique_key], ARRAY[queue], ARRAY[priority], ARRAY[limit_key]))[1];
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

-- The insert trigger's body (below): the notification names the transaction
-- ('inserted:<xid>'): one per transaction still (PostgreSQL folds identical
-- ones), and every worker can tell, from the same name, which one of them it
-- wakes.
CREATE FUNCTION notifyworker.notify_jobs_inserted_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyworker_jobs', 'inserted:' || pg_current_xact_id()::text);
    RETURN NULL;
END;
$$;

-- Stamps a queue's updated_at when its settings change, from any client
-- (the claim's own next_start_at is not a change), and re-plans the start
-- slots at a new rate as the worker's own limiter does: the next slot is the
-- last one handed out plus the new interval, so a rate raised after a very
-- low one applies at once, and no change ever makes a burst.
CREATE FUNCTION notifyworker.queue_changed_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.rate, NEW.concurrency, NEW.key_rate, NEW.key_concurrency, NEW.paused)
        IS DISTINCT FROM
       (OLD.rate, OLD.concurrency, OLD.key_rate, OLD.key_concurrency, OLD.paused) THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    IF NEW.rate IS DISTINCT FROM OLD.rate THEN
        NEW.next_start_at := CASE
            WHEN OLD.rate > 0 AND NEW.rate > 0
            THEN OLD.next_start_at - make_interval(secs => 1 / OLD.rate)
                 + make_interval(secs => 1 / NEW.rate)
        END;
    END IF;
    IF NEW.key_rate IS DISTINCT FROM OLD.key_rate OR NEW.name <> OLD.name THEN
        UPDATE notifyworker.queue_keys AS k
        SET next_start_at = k.next_start_at - make_interval(secs => 1 / OLD.key_rate)
                            + make_interval(secs => 1 / NEW.key_rate)
        WHERE k.queue = OLD.name AND OLD.key_rate IS NOT NULL AND NEW.key_rate IS NOT NULL;
        DELETE FROM notifyworker.queue_keys AS k
        WHERE k.queue = OLD.name AND (OLD.key_rate IS NULL OR NEW.key_rate IS NULL
                                      OR NEW.name <> OLD.name);
    END IF;
    RETURN NEW;
END;
$$;

-- The queues' notification trigger's body (below).
CREATE FUNCTION notifyworker.notify_queue_changed_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyworker_jobs', 'queues');
    RETURN NULL;
END;
$$;

-- The claim: up to `wanted` due jobs from the queues `serve` names (NULL:
-- every queue with waiting jobs, in random order), for one worker. Per queue:
-- - no row, or a row without limits: the due jobs, highest priority first,
--   then oldest, FOR UPDATE SKIP LOCKED (replicas claim side by side);
-- - paused: nothing;
-- - fleet limits: under the queue row's lock, so the claims of that queue
--   take turns across the fleet, and limits are counted from the table as it
--   is: no more than `concurrency` held, none of a key beyond
--   `key_concurrency`, start slots 1/rate apart (and 1/key_rate per key)
--   handed out no further than `pace_ahead` seconds ahead.
-- Where jobs carry a limit_key they are taken round-robin by key (the jobs
-- without one count as one more key), starting after the key this session
-- took last, so one key's backlog never starves another key's job.
-- Each row says when its job may start: start_in seconds from now (NULL: at
-- the worker's own pace). A last row without a job, when a limit held jobs
-- back, says in claim_again_in when a claim may find more.
CREATE FUNCTION notifyworker.claim_v1(
    worker text, serve text[], wanted integer, max_payload_bytes integer,
    pace_ahead double precision
) RETURNS TABLE (
    id bigint, task text, payload text, stored_bytes integer, timeout double precision,
    queued_at timestamptz, created_at timestamptz, attempts integer, max_attempts integer,
    queue text, limit_key text, start_in double precision, claim_again_in double precision
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    q text;
    cfg record;
    limited boolean;
    left_over integer := wanted;
    budget integer;
    got integer;
    capped boolean;         -- a key at its key_concurrency held jobs back
    more boolean;           -- a key gave its whole share: it may have more
    again double precision;  -- seconds until a held-back queue may yield more
    clock timestamptz;
    horizon timestamptz;
    slot timestamptz;       -- the queue's next start slot (NULL: no fleet rate)
    start_at timestamptz;
    gap interval;
    key_gap interval;
    cursors jsonb := coalesce(
        nullif(current_setting('notifyworker.key_cursors', true), ''), '{}')::jsonb;
    after_key text;
    last_key text;
    found_ids bigint[];     -- the candidates, in the order they are taken
    found_keys text[];
    found_next timestamptz[];
    ids bigint[];
    starts timestamptz[];
    keys text[];
    key_slots timestamptz[];
    key_taken integer[];
    k integer;
    kslot timestamptz;
BEGIN
    -- A worker a sweeper declared dead claims nothing until it registered
    -- again, so a worker back from a freeze never runs a job's new attempt
    -- beside its stale one.
    IF wanted <= 0 OR NOT EXISTS (SELECT FROM notifyworker.workers AS w WHERE w.id = worker) THEN
        RETURN;
    END IF;
    FOR q IN
        SELECT u.name FROM (
            SELECT s.name FROM unnest(serve) AS s (name)
            UNION ALL
            -- Every queue with waiting jobs: one index probe per queue.
            (WITH RECURSIVE waiting AS (
                (SELECT j.queue FROM notifyworker.jobs AS j WHERE j.status = 'new'
                 ORDER BY j.queue LIMIT 1)
                UNION ALL
                SELECT (SELECT j.queue FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue > w.queue ORDER BY j.queue LIMIT 1)
                FROM waiting AS w WHERE w.queue IS NOT NULL
            )
            SELECT w.queue FROM waiting AS w WHERE serve IS NULL AND w.queue IS NOT NULL)
        ) AS u (name)
        -- A claim short of room spreads over the queues; a hundred at most,
        -- so that thousands of queues cannot make one claim slow.
        ORDER BY random()
        LIMIT 100
    LOOP
        EXIT WHEN left_over <= 0;
        SELECT c.rate, c.concurrency, c.key_rate, c.key_concurrency, c.paused, c.next_start_at
        INTO cfg FROM notifyworker.queues AS c WHERE c.name = q;
        limited := FOUND AND (cfg.rate > 0 OR cfg.concurrency IS NOT NULL
                              OR cfg.key_rate IS NOT NULL OR cfg.key_concurrency IS NOT NULL);
        IF cfg.paused THEN
            CONTINUE;
        END IF;

        IF NOT limited THEN
            IF NOT EXISTS (SELECT FROM notifyworker.jobs AS j
                           WHERE j.status = 'new' AND j.queue = q
                             AND coalesce(j.limit_key, '') > '') THEN
                -- The plain claim: no limits, no keys to be fair between.
                -- Priority by priority, highest first, each one's due jobs
                -- oldest first: jobs of a higher priority that are not due
                -- yet (scheduled, or a retry's backoff) are never read past.
                RETURN QUERY
                WITH RECURSIVE levels AS (
                    (SELECT j.priority FROM notifyworker.jobs AS j
                     WHERE j.status = 'new' AND j.queue = q AND coalesce(j.limit_key, '') = ''
                     ORDER BY j.priority DESC LIMIT 1)
                    UNION ALL
                    SELECT (SELECT j.priority FROM notifyworker.jobs AS j
                            WHERE j.status = 'new' AND j.queue = q
                              AND coalesce(j.limit_key, '') = '' AND j.priority < l.priority
                            ORDER BY j.priority DESC LIMIT 1)
                    FROM levels AS l WHERE l.priority IS NOT NULL
                ), picked AS (
                    SELECT d.id FROM levels AS l
                    CROSS JOIN LATERAL (
                        SELECT j.id FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue = q
                          AND coalesce(j.limit_key, '') = '' AND j.priority = l.priority
                          AND j.run_at <= now()
                        ORDER BY j.run_at, j.id
                        LIMIT left_over
                        FOR UPDATE SKIP LOCKED
                    ) AS d
                    WHERE l.priority IS NOT NULL
                    LIMIT left_over
                ), claimed AS (
                    UPDATE notifyworker.jobs AS j
                    SET status = 'queued', queued_at = clock_timestamp(), worker_id = worker
                    FROM picked WHERE j.id = picked.id
                    RETURNING j.*
                )
                SELECT c.id, c.task,
                       CASE WHEN pg_column_size(c.payload) <= max_payload_bytes
                            THEN c.payload::text END,
                       pg_column_size(c.payload), extract(epoch FROM c.timeout)::float8,
                       c.queued_at, c.created_at, c.attempts, c.max_attempts, c.queue,
                       c.limit_key, CASE WHEN cfg.rate = 0 THEN 0::float8 END, NULL::float8
                FROM claimed AS c;
                GET DIAGNOSTICS got = ROW_COUNT;
                left_over := left_over - got;
                CONTINUE;
            END IF;
            budget := left_over;
        ELSE
            -- Limits for the whole fleet: this queue's claims take turns.
            SELECT c.rate, c.concurrency, c.key_rate, c.key_concurrency, c.paused,
                   c.next_start_at
            INTO cfg FROM notifyworker.queues AS c WHERE c.name = q FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                -- Another worker's claim of this queue has the row (or a
                -- client's open transaction): never wait for it, look again soon.
                again := least(again, 0.01);
                CONTINUE;
            END IF;
            IF cfg.paused THEN
                CONTINUE;
            END IF;
            limited := cfg.rate > 0 OR cfg.concurrency IS NOT NULL
                       OR cfg.key_rate IS NOT NULL OR cfg.key_concurrency IS NOT NULL;
            budget := left_over;
            IF cfg.concurrency IS NOT NULL THEN
                budget := least(budget, cfg.concurrency - (
                    SELECT count(*) FROM notifyworker.jobs AS j
                    WHERE j.status IN ('queued', 'running') AND j.queue = q)::integer);
                IF budget <= 0 THEN
                    again := least(again, 0.05);  -- a job held elsewhere may end
                    CONTINUE;
                END IF;
            END IF;
        END IF;

        clock := clock_timestamp();
        horizon := clock + make_interval(secs => pace_ahead);
        slot := NULL; gap := NULL; key_gap := NULL;
        IF limited AND cfg.rate > 0 THEN
            -- A slot is never in the past when the worker gets it: 2 ms ahead
            -- at least, or jobs claimed after an idle spell would start at once.
            slot := greatest(clock + interval '2 milliseconds', cfg.next_start_at);
            gap := make_interval(secs => 1 / cfg.rate);
            IF slot > horizon THEN
                again := least(again, extract(epoch FROM slot - horizon)::float8);
                CONTINUE;
            END IF;
        END IF;
        IF limited AND cfg.key_rate IS NOT NULL THEN
            key_gap := make_interval(secs => 1 / cfg.key_rate);
        END IF;
        after_key := cursors ->> q;
        ids := '{}'; starts := '{}'; keys := '{}'; key_slots := '{}';
        key_taken := '{}';

        -- Candidates, round-robin by key: up to 200 keys after the last one
        -- this session took (then from the first), and the jobs without a
        -- key; each gives an equal share of the budget, highest priority
        -- first, then oldest.
        WITH RECURSIVE after_cursor AS (
                (SELECT coalesce(j.limit_key, '') AS turn_key FROM notifyworker.jobs AS j
                 WHERE j.status = 'new' AND j.queue = q
                   AND coalesce(j.limit_key, '') > coalesce(after_key, '')
                 ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                UNION ALL
                SELECT (SELECT coalesce(j.limit_key, '') FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue = q
                          AND coalesce(j.limit_key, '') > a.turn_key
                        ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                FROM after_cursor AS a WHERE a.turn_key IS NOT NULL
            ), from_first AS (
                (SELECT coalesce(j.limit_key, '') AS turn_key FROM notifyworker.jobs AS j
                 WHERE j.status = 'new' AND j.queue = q
                   AND coalesce(j.limit_key, '') > '' AND coalesce(j.limit_key, '') <= after_key
                 ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                UNION ALL
                SELECT (SELECT coalesce(j.limit_key, '') FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue = q
                          AND coalesce(j.limit_key, '') > f.turn_key
                          AND coalesce(j.limit_key, '') <= after_key
                        ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                FROM from_first AS f WHERE f.turn_key IS NOT NULL
            ), visited AS (
                -- Keys in turn order, no more than the budget (the LIMIT stops
                -- both walks: they run lazily), then the jobs without a key, if any.
                (SELECT a.turn_key FROM after_cursor AS a WHERE a.turn_key IS NOT NULL
                 UNION ALL
                 SELECT f.turn_key FROM from_first AS f WHERE f.turn_key IS NOT NULL
                 LIMIT least(budget, 200))
                UNION ALL
                SELECT '' WHERE EXISTS (
                    SELECT FROM notifyworker.jobs AS j
                    WHERE j.status = 'new' AND j.queue = q AND coalesce(j.limit_key, '') = '')
            ), turns AS (
                SELECT v.turn_key, row_number() OVER () AS turn FROM visited AS v
            ), shares AS (
                SELECT t.turn_key, t.turn,
                       ceil(budget::float8 / (SELECT count(*) FROM turns))::integer AS share,
                       CASE WHEN t.turn_key <> '' AND cfg.key_concurrency IS NOT NULL
                            THEN (SELECT count(*) FROM notifyworker.jobs AS j
                                  WHERE j.status IN ('queued', 'running') AND j.queue = q
                                    AND j.limit_key = t.turn_key)::integer
                       END AS held,
                       CASE WHEN t.turn_key <> '' AND cfg.key_rate IS NOT NULL
                            THEN (SELECT qk.next_start_at FROM notifyworker.queue_keys AS qk
                                  WHERE qk.queue = q AND qk.key = t.turn_key)
                       END AS key_next
                FROM turns AS t
            -- A key gives no more jobs than its free places under
            -- key_concurrency (none at it, and it locks none), and says so.
            ), candidates AS (
            SELECT c.id, nullif(s.turn_key, '') AS limit_key, s.key_next,
                   s.share > coalesce(cfg.key_concurrency - s.held, s.share) AS at_limit,
                   count(c.id) OVER (PARTITION BY s.turn) = s.share AS full_share,
                   row_number() OVER (ORDER BY c.priority DESC NULLS LAST, c.rank, s.turn) AS ord
            FROM shares AS s
            LEFT JOIN LATERAL (
                SELECT l.id, l.priority, l.run_at,
                       row_number() OVER (ORDER BY l.priority DESC, l.run_at, l.id) AS rank
                FROM (
                    SELECT j.id, j.priority, j.run_at FROM notifyworker.jobs AS j
                    WHERE j.status = 'new' AND j.queue = q
                      AND coalesce(j.limit_key, '') = s.turn_key AND j.run_at <= now()
                    ORDER BY j.priority DESC, j.run_at, j.id
                    LIMIT greatest(least(s.share, cfg.key_concurrency - s.held), 0)
                    FOR UPDATE SKIP LOCKED
                ) AS l
            ) AS c ON true
        )
        SELECT coalesce(array_agg(x.id ORDER BY x.ord) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(array_agg(x.limit_key ORDER BY x.ord) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(array_agg(x.key_next ORDER BY x.ord) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(bool_or(x.at_limit), false), coalesce(bool_or(x.full_share), false)
        INTO found_ids, found_keys, found_next, capped, more
        FROM candidates AS x;
        IF key_gap IS NULL THEN
            -- One slot after another (if the queue has a rate), in the order found.
            IF slot IS NOT NULL THEN
                budget := least(budget,
                                floor(extract(epoch FROM horizon - slot) * cfg.rate)::integer + 1);
            END IF;
            ids := found_ids[1:budget];
            starts := ARRAY(
                SELECT CASE WHEN slot IS NOT NULL THEN slot + (n - 1) * gap
                            WHEN cfg.rate = 0 THEN clock END  -- unpaced: not even the worker's
                FROM generate_series(1, cardinality(ids)) AS n);
            last_key := (SELECT u.k FROM unnest(found_keys[1:budget]) WITH ORDINALITY AS u (k, n)
                         WHERE u.k IS NOT NULL ORDER BY u.n DESC LIMIT 1);
            IF slot IS NOT NULL THEN
                slot := slot + cardinality(ids) * gap;
                IF cardinality(found_ids) > cardinality(ids) THEN
                    again := least(again, extract(epoch FROM slot - horizon)::float8);
                END IF;
            END IF;
        ELSE
            -- A key_rate: each key's slots too, one job at a time.
            FOR i IN 1 .. cardinality(found_ids) LOOP
                EXIT WHEN cardinality(ids) >= budget;
                IF slot > horizon THEN
                    again := least(again, extract(epoch FROM slot - horizon)::float8);
                    EXIT;
                END IF;
                kslot := NULL;
                IF found_keys[i] IS NOT NULL THEN
                    k := array_position(keys, found_keys[i]);
                    IF k IS NULL THEN
                        keys := keys || found_keys[i];
                        k := cardinality(keys);
                        key_taken := key_taken || 0;
                        key_slots := key_slots || greatest(clock, found_next[i]);
                    END IF;
                    kslot := key_slots[k];
                    IF kslot > horizon THEN
                        again := least(again, extract(epoch FROM kslot - horizon)::float8);
                        CONTINUE;
                    END IF;
                    key_taken[k] := key_taken[k] + 1;
                    last_key := found_keys[i];
                END IF;
                start_at := greatest(slot, kslot);  -- NULL when neither paces it
                IF start_at IS NULL AND cfg.rate = 0 THEN
                    start_at := clock;
                END IF;
                ids := ids || found_ids[i];
                starts := starts || start_at;
                IF slot IS NOT NULL THEN
                    slot := start_at + gap;
                END IF;
                IF kslot IS NOT NULL THEN
                    key_slots[k] := start_at + key_gap;
                END IF;
            END LOOP;
        END IF;

        IF last_key IS NOT NULL THEN
            cursors := jsonb_set(cursors, ARRAY[q], to_jsonb(last_key));
            last_key := NULL;
        END IF;
        IF capped OR (cfg.concurrency IS NOT NULL AND cardinality(ids) = budget
                      AND budget < left_over) THEN
            again := least(again, 0.05);  -- places held elsewhere may free up
        END IF;
        IF more AND cardinality(ids) < budget THEN
            again := least(again, 0.0);  -- shares left room a second claim can fill
        END IF;
        IF slot IS NOT NULL THEN
            UPDATE notifyworker.queues AS c SET next_start_at = slot WHERE c.name = q;
        END IF;
        IF key_gap IS NOT NULL THEN
            INSERT INTO notifyworker.queue_keys AS qk (queue, key, next_start_at)
            SELECT q, u.key, u.next_start_at
            FROM unnest(keys, key_slots, key_taken) AS u (key, next_start_at, taken)
            WHERE u.taken > 0
            ON CONFLICT (queue, key) DO UPDATE SET next_start_at = excluded.next_start_at;
        END IF;
        CONTINUE WHEN cardinality(ids) = 0;
        RETURN QUERY
        WITH claimed AS (
            UPDATE notifyworker.jobs AS j
            SET status = 'queued', queued_at = clock_timestamp(), worker_id = worker
            FROM unnest(ids, starts) AS m (id, start_at)
            -- = ANY: the primary key's index, however small the planner
            -- thinks the table is (a sequential scan of a big one was 50 ms).
            WHERE j.id = m.id AND j.id = ANY (ids) AND j.status = 'new'
            RETURNING j.*, m.start_at
        )
        SELECT c.id, c.task,
               CASE WHEN pg_column_size(c.payload) <= max_payload_bytes THEN c.payload::text END,
               pg_column_size(c.payload), extract(epoch FROM c.timeout)::float8,
               c.queued_at, c.created_at, c.attempts, c.max_attempts, c.queue, c.limit_key,
               -- From the claim's start (now()), which the worker knows as the
               -- moment it sent the claim: the answer's delay moves no slot.
               extract(epoch FROM c.start_at - now())::float8,
               NULL::float8
        FROM claimed AS c;
        GET DIAGNOSTICS got = ROW_COUNT;
        left_over := left_over - got;
    END LOOP;
    PERFORM set_config('notifyworker.key_cursors', cursors::text, false);
    IF again IS NOT NULL THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::float8,
                            NULL::timestamptz, NULL::timestamptz, NULL::integer, NULL::integer,
                            NULL::text, NULL::text, NULL::float8, greatest(again, 0.001);
    END IF;
END;
$$;


-- ============================================================================
-- Triggers
-- ============================================================================

-- Wakes the workers. Statement-level, with a payload naming the transaction:
-- a 10,000-row INSERT wakes them once, and PostgreSQL folds identical
-- notifications of one transaction into one.
CREATE TRIGGER jobs_inserted_notify
    AFTER INSERT ON notifyworker.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notifyworker.notify_jobs_inserted_v1();

CREATE TRIGGER schedules_changed
    BEFORE UPDATE ON notifyworker.schedules
    FOR EACH ROW EXECUTE FUNCTION notifyworker.schedule_changed_v1();

CREATE TRIGGER queues_changed
    BEFORE UPDATE ON notifyworker.queues
    FOR EACH ROW EXECUTE FUNCTION notifyworker.queue_changed_v1();

-- A queue resumed, or given more room, may have jobs waiting: wake the fleet.
CREATE TRIGGER queues_changed_notify
    AFTER INSERT OR UPDATE OF rate, concurrency, key_rate, key_concurrency, paused
        OR DELETE ON notifyworker.queues
    FOR EACH STATEMENT EXECUTE FUNCTION notifyworker.notify_queue_changed_v1();


-- ============================================================================
-- Roles & grants
-- ============================================================================
-- Grant the roles to your login roles:
--   CREATE ROLE shop LOGIN PASSWORD '…' IN ROLE notifyworker_app;
--   CREATE ROLE worker LOGIN PASSWORD '…' IN ROLE notifyworker_worker;
-- Migrations, `notifyworker rate`, `notifyworker queue` and the CLI's
-- reports stay with the schema's owner. Roles belong to the whole server, so they may exist already
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
-- them. It cannot change a job's status any other way. It may read the
-- queues' settings, not change them (the operator's, like `notifyworker rate`).
GRANT USAGE ON SCHEMA notifyworker TO notifyworker_app;
GRANT SELECT ON notifyworker.jobs TO notifyworker_app;
GRANT INSERT (
    task, payload, object_id, timeout, max_attempts, run_at, unique_key, queue, priority,
    limit_key
) ON notifyworker.jobs TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.cancel(bigint) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.retry(bigint) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[], text[], integer[],
    text[]) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text, text, integer, text)
    TO notifyworker_app;
GRANT SELECT ON notifyworker.queues TO notifyworker_app;
-- It may manage schedules, which make only jobs it could insert itself; it
-- cannot set last_tick, so it cannot make a tick fire twice.
GRANT SELECT, DELETE ON notifyworker.schedules TO notifyworker_app;
GRANT INSERT (name, cron, tz, task, payload, paused, catch_up) ON notifyworker.schedules
    TO notifyworker_app;
GRANT UPDATE (cron, tz, task, payload, paused, catch_up) ON notifyworker.schedules
    TO notifyworker_app;

-- The worker: claim and record jobs (through claim_v1), keep its registry
-- row, sweep, prune finished jobs, read the rate setting, the queues'
-- settings and the migration record, keep the queues' start slots, sync the
-- schedules declared in code and fire their ticks. The only jobs it inserts
-- are its schedules' (task, payload, object_id); it deletes only finished
-- ones (through delete_finished_v1), cannot pause or delete a schedule, and
-- cannot change the schema, the settings or a queue's settings.
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
-- The row lock of a limited queue's claim needs UPDATE; it writes only next_start_at.
GRANT SELECT, UPDATE (next_start_at) ON notifyworker.queues TO notifyworker_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifyworker.queue_keys TO notifyworker_worker;

-- Functions are executable by everyone unless revoked: cancel(), retry() and
-- the enqueue functions are the application's, the state machine's the worker's.
REVOKE ALL ON FUNCTION notifyworker.cancel(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.retry(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[], text[], integer[],
    text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text, text, integer, text) FROM PUBLIC;
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
REVOKE ALL ON FUNCTION notifyworker.claim_v1(text, text[], integer, integer, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.claim_v1(text, text[], integer, integer, double precision)
    TO notifyworker_worker;


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
    (13, 'task_names_with_v'),
    (14, 'queues');

COMMIT;
