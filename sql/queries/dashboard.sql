-- What the web dashboard (`notifyworker dashboard`) sends: reads for its
-- pages, refreshed every second, and the queue actions. Every read is served
-- by an index and bounded, so a table of millions costs the same as an empty
-- one (tests/test_dashboard_plans.py); nothing here counts the whole table.
-- Cancel and retry are admin.sql's cancel_job and retry_job; the counts by
-- status are service.sql's job_counts.

-- dashboard_session --
-- Set on each of the dashboard's pooled connections, after session_settings.
-- No JIT: the overview's per-queue LATERAL counts have a large planned cost
-- (up to 500 queues times the cap) that would make PostgreSQL compile them,
-- about 300 ms, for a statement that runs in a few; and a page that waits
-- on the database gives up after 5 s, as a person would.
SET jit = off;
SET statement_timeout = '5s';

-- === Overview ===

-- dashboard_queues --
-- Each queue that has a settings row, waiting jobs or held jobs: its
-- settings, and its jobs waiting (due now), scheduled (due later), queued
-- and running. The queue names come from skip scans of the partial indexes
-- (one index probe per queue, not one per job); the waiting jobs are
-- counted up to %(cap)s per queue through jobs_waiting, the held ones
-- through jobs_held_by_queue (no more than the fleet's slots).
WITH RECURSIVE waiting_queues AS (
    SELECT min(queue) AS name FROM notifyworker.jobs WHERE status = 'new'
    UNION ALL
    SELECT (SELECT min(queue) FROM notifyworker.jobs WHERE status = 'new' AND queue > w.name)
    FROM waiting_queues AS w
    WHERE w.name IS NOT NULL
), held_queues AS (
    SELECT min(queue) AS name FROM notifyworker.jobs WHERE status IN ('queued', 'running')
    UNION ALL
    SELECT (
        SELECT min(queue) FROM notifyworker.jobs
        WHERE status IN ('queued', 'running') AND queue > h.name
    )
    FROM held_queues AS h
    WHERE h.name IS NOT NULL
), names AS (
    SELECT name FROM waiting_queues WHERE name IS NOT NULL
    UNION
    SELECT name FROM held_queues WHERE name IS NOT NULL
    UNION
    SELECT name FROM notifyworker.queues
)
SELECT names.name, q.rate, q.concurrency, q.key_rate, q.key_concurrency,
       coalesce(q.paused, false) AS paused,
       waiting.due AS waiting, waiting.later AS scheduled,
       waiting.due + waiting.later >= %(cap)s AS capped,
       held.queued, held.running
FROM names
LEFT JOIN notifyworker.queues AS q ON q.name = names.name
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE w.run_at <= now()) AS due,
           count(*) FILTER (WHERE w.run_at > now()) AS later
    FROM (
        SELECT run_at FROM notifyworker.jobs
        WHERE status = 'new' AND queue = names.name
        LIMIT %(cap)s
    ) AS w
) AS waiting
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.status = 'queued') AS queued,
           count(*) FILTER (WHERE j.status = 'running') AS running
    FROM notifyworker.jobs AS j
    WHERE j.status IN ('queued', 'running') AND j.queue = names.name
) AS held
ORDER BY names.name
LIMIT 500;

-- dashboard_finished --
-- Finished jobs by status, counted exactly through jobs_finished (read from
-- the index alone) up to %(cap)s in all; past that, the page shows
-- job_counts' estimates instead.
SELECT status, count(*) AS jobs
FROM (
    SELECT status FROM notifyworker.jobs
    WHERE status IN ('done', 'failed', 'cancelled')
    -- The index's own order: an index-only walk that stops at the cap.
    ORDER BY status, finished_at
    LIMIT %(cap)s
) AS finished
GROUP BY status;

-- dashboard_throughput --
-- Jobs finished in each of the last 15 minutes (this one included, oldest
-- first, a row for every minute), by how they ended: a range of
-- jobs_finished (status, finished_at), read from the index alone. Its cost
-- is the jobs finished in those 15 minutes, not the table.
WITH finished AS (
    SELECT date_bin('1 minute', finished_at, 'epoch') AS minute, status
    FROM notifyworker.jobs
    WHERE status IN ('done', 'failed', 'cancelled')
      AND finished_at >= date_bin('1 minute', now(), 'epoch') - interval '14 minutes'
)
SELECT extract(epoch FROM m.minute)::bigint AS minute,
       count(f.status) FILTER (WHERE f.status = 'done') AS done,
       count(f.status) FILTER (WHERE f.status = 'failed') AS failed,
       count(f.status) FILTER (WHERE f.status = 'cancelled') AS cancelled
FROM generate_series(
    date_bin('1 minute', now(), 'epoch') - interval '14 minutes',
    date_bin('1 minute', now(), 'epoch'),
    interval '1 minute'
) AS m (minute)
LEFT JOIN finished AS f ON f.minute = m.minute
GROUP BY m.minute
ORDER BY m.minute;

-- dashboard_pickup --
-- Pickup latency (started_at - created_at, as models.pickup_seconds) of the
-- last %(sample)s jobs done: the newest end of jobs_finished, walked backwards.
SELECT count(*) AS jobs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY pickup) * 1000 AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY pickup) * 1000 AS p99_ms
FROM (
    SELECT extract(epoch FROM started_at - created_at) AS pickup
    FROM notifyworker.jobs
    WHERE status = 'done' AND finished_at IS NOT NULL
    ORDER BY finished_at DESC
    LIMIT %(sample)s
) AS latest;

-- === Jobs ===

-- dashboard_jobs --
-- One page of the jobs list, newest first, below the id %(before)s (keyset
-- pagination: no OFFSET, no count). A NULL filter matches every job. Filters
-- an index serves bound the scan by themselves: status `new` (jobs_waiting),
-- `queued`/`running` (jobs_on_worker), `failed`/`cancelled`
-- (jobs_failed_or_cancelled), object_id (jobs_object_id). The others (task,
-- queue, status `done`) walk the primary key down, no further than
-- %(floor)s (dashboard_window; 0 when an index bounds the scan).
SELECT id, task, queue, priority, object_id, status, attempts, max_attempts, created_at,
       started_at, finished_at, run_at, error
FROM notifyworker.jobs
WHERE id < %(before)s
  AND id >= %(floor)s
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(object_id)s::text IS NULL OR object_id = %(object_id)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- dashboard_window --
-- The lowest id among the %(window)s jobs below %(before)s, and how many
-- there are (fewer: the window reaches the first job): how far one page of
-- a filter no index serves may walk. An index-only walk down the primary key.
SELECT coalesce(min(id), 0) AS id, count(*) AS jobs
FROM (
    SELECT id FROM notifyworker.jobs WHERE id < %(before)s ORDER BY id DESC LIMIT %(window)s
) AS below;

-- dashboard_job --
-- One job's page: every column, and whether its worker still beats.
SELECT j.id, j.task, j.queue, j.priority, j.limit_key, j.object_id, j.unique_key, j.payload,
       j.status, j.attempts, j.max_attempts, j.lost_claims, j.worker_id,
       extract(epoch FROM j.timeout)::float8 AS timeout, j.run_at, j.created_at, j.queued_at,
       j.started_at, j.finished_at, j.cancelled_at, j.retries, j.retried_at,
       j.attempts_before_retry, j.error_before_retry, j.error, j.result,
       w.heartbeat_at AS worker_heartbeat_at
FROM notifyworker.jobs AS j
LEFT JOIN notifyworker.workers AS w ON w.id = j.worker_id
WHERE j.id = %(id)s;

-- === Workers ===

-- dashboard_workers --
-- Each worker with a row (dead ones until the sweeper removes them): its
-- heartbeat's age, the queues it serves, its free slots, the jobs it holds
-- (jobs_on_worker) and the jobs it finished in the last minute (the newest
-- end of jobs_finished).
SELECT w.id, w.host, w.pid, w.started_at, w.queues, w.free_slots,
       extract(epoch FROM clock_timestamp() - w.heartbeat_at)::float8 AS heartbeat_age,
       held.queued, held.running, coalesce(recent.finished, 0) AS finished_last_minute
FROM notifyworker.workers AS w
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.status = 'queued') AS queued,
           count(*) FILTER (WHERE j.status = 'running') AS running
    FROM notifyworker.jobs AS j
    WHERE j.worker_id = w.id AND j.status IN ('queued', 'running')
) AS held
LEFT JOIN (
    -- One range of jobs_finished per status: an equality and a range are what
    -- the planner reads an index for surely; IN (...) over three statuses
    -- sometimes lost to a scan of a small table.
    SELECT f.worker_id, count(*) AS finished
    FROM (
        SELECT worker_id FROM notifyworker.jobs
        WHERE status = 'done' AND finished_at > now() - interval '1 minute'
        UNION ALL
        SELECT worker_id FROM notifyworker.jobs
        WHERE status = 'failed' AND finished_at > now() - interval '1 minute'
        UNION ALL
        SELECT worker_id FROM notifyworker.jobs
        WHERE status = 'cancelled' AND finished_at > now() - interval '1 minute'
    ) AS f
    GROUP BY f.worker_id
) AS recent ON recent.worker_id = w.id
ORDER BY w.started_at, w.id
LIMIT 500;

-- === Queue actions ===

-- dashboard_pause_queue --
-- Pause (true) or resume (false) a queue, creating its row if it has none
-- (a queue without one runs with each worker's own settings). Resuming
-- wakes the fleet (the queues_changed_notify trigger).
INSERT INTO notifyworker.queues (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
RETURNING name, paused;

-- dashboard_set_queue_rate --
-- A queue's fleet rate: starts per second, 0 unpaced, NULL each worker's own;
-- the queues table's rate_in_bounds refuses the rest.
INSERT INTO notifyworker.queues (name, rate) VALUES (%(name)s, %(rate)s)
ON CONFLICT (name) DO UPDATE SET rate = excluded.rate
RETURNING name, rate;
