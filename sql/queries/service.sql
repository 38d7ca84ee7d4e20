-- What a running worker sends, as the role notifyworker_worker: every
-- statement here must run with that role's grants (tests/test_roles.py).
-- Named blocks: "-- name --", then "-- " description lines, then the statement.
-- Parameters are psycopg's %(name)s placeholders; nothing here is ever built
-- from strings. The sweeper's statements are in sweeper.sql, the operator's in
-- admin.sql; one name is defined in one file only.

-- === Start-up: the session, the schema, the registry ===

-- session_settings --
-- What the service's own sessions depend on, whatever the database or role
-- defaults say (a 1 ms statement_timeout, serializable by default, another
-- DateStyle): statements that end, lock waits that end, a frozen worker's
-- open transaction that cannot hold locks for long, read committed for SKIP
-- LOCKED, and the text formats the driver reads.
SET statement_timeout = '30s';
SET lock_timeout = '10s';
SET idle_in_transaction_session_timeout = '10s';
SET default_transaction_isolation = 'read committed';
SET default_transaction_read_only = off;
SET DateStyle = 'ISO, MDY';
SET IntervalStyle = 'postgres';

-- applied_migrations --
-- Versions already applied: migrate runs only what is new, and a worker
-- starts only once none is pending (so the worker role reads them too).
SELECT version FROM notifyworker.migrations ORDER BY version;

-- register_worker --
-- Enters this process in the registry the sweeper reads; again, after a
-- sweeper declared it dead (its row was removed, its jobs rescued). What it
-- serves (%(serve)s, NULL: every queue) and its free slots (NULL until its
-- first beat: no new job wakes it before then) are what the fleet reads to
-- agree on whom a new job wakes.
INSERT INTO notifyworker.workers (id, host, pid, queues, free_slots)
VALUES (%(worker_id)s, %(host)s, %(pid)s, %(serve)s::text[], %(free_slots)s)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = clock_timestamp(), queues = excluded.queues, free_slots = excluded.free_slots;

-- === The listener ===

-- listen_jobs --
-- New jobs: the insert trigger and requeues notify here.
LISTEN notifyworker_jobs;

-- listen_cancel --
-- Jobs cancelled (notifyworker.cancel(), or the sweeper) while a worker may
-- hold them; the payload is the job id.
LISTEN notifyworker_cancel;

-- listen_ping --
-- The listener's own self-check channel (listener_ping).
LISTEN notifyworker_ping;

-- listener_ping --
-- A NOTIFY round trip on the listener's own connection: the answer proves
-- the connection is alive and still LISTENing, which a half-open TCP
-- connection (a silently dropped peer) never would.
SELECT pg_notify('notifyworker_ping', %(token)s);

-- === Liveness and the fleet ===

-- heartbeat --
-- Proves this worker alive and publishes what it serves (%(serve)s, NULL:
-- every queue) and its free consumer slots; brings back, in the same round
-- trip, the other live workers a new job may wake (the wake-up token: free
-- slots, every queue served, a beat within %(dead_after)s). No row when a
-- sweeper declared the worker dead and removed it; the worker then registers
-- again (its jobs were rescued). The fleet's rates are the claim's
-- (notifyworker.queues), not the beat's.
WITH beat AS (
    UPDATE notifyworker.workers
    SET heartbeat_at = clock_timestamp(), queues = %(serve)s::text[],
        free_slots = %(free_slots)s
    WHERE id = %(worker_id)s
    RETURNING id
)
SELECT beat.id, ARRAY(
    SELECT w.id FROM notifyworker.workers AS w
    WHERE w.id <> beat.id AND w.queues IS NULL AND w.free_slots > 0
      AND w.heartbeat_at > clock_timestamp() - %(dead_after)s::interval
    ORDER BY w.id
) AS wakeable
FROM beat;

-- unregister_worker --
-- A clean exit leaves nothing for the sweeper to rescue: the row goes. A
-- worker that leaves jobs behind (it crashed out, or could not record them)
-- keeps its row, marked dead at once, so the next sweep rescues them.
WITH left_behind AS (
    SELECT EXISTS (
        SELECT FROM notifyworker.jobs
        WHERE worker_id = %(worker_id)s AND status IN ('queued', 'running')
    ) AS left_jobs
), removed AS (
    DELETE FROM notifyworker.workers
    WHERE id = %(worker_id)s AND NOT (SELECT left_jobs FROM left_behind)
), marked AS (
    UPDATE notifyworker.workers SET heartbeat_at = 'epoch'
    WHERE id = %(worker_id)s AND (SELECT left_jobs FROM left_behind)
)
SELECT left_jobs FROM left_behind;

-- === The hot path: the claim and the marks ===

-- claim --
-- Takes up to %(limit)s due jobs for one worker from the queues it serves
-- (%(serve)s; NULL: every queue), each queue by its own settings in
-- notifyworker.queues, through notifyworker.claim_v1 (migration 0014, where
-- the rules are written down): highest priority first, then oldest; round-
-- robin between limit keys; fleet-wide limits counted under the queue row's
-- lock; start slots of a fleet rate handed out %(pace_ahead)s seconds ahead.
-- SKIP LOCKED lets replicas claim side by side; queued_at is the claim's
-- fence, carried back by the worker's marks. A worker a sweeper declared
-- dead claims nothing until it has registered again.
-- Only what a consumer needs comes back. The payload comes as JSON text,
-- parsed once by the task's own model, and not at all when its stored size is
-- over the worker's limit (read from the datum's header, without detoasting
-- it): the consumer fails it as oversized, and the claim stays cheap.
-- start_in: seconds from the claim's start to the job's fleet start slot
-- (NULL: the worker's own pace); a last row without a job says when to claim
-- again (claim_again_in) after a limit held jobs back.
SELECT id, task, payload, stored_bytes, timeout, queued_at, created_at, attempts,
       max_attempts, queue, start_in, claim_again_in
FROM notifyworker.claim_v1(
    %(worker_id)s, %(serve)s::text[], %(limit)s, %(max_payload_bytes)s, %(pace_ahead)s);

-- async_commit --
-- For transactions whose loss in a server crash costs at most a re-run (a
-- claim, a start mark): they skip the WAL flush wait. Never used when the
-- transaction records an outcome.
SET LOCAL synchronous_commit = off;

-- session_async_commit --
-- The claim connection's setting: a claim lost in a server crash only puts
-- the job back to `new`, so it may run again (at-least-once), and the claim
-- skips the WAL flush wait, about a millisecond of every pickup here.
SET synchronous_commit = off;

-- mark_started --
-- Marks a batch of claimed jobs running, with the worker's own start times,
-- only while this worker still holds them under the same claim: a sweeper or
-- notifyworker.cancel() that decided first wins, and the worker cancels its
-- handler.
-- Idempotent: a batch re-sent because the answer to the first try was lost
-- matches its own earlier write (same start time) and counts no attempt twice.
UPDATE notifyworker.jobs AS j
SET status = 'running', started_at = m.started_at,
    attempts = j.attempts + (j.status = 'queued')::integer
FROM unnest(%(ids)s::bigint[], %(queued_at)s::timestamptz[], %(started_at)s::timestamptz[])
    AS m (id, queued_at, started_at)
WHERE j.id = m.id AND j.worker_id = %(worker_id)s AND j.queued_at = m.queued_at
  AND (j.status = 'queued' OR (j.status = 'running' AND j.started_at = m.started_at))
RETURNING j.id;

-- mark_finished --
-- Records a batch of outcomes, only while this worker still holds the jobs
-- under the same claim: when the sweeper or a cancel decided first, its
-- verdict stands. A job whose start mark was never flushed (it ended within
-- one flush) gets its start here too. A retryable failure with attempts left
-- (notifyworker.will_retry_v1, inlined) goes back to `new`, due after the
-- backoff, keeping its last error.
WITH marks AS (
    SELECT *
    FROM unnest(
        %(ids)s::bigint[], %(queued_at)s::timestamptz[], %(statuses)s::text[],
        %(retryable)s::boolean[], %(started_at)s::timestamptz[],
        %(finished_at)s::timestamptz[], %(results)s::jsonb[], %(errors)s::text[]
    ) AS m (id, queued_at, status, retryable, started_at, finished_at, result, error)
), counted AS (
    SELECT m.*, j.max_attempts,
           j.attempts + (j.status = 'queued' AND m.started_at IS NOT NULL)::integer AS attempts,
           CASE WHEN j.status = 'queued' THEN m.started_at ELSE j.started_at END AS began_at
    FROM marks AS m
    JOIN notifyworker.jobs AS j ON j.id = m.id
), settled AS (
    SELECT c.*, notifyworker.will_retry_v1(c.status, c.retryable, c.attempts, c.max_attempts)
               AS retry
    FROM counted AS c
)
UPDATE notifyworker.jobs AS j
SET status = CASE WHEN s.retry THEN 'new' ELSE s.status END,
    attempts = s.attempts,
    run_at = CASE
        WHEN s.retry
        THEN clock_timestamp() + notifyworker.retry_delay(
            s.attempts, %(retry_backoff)s, %(retry_backoff_max)s)
        ELSE j.run_at END,
    worker_id = CASE WHEN s.retry THEN NULL ELSE j.worker_id END,
    queued_at = CASE WHEN s.retry THEN NULL ELSE j.queued_at END,
    started_at = CASE WHEN s.retry THEN NULL ELSE s.began_at END,
    finished_at = CASE WHEN s.retry THEN NULL ELSE s.finished_at END,
    cancelled_at = CASE WHEN NOT s.retry AND s.status = 'cancelled' THEN s.finished_at END,
    result = s.result,
    error = s.error
FROM settled AS s
WHERE j.id = s.id AND j.worker_id = %(worker_id)s AND j.status IN ('queued', 'running')
  AND j.queued_at = s.queued_at
RETURNING j.id, j.status,
          CASE WHEN s.retry THEN extract(epoch FROM j.run_at - clock_timestamp())::float8 END
              AS retry_in;

-- === What this worker holds ===

-- release_lost_claims --
-- After a claim whose answer never came (the connection dropped around its
-- commit), and every few seconds anyway: jobs the table says this worker
-- holds, but that no consumer of it has, go back to the queue, so no job
-- sits `queued` on a live worker. Each counts a lost claim, like a dead
-- worker's (take_back_unstarted): a job that keeps making claims fail ends
-- cancelled instead of looping.
SELECT id, status
FROM notifyworker.take_back_unstarted(%(worker_id)s, %(held)s::bigint[], %(lost_claims_limit)s);

-- attempts_not_ours --
-- Of the attempts a worker holds (job id and claim stamp), those the table
-- says are no longer its own: gone, finished or cancelled, or claimed anew
-- (retried, rescued). Only these does the worker stop; a NOTIFY, which any
-- role may send, is never enough on its own.
SELECT m.id, m.queued_at, j.id IS NOT NULL AS found, j.status, j.error,
       j.worker_id = %(worker_id)s AND j.queued_at = m.queued_at AS same_attempt
FROM unnest(%(ids)s::bigint[], %(queued_at)s::timestamptz[]) AS m (id, queued_at)
LEFT JOIN notifyworker.jobs AS j ON j.id = m.id
WHERE j.id IS NULL
   OR j.worker_id IS DISTINCT FROM %(worker_id)s
   OR j.queued_at IS DISTINCT FROM m.queued_at
   OR j.status NOT IN ('queued', 'running');

-- requeue_unstarted --
-- On shutdown, hands jobs this worker claimed but never started back to the
-- queue; the caller then wakes the other workers (notify_jobs).
UPDATE notifyworker.jobs
SET status = 'new', worker_id = NULL, queued_at = NULL
WHERE worker_id = %(worker_id)s AND status = 'queued'
RETURNING id;

-- notify_jobs --
-- Wakes every worker to claim: after jobs went back to the queue, or when a
-- new job's token designated a worker with no free slot (%(reason)s 'wake').
SELECT pg_notify('notifyworker_jobs', %(reason)s);

-- === Metrics ===

-- job_counts --
-- The jobs-by-status gauge, cheap on a table of millions and never a count
-- of the whole table. Active jobs are counted through their partial indexes
-- (jobs_waiting, jobs_on_worker), the waiting ones up to %(cap)s. Finished
-- jobs are estimated: the table's live rows from the statistics PostgreSQL
-- keeps anyway, less the active ones, split in the proportions of the
-- status values the last ANALYZE sampled (none before the first ANALYZE).
WITH active AS (
    SELECT 'new' AS status, count(*) AS jobs
    FROM (SELECT FROM notifyworker.jobs WHERE status = 'new' LIMIT %(cap)s) AS waiting
    UNION ALL
    SELECT status, count(*) FROM notifyworker.jobs
    WHERE status IN ('queued', 'running')
    GROUP BY status
), sampled AS (
    SELECT s.status, s.freq
    FROM pg_stats,
        unnest(most_common_vals::text::text[], most_common_freqs) AS s (status, freq)
    WHERE schemaname = 'notifyworker' AND tablename = 'jobs' AND attname = 'status'
        AND s.status IN ('done', 'failed', 'cancelled')
), finished AS (
    SELECT greatest(n_live_tup - (SELECT sum(jobs) FROM active), 0) AS jobs
    FROM pg_stat_user_tables
    WHERE relid = 'notifyworker.jobs'::regclass
)
SELECT status, jobs::float8 AS jobs FROM active
UNION ALL
SELECT sampled.status, round(finished.jobs * sampled.freq / sum(sampled.freq) OVER ())::float8
FROM sampled, finished;
