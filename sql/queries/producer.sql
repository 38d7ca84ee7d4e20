-- What an application sends through notifyworker.producer (and `notifyworker
-- enqueue`), in its own transaction: every statement here is notifyworker_app's
-- to send, and none the worker's (tests/test_roles.py). The same block format
-- as service.sql. The casts pin each parameter's type whatever Python sent.

-- enqueue_job --
-- One job, through the function SQL applications call: a unique_key held by a
-- waiting or running job gives that job's id instead of a second job.
SELECT notifyworker.enqueue(
    %(task)s::text, %(payload)s::jsonb, %(object_id)s::text, %(timeout)s::interval,
    %(max_attempts)s::integer, %(run_at)s::timestamptz, %(unique_key)s::text
) AS id;

-- enqueue_jobs --
-- Many jobs in one statement, all or none: their ids in the order given.
SELECT notifyworker.enqueue_many(
    %(tasks)s::text[], %(payloads)s::jsonb[], %(object_ids)s::text[], %(timeouts)s::interval[],
    %(max_attempts_each)s::integer[], %(run_ats)s::timestamptz[], %(unique_keys)s::text[]
) AS ids;
