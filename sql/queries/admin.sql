-- What an operator sends through the CLI (and `up`), as the schema's owner.
-- The worker role may read what it reads anyway and is refused the rest;
-- cancel and retry are also what an application with notifyworker_app may run
-- (tests/test_roles.py). The same block format as service.sql.

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

-- === Jobs (`cancel`, `retry`; `enqueue` sends producer.sql's) ===

-- cancel_job --
-- What `notifyworker cancel` runs: the same function applications call.
SELECT notifyworker.cancel(%(id)s) AS status;

-- retry_job --
-- What `notifyworker retry` runs: the function applications call, asked only
-- of a job it will take, so that a refusal is the CLI's one line (the status
-- read here) rather than PostgreSQL's error with its PL/pgSQL context. No
-- row: no such job. The function locks the row and reads its status again,
-- so a retry racing this one still cannot send the job back twice.
SELECT status AS was,
       CASE WHEN status IN ('failed', 'cancelled') THEN notifyworker.retry(id) END AS status
FROM notifyworker.jobs
WHERE id = %(id)s;

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

-- === Reports (`jobs`, `job`, `up`) ===

-- latest_jobs --
-- The classic table: the newest jobs with their whole story.
SELECT id, task, object_id, payload, status, attempts, max_attempts, created_at, queued_at, started_at,
       finished_at, cancelled_at, error
FROM notifyworker.jobs
ORDER BY id DESC
LIMIT %(limit)s;

-- find_jobs --
-- `notifyworker jobs` with its filters, newest first; a NULL filter matches
-- every job. Each filter given that an index serves bounds the scan: status
-- `new` (jobs_waiting), `queued` and `running` (jobs_on_worker), `failed` and
-- `cancelled` (jobs_failed_or_cancelled), object_id (jobs_object_id). The
-- others (task, status `done`) have no index, which every job would pay for
-- on every write: alone, they walk the primary key down from the newest job,
-- no further than %(from_id)s (window_start; 0 when an index bounds the scan).
-- Queues do not exist yet: every job is in `default`, so only that name
-- matches until the queue column lands.
SELECT id, task, object_id, payload, status, attempts, max_attempts, created_at, queued_at,
       started_at, finished_at, cancelled_at, error
FROM notifyworker.jobs
WHERE id >= %(from_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(object_id)s::text IS NULL OR object_id = %(object_id)s::text)
  AND (%(queue)s::text IS NULL OR %(queue)s::text = 'default')
ORDER BY id DESC
LIMIT %(limit)s;

-- window_start --
-- The lowest id among the latest %(window)s jobs, and how many there are (fewer:
-- the window is the whole table): how far find_jobs walks when no index bounds
-- its filters. An index-only walk down the primary key.
SELECT coalesce(min(id), 0) AS id, count(*) AS jobs
FROM (SELECT id FROM notifyworker.jobs ORDER BY id DESC LIMIT %(window)s) AS latest;

-- job_story --
-- `notifyworker job ID`: every column of one job.
SELECT id, task, object_id, payload, status, attempts, max_attempts, lost_claims, worker_id,
       extract(epoch FROM timeout)::float8 AS timeout, run_at, created_at, queued_at,
       started_at, finished_at, cancelled_at, retries, retried_at, attempts_before_retry,
       error_before_retry, error, result
FROM notifyworker.jobs
WHERE id = %(id)s;

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
