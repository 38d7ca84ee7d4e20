-- What an operator sends through the CLI (and `up`), as the schema's owner.
-- The worker role may read what it reads anyway and is refused the rest;
-- enqueue and cancel are also what an application with notifyworker_app may
-- run (tests/test_roles.py). The same block format as service.sql.

-- === Migrations (`notifyworker migrate`) ===

-- migrate_lock --
-- Serialises concurrent `notifyworker migrate` runs (several replicas
-- starting at once); released with the transaction.
SELECT pg_advisory_xact_lock(hashtext('notifyworker.migrate'));

-- migrate_bookkeeping --
-- The record of applied migration files; created before the first one runs.
CREATE SCHEMA IF NOT EXISTS notifyworker;
CREATE TABLE IF NOT EXISTS notifyworker.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- record_migration --
-- Marks one migration file applied, in the same transaction that ran it.
INSERT INTO notifyworker.migrations (version, name) VALUES (%(version)s, %(name)s);

-- === Jobs (`enqueue`, `cancel`) ===

-- enqueue --
-- What `notifyworker enqueue` and the demo producer run: the same INSERT any
-- application may write, the timeout left to the column default.
INSERT INTO notifyworker.jobs (task, payload, object_id, max_attempts)
VALUES (%(task)s, %(payload)s, %(object_id)s, %(max_attempts)s)
RETURNING id;

-- enqueue_with_timeout --
-- The same, with the job's own timeout in seconds.
INSERT INTO notifyworker.jobs (task, payload, object_id, max_attempts, timeout)
VALUES (%(task)s, %(payload)s, %(object_id)s, %(max_attempts)s, make_interval(secs => %(timeout)s))
RETURNING id;

-- cancel_job --
-- What `notifyworker cancel` runs: the same function applications call.
SELECT notifyworker.cancel(%(id)s) AS status;

-- === The fleet's rate (`rate`) ===

-- set_rate --
-- What `notifyworker rate N` runs; workers pick it up with their next heartbeat.
INSERT INTO notifyworker.settings (name, value) VALUES ('rate', %(rate)s)
ON CONFLICT (name) DO UPDATE SET value = excluded.value;

-- reset_rate --
-- What `notifyworker rate --reset` runs: each worker goes back to its own rate.
DELETE FROM notifyworker.settings WHERE name = 'rate';

-- get_rate --
-- The rate set cluster-wide, if any.
SELECT value FROM notifyworker.settings WHERE name = 'rate';

-- === Reports (`jobs`, `up`) ===

-- latest_jobs --
-- The classic table: the newest jobs with their whole story.
SELECT id, task, object_id, payload, status, attempts, max_attempts, created_at, queued_at, started_at,
       finished_at, cancelled_at, error
FROM notifyworker.jobs
ORDER BY id DESC
LIMIT %(limit)s;

-- summary_since --
-- Counts and pickup latency (started_at - created_at, as models.pickup_seconds) of the jobs created
-- since a given id, for `up --duration`'s closing summary.
SELECT count(*) FILTER (WHERE status = 'done') AS done,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status IN ('new', 'queued', 'running')) AS unfinished,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - created_at)) * 1000 AS pickup_p50_ms,
       percentile_cont(0.99) WITHIN GROUP (
           ORDER BY extract(epoch FROM started_at - created_at)) * 1000 AS pickup_p99_ms
FROM notifyworker.jobs
WHERE id > %(after_id)s;

-- last_job_id --
-- Where `up` starts counting its own jobs.
SELECT coalesce(max(id), 0) AS id FROM notifyworker.jobs;

-- === Schedules (`schedules`) ===
-- `schedules add` sends declare_schedule (scheduler.sql), as a worker does
-- for the schedules declared in code.

-- list_schedules --
-- Every schedule with what `schedules` shows, and PostgreSQL's clock, from
-- which the next run times are computed.
SELECT name, cron, tz, task, payload, paused, catch_up, last_tick, created_at, updated_at,
       clock_timestamp() AS now
FROM notifyworker.schedules
ORDER BY name;

-- remove_schedule --
-- Its jobs already enqueued stay; a schedule declared in code comes back when
-- a worker that declares it starts.
DELETE FROM notifyworker.schedules WHERE name = %(name)s RETURNING name;

-- pause_schedule --
-- Paused (true) or resumed (false). Resumed, it fires from its next tick:
-- the ticks of the pause never run (updated_at moves, see schedule_changed_v1).
UPDATE notifyworker.schedules SET paused = %(paused)s WHERE name = %(name)s RETURNING name;
