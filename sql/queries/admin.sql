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

-- === Queues (`queue`, `queues`, `rate`) ===
-- A queue's settings are its row of notifyworker.queues, for the whole fleet
-- (0014_queues.sql); workers read them with every claim. The application role
-- may read them, only the operator (the owner) change them.

-- set_queue --
-- What `notifyworker queue NAME --rate … --pause …` runs: the row, created if
-- need be, with the settings %(changes)s names (a key with a null value
-- clears that limit) and the others left as they are. The table's CHECKs
-- have the last word on the values; paused and the limits wake the fleet
-- (queues_changed_notify) and move updated_at (queue_changed_v1).
INSERT INTO notifyworker.queues AS q (name, rate, concurrency, key_rate, key_concurrency, paused)
VALUES (
    %(name)s::text,
    (%(changes)s::jsonb ->> 'rate')::float8,
    (%(changes)s::jsonb ->> 'concurrency')::integer,
    (%(changes)s::jsonb ->> 'key_rate')::float8,
    (%(changes)s::jsonb ->> 'key_concurrency')::integer,
    coalesce((%(changes)s::jsonb ->> 'paused')::boolean, false)
)
ON CONFLICT (name) DO UPDATE SET
    rate = CASE WHEN %(changes)s::jsonb ? 'rate' THEN excluded.rate ELSE q.rate END,
    concurrency = CASE WHEN %(changes)s::jsonb ? 'concurrency'
                       THEN excluded.concurrency ELSE q.concurrency END,
    key_rate = CASE WHEN %(changes)s::jsonb ? 'key_rate' THEN excluded.key_rate ELSE q.key_rate END,
    key_concurrency = CASE WHEN %(changes)s::jsonb ? 'key_concurrency'
                           THEN excluded.key_concurrency ELSE q.key_concurrency END,
    paused = CASE WHEN %(changes)s::jsonb ? 'paused' THEN excluded.paused ELSE q.paused END
RETURNING name;

-- list_queues --
-- `notifyworker queues` (and `queue NAME`, %(name)s; NULL: every queue): each
-- queue with a row, with waiting jobs or with jobs held on workers, however
-- large the table. The queues with waiting jobs are found by skipping along
-- jobs_waiting (one probe per queue), their waiting jobs counted there up to
-- %(cap)s + 1 (more is "cap+"); held jobs (queued, running) are counted through
-- jobs_held_by_queue; the pickup p50 (started_at - created_at, as
-- models.pickup_seconds) is of the jobs finished in the last 5 minutes, read
-- through jobs_finished (status, finished_at).
WITH RECURSIVE waiting_queues AS (
    (SELECT j.queue FROM notifyworker.jobs AS j WHERE j.status = 'new' ORDER BY j.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM notifyworker.jobs AS j
            WHERE j.status = 'new' AND j.queue > w.queue
            ORDER BY j.queue LIMIT 1)
    FROM waiting_queues AS w
    WHERE w.queue IS NOT NULL
), held AS (
    SELECT j.queue, count(*) AS held
    FROM notifyworker.jobs AS j
    WHERE j.status IN ('queued', 'running')
    GROUP BY j.queue
), names AS (
    SELECT c.name FROM notifyworker.queues AS c
    UNION
    SELECT w.queue FROM waiting_queues AS w WHERE w.queue IS NOT NULL
    UNION
    SELECT h.queue FROM held AS h
    UNION
    SELECT %(name)s::text WHERE %(name)s::text IS NOT NULL
), recent AS (
    SELECT j.queue,
           percentile_cont(0.5) WITHIN GROUP (
               ORDER BY greatest(extract(epoch FROM j.started_at - j.created_at), 0)
           ) * 1000 AS pickup_p50_ms
    FROM notifyworker.jobs AS j
    WHERE j.status IN ('done', 'failed', 'cancelled')
      AND j.finished_at > now() - interval '5 minutes'
      AND j.started_at IS NOT NULL
    GROUP BY j.queue
)
SELECT n.name, c.name IS NOT NULL AS configured, c.rate, c.concurrency, c.key_rate,
       c.key_concurrency, coalesce(c.paused, false) AS paused,
       (SELECT count(*) FROM (
            SELECT FROM notifyworker.jobs AS j
            WHERE j.status = 'new' AND j.queue = n.name
            LIMIT %(cap)s + 1) AS w)::integer AS waiting,
       coalesce(h.held, 0)::integer AS held, r.pickup_p50_ms, c.updated_at
FROM names AS n
LEFT JOIN notifyworker.queues AS c ON c.name = n.name
LEFT JOIN held AS h ON h.queue = n.name
LEFT JOIN recent AS r ON r.queue = n.name
WHERE %(name)s::text IS NULL OR n.name = %(name)s::text
ORDER BY n.name;

-- set_rate --
-- What `notifyworker rate N` runs: the default queue's fleet rate (0:
-- unpaced), its row created if need be; every claim reads it.
INSERT INTO notifyworker.queues (name, rate) VALUES ('default', %(rate)s::float8)
ON CONFLICT (name) DO UPDATE SET rate = excluded.rate;

-- reset_rate --
-- What `notifyworker rate --reset` runs: the default queue goes back to each
-- worker's own rate (its other settings stay).
UPDATE notifyworker.queues SET rate = NULL WHERE name = 'default';

-- get_rate --
-- The default queue's fleet rate; no row, or NULL: each worker's own.
SELECT rate AS value FROM notifyworker.queues WHERE name = 'default';

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
-- others (task, queue, status `done`) have no index of their own (a queue's
-- waiting and held jobs do: jobs_waiting, jobs_held_by_queue, by status):
-- alone, they walk the primary key down from the newest job, no further than
-- %(from_id)s (window_start; 0 when an index bounds the scan).
SELECT id, task, object_id, payload, status, attempts, max_attempts, created_at, queued_at,
       started_at, finished_at, cancelled_at, error
FROM notifyworker.jobs
WHERE id >= %(from_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(object_id)s::text IS NULL OR object_id = %(object_id)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
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
       error_before_retry, error, result, queue, priority, limit_key
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
