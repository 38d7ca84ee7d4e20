-- The jobs table, the workers registry and the insert trigger.
-- Runs inside the migration transaction, under the migration advisory lock.

CREATE SCHEMA IF NOT EXISTS notifyworker;

-- Tables

-- One row per live (or recently dead) worker process. The sweeper tells a
-- dead worker from a slow one by heartbeat_at, never by what its jobs do.
CREATE TABLE notifyworker.workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE notifyworker.jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task         text NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}',
    -- The application's own reference; notifyworker never interprets it.
    object_id    text,
    status       text NOT NULL DEFAULT 'new',
    attempts     integer NOT NULL DEFAULT 0,
    -- A job running longer than this is dead: the sweeper cancels it.
    timeout      interval NOT NULL DEFAULT '10 seconds',
    -- clock_timestamp(), not now(): pickup latency is measured from the
    -- insert itself, not from the start of the inserting transaction.
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    cancelled_at timestamptz,
    worker_id    text,
    error        text,
    result       jsonb,

    -- Named constraints, so that PostgreSQL's own error says what was wrong.
    CONSTRAINT task_is_a_name CHECK (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$'),
    CONSTRAINT payload_is_an_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT status_is_known CHECK (
        status IN ('new', 'queued', 'running', 'done', 'failed', 'cancelled')
    ),
    CONSTRAINT attempts_not_negative CHECK (attempts >= 0),
    CONSTRAINT timeout_is_positive CHECK (timeout > interval '0'),
    -- A queued or running job always names the worker that holds it; a
    -- finished one keeps the name of the worker that ran it.
    CONSTRAINT active_has_worker CHECK (
        status NOT IN ('queued', 'running') OR worker_id IS NOT NULL
    ),
    CONSTRAINT running_has_started_at CHECK (status <> 'running' OR started_at IS NOT NULL),
    CONSTRAINT finished_has_finished_at CHECK (
        status NOT IN ('done', 'failed', 'cancelled') OR finished_at IS NOT NULL
    ),
    CONSTRAINT cancelled_has_cancelled_at CHECK (status <> 'cancelled' OR cancelled_at IS NOT NULL)
);

-- Indexes

-- The claim reads only waiting jobs, oldest first; finished rows never enter
-- this index, so a table of millions of done jobs claims as fast as an empty one.
CREATE INDEX jobs_waiting ON notifyworker.jobs (id) WHERE status = 'new';

-- The sweeper and shutdown read only the jobs that sit on a worker.
CREATE INDEX jobs_on_worker ON notifyworker.jobs (worker_id, status)
    WHERE status IN ('queued', 'running');

-- Triggers

-- Statement-level with a constant payload: a 10,000-row INSERT wakes the
-- workers once, and PostgreSQL folds identical notifications of one
-- transaction into one.
CREATE FUNCTION notifyworker.notify_jobs_inserted_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyworker_jobs', 'inserted');
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_inserted_notify
    AFTER INSERT ON notifyworker.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notifyworker.notify_jobs_inserted_v1();
