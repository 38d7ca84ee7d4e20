-- What the sweeper and the pruner send: they run inside every worker, as the
-- role notifyworker_worker, and one replica at a time acts (sweep_lease,
-- prune_lease). Every statement here must run with that role's grants
-- (tests/test_roles.py). The same block format as service.sql.

-- === The lease ===

-- sweep_lease --
-- One sweeper acts at a time across all replicas; the others skip the round
-- rather than wait. A row lock, released with the transaction, on a table
-- only the worker role may lock (an advisory lock would let any role that
-- can connect switch every sweeper off). The age of the last sweep comes
-- back either way, so a fleet whose sweeper is stuck can say so.
SELECT extract(epoch FROM clock_timestamp() - swept_at)::float8 AS age,
       EXISTS (SELECT FROM notifyworker.sweeper FOR UPDATE SKIP LOCKED) AS acquired
FROM notifyworker.sweeper;

-- sweep_done --
-- The round is over: when, and by whom.
UPDATE notifyworker.sweeper SET swept_at = clock_timestamp(), swept_by = %(worker_id)s;

-- === Overdue jobs ===

-- sweep_overdue --
-- Running jobs past their own deadline (bounded batch): killed
-- (notifyworker.kill_running_v1: retried after the backoff while attempts
-- remain, else cancelled); their worker hears of it through NOTIFY and
-- cancels the handler.
WITH overdue AS (
    SELECT id,
           'timed out (found by the sweeper): still running after its timeout of '
               || timeout::text AS reason
    FROM notifyworker.jobs
    -- Compared as seconds, so no row's values can overflow the arithmetic.
    WHERE status = 'running'
      AND extract(epoch FROM clock_timestamp() - started_at) > extract(epoch FROM timeout)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), settled AS (
    SELECT killed.*
    FROM (SELECT array_agg(id) AS ids, array_agg(reason) AS reasons FROM overdue) AS o,
         notifyworker.kill_running_v1(o.ids, o.reasons, %(retry_backoff)s, %(retry_backoff_max)s)
             AS killed
)
SELECT id, status,
       CASE WHEN status = 'new' THEN extract(epoch FROM run_at - clock_timestamp())::float8 END
           AS retry_in,
       pg_notify('notifyworker_cancel', id::text)
FROM settled;

-- === Dead workers ===

-- dead_workers --
-- Workers whose heartbeat stopped, and workers with no row at all that
-- still hold jobs (their row was deleted by hand, say): their jobs get
-- rescued. The second half reads only the active rows (jobs_on_worker).
(SELECT id FROM notifyworker.workers
 WHERE heartbeat_at < clock_timestamp() - %(dead_after)s::interval
 ORDER BY heartbeat_at
 LIMIT %(limit)s)
UNION
(SELECT DISTINCT j.worker_id FROM notifyworker.jobs AS j
 WHERE j.status IN ('queued', 'running')
   AND NOT EXISTS (SELECT FROM notifyworker.workers AS w WHERE w.id = j.worker_id)
 LIMIT %(limit)s);

-- rescue_dead_worker --
-- A dead worker's queued jobs never started, so they go back to the queue
-- with no attempt spent (but a lost claim counted: after %(lost_claims_limit)s
-- the job is cancelled, as one that may be killing its workers). Its running
-- jobs are killed (notifyworker.kill_running_v1: the attempt counts; retried
-- after the backoff while attempts remain, else cancelled, saying why).
WITH requeued AS (
    SELECT id, status
    FROM notifyworker.take_back_unstarted(%(worker_id)s, '{}', %(lost_claims_limit)s)
), running AS (
    SELECT id, 'worker ' || worker_id || ' stopped heart-beating while the job ran' AS reason
    FROM notifyworker.jobs
    WHERE worker_id = %(worker_id)s AND status = 'running'
    FOR UPDATE
), rescued AS (
    SELECT killed.*
    FROM (SELECT array_agg(id) AS ids, array_agg(reason) AS reasons FROM running) AS r,
         notifyworker.kill_running_v1(r.ids, r.reasons, %(retry_backoff)s, %(retry_backoff_max)s)
             AS killed
), removed AS (
    DELETE FROM notifyworker.workers WHERE id = %(worker_id)s
)
SELECT (SELECT count(*) FROM requeued WHERE status = 'new') AS requeued,
       (SELECT count(*) FROM rescued WHERE status = 'new') AS retried,
       (SELECT array_agg(extract(epoch FROM run_at - clock_timestamp())::float8)
        FROM rescued WHERE status = 'new') AS retries_in,
       (SELECT count(*) FROM requeued WHERE status = 'cancelled')
           + (SELECT count(*) FROM rescued WHERE status = 'cancelled') AS cancelled;

-- === Retention: the pruner (and `notifyworker prune`) ===

-- prune_lease --
-- One pruner acts at a time across all replicas, under a lease of its own
-- (a batch never holds the sweeper's, so no sweep is ever skipped for it),
-- and only once the fleet's next batch is due; the others skip rather than
-- wait. How long until it is due comes back either way.
SELECT extract(epoch FROM due_at - clock_timestamp())::float8 AS due_in,
       EXISTS (
           SELECT FROM notifyworker.pruner
           WHERE due_at <= clock_timestamp()
           FOR UPDATE SKIP LOCKED
       ) AS acquired
FROM notifyworker.pruner;

-- prune_finished --
-- One bounded batch: up to %(limit)s finished jobs whose status is one of
-- %(statuses)s, each finished more than its %(older_than)s seconds ago,
-- oldest first, through the index jobs_finished (the repeated IN list lets
-- the planner use it; now(), being stable, bounds the index scan). Rows
-- another transaction holds are skipped, not waited for, and the function
-- deletes only rows still finished: a job retried meanwhile stays. Counted
-- by status.
WITH doomed AS (
    SELECT j.id
    FROM unnest(%(statuses)s::text[], %(older_than)s::float8[]) AS r (status, seconds)
    CROSS JOIN LATERAL (
        SELECT id FROM notifyworker.jobs
        WHERE status IN ('done', 'failed', 'cancelled') AND status = r.status
          AND finished_at < now() - make_interval(secs => r.seconds)
        ORDER BY finished_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS j
    LIMIT %(limit)s
)
SELECT d.status, count(*)::integer AS jobs
FROM notifyworker.delete_finished_v1(ARRAY(SELECT id FROM doomed)) AS d
GROUP BY d.status;

-- prune_done --
-- The batch is over: when, by whom, and when the fleet's next one is due.
UPDATE notifyworker.pruner
SET due_at = clock_timestamp() + make_interval(secs => %(pause)s),
    pruned_at = clock_timestamp(), pruned_by = %(worker_id)s;

-- prune_queue_keys --
-- Per-key start slots long past hold nothing (a slot in the past is now):
-- the pruner deletes a batch of them with each of its batches, so a key seen
-- once does not keep a row for ever.
DELETE FROM notifyworker.queue_keys
WHERE (queue, key) IN (
    SELECT queue, key FROM notifyworker.queue_keys
    WHERE next_start_at < clock_timestamp() - interval '1 minute'
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
);
