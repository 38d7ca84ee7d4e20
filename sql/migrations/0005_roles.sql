-- Least-privilege roles. Grant them to your login roles:
--   CREATE ROLE shop LOGIN PASSWORD '…' IN ROLE notifyworker_app;
--   CREATE ROLE worker LOGIN PASSWORD '…' IN ROLE notifyworker_worker;
-- Migrations, `notifyworker rate` and `enqueue` stay with the schema's owner.
--
-- Roles belong to the whole server, so they may exist already (another
-- database migrated first, or a migration racing this one).

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

-- The application: insert jobs (only the columns a new job may set), read
-- them back, cancel them. It cannot change a job's status any other way.
GRANT USAGE ON SCHEMA notifyworker TO notifyworker_app;
GRANT SELECT ON notifyworker.jobs TO notifyworker_app;
GRANT INSERT (task, payload, object_id, timeout, max_attempts, run_at)
    ON notifyworker.jobs TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.cancel(bigint) TO notifyworker_app;

-- The worker: claim and record jobs, keep its registry row, read the rate
-- setting and the migration record (`notifyworker check`). It never inserts
-- or deletes jobs and cannot change the schema or the settings.
GRANT USAGE ON SCHEMA notifyworker TO notifyworker_worker;
GRANT SELECT ON notifyworker.jobs TO notifyworker_worker;
GRANT UPDATE (
    status, attempts, run_at, lost_claims, queued_at, started_at, finished_at, cancelled_at,
    worker_id, error, result
) ON notifyworker.jobs TO notifyworker_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifyworker.workers TO notifyworker_worker;
GRANT SELECT ON notifyworker.settings TO notifyworker_worker;
GRANT SELECT ON notifyworker.migrations TO notifyworker_worker;

-- Functions are executable by everyone unless revoked; the backoff is the
-- worker's business only.
REVOKE ALL ON FUNCTION notifyworker.retry_delay(integer, double precision, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.retry_delay(integer, double precision, double precision)
    TO notifyworker_worker;
