-- What an application sends through notifyworker.producer (and `notifyworker
-- enqueue`), in its own transaction: every statement here is notifyworker_app's
-- to send, and none the worker's (tests/test_roles.py). The same block format
-- as service.sql. The casts pin each parameter's type whatever Python sent.

-- enqueue_job --
-- One job, through the function SQL applications call: a unique_key held by a
-- waiting or running job gives that job's id instead of a second job.
SELECT notifyworker.enqueue(
    %(task)s::text, %(payload)s::jsonb, %(object_id)s::text, %(timeout)s::interval,
    %(max_attempts)s::integer, %(run_at)s::timestamptz, %(unique_key)s::text,
    %(queue)s::text, %(priority)s::integer, %(limit_key)s::text
) AS id;

-- enqueue_jobs --
-- Many jobs in one statement, all or none: their ids in the order given.
SELECT notifyworker.enqueue_many(
    %(tasks)s::text[], %(payloads)s::jsonb[], %(object_ids)s::text[], %(timeouts)s::interval[],
    %(max_attempts_each)s::integer[], %(run_ats)s::timestamptz[], %(unique_keys)s::text[],
    %(queues)s::text[], %(priorities)s::integer[], %(limit_keys)s::text[]
) AS ids;

-- enqueue_job_keyless --
-- One job without a unique_key: the plain INSERT itself, a third of the time
-- of the function's way in. A NULL option takes the column's default (the
-- same copy of them as enqueue_many's: tests/test_producer.py checks all three).
INSERT INTO notifyworker.jobs
    (task, payload, object_id, timeout, max_attempts, run_at, queue, priority, limit_key)
VALUES (
    %(task)s::text, coalesce(%(payload)s::jsonb, '{}'), %(object_id)s::text,
    coalesce(%(timeout)s::interval, interval '10 seconds'),
    coalesce(%(max_attempts)s::integer, 1), coalesce(%(run_at)s::timestamptz, now()),
    coalesce(%(queue)s::text, 'default'), coalesce(%(priority)s::integer, 0),
    %(limit_key)s::text
)
RETURNING id;

-- enqueue_jobs_keyless --
-- Many jobs without a unique_key in one INSERT, all or none. Identities are
-- handed out in insertion order, which is the order given, so the sorted ids
-- are the jobs in order (as enqueue_many's keyless branch).
WITH inserted AS (
    INSERT INTO notifyworker.jobs
        (task, payload, object_id, timeout, max_attempts, run_at, queue, priority, limit_key)
    SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
           coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
           coalesce(r.run_at, now()), coalesce(r.queue, 'default'), coalesce(r.priority, 0),
           r.limit_key
    FROM unnest(
        %(tasks)s::text[], %(payloads)s::jsonb[], %(object_ids)s::text[], %(timeouts)s::interval[],
        %(max_attempts_each)s::integer[], %(run_ats)s::timestamptz[], %(queues)s::text[],
        %(priorities)s::integer[], %(limit_keys)s::text[]
    ) WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at, queue,
                            priority, limit_key, n)
    ORDER BY r.n
    RETURNING id
)
SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids FROM inserted;
