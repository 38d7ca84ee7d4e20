-- Unique jobs, and enqueueing through a function that SQL and Python share.
--
-- A job may carry a unique_key. While a job with that key is `new`, `queued`
-- or `running`, no second job may hold it: the partial unique index below is
-- the rule, so it holds under any number of concurrent inserts. Once the job
-- finishes (`done`, `failed`, `cancelled`) its row leaves the index and the key
-- is free for a new job; the finished row keeps its key, as a record. A retry
-- (back to `new`) keeps the key held all along.
--
-- A plain INSERT of a held key fails with unique_violation on
-- jobs_active_unique_key. notifyworker.enqueue() and enqueue_many() return the
-- holder's id instead, race-free: INSERT … ON CONFLICT DO NOTHING, then look the
-- holder up in a new snapshot, and go round again if it finished in between.
-- An insert that meets a key held by a transaction not yet committed waits for
-- it, as any unique index makes it wait, and then knows which job won.
--
-- The new column is nullable with no default, so adding it rewrites nothing;
-- the CHECK and the index read the table once, under this migration's lock.

ALTER TABLE notifyworker.jobs
    ADD COLUMN unique_key text,
    ADD CONSTRAINT unique_key_1_to_200_characters CHECK (length(unique_key) BETWEEN 1 AND 200);

CREATE UNIQUE INDEX jobs_active_unique_key ON notifyworker.jobs (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('new', 'queued', 'running');

-- Enqueues jobs, given one array per column (NULL, or one value per job): their
-- ids in the order given, a held unique_key giving its holder's id. A NULL value
-- is the column's default, as a plain INSERT leaves it (tests/test_producer.py
-- checks they agree). One statement for the caller, all or nothing.
-- SECURITY INVOKER: it needs nothing a plain INSERT does not (the INSERT and
-- SELECT privileges), so who may enqueue stays who may insert.
CREATE FUNCTION notifyworker.enqueue_many(
    tasks text[], payloads jsonb[] DEFAULT NULL, object_ids text[] DEFAULT NULL,
    timeouts interval[] DEFAULT NULL, max_attempts integer[] DEFAULT NULL,
    run_ats timestamptz[] DEFAULT NULL, unique_keys text[] DEFAULT NULL
) RETURNS bigint[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    total integer := coalesce(cardinality(tasks), 0);
    ids bigint[];
    keyless bigint[];
    placed integer;
BEGIN
    IF cardinality(payloads) NOT IN (0, total) OR cardinality(object_ids) NOT IN (0, total)
        OR cardinality(timeouts) NOT IN (0, total)
        OR cardinality(enqueue_many.max_attempts) NOT IN (0, total)
        OR cardinality(run_ats) NOT IN (0, total) OR cardinality(unique_keys) NOT IN (0, total)
    THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('notifyworker.enqueue_many: each array must be NULL or hold one'
                             ' value per task (%s)', total);
    END IF;
    IF total = 0 THEN
        RETURN '{}';
    END IF;

    -- No keys: one INSERT. Identities are handed out in insertion order, which
    -- is the order given (ORDER BY r.n), so sorted ids are the jobs in order.
    IF coalesce(cardinality(array_remove(unique_keys, NULL)), 0) = 0 THEN
        WITH inserted AS (
            INSERT INTO notifyworker.jobs (task, payload, object_id, timeout, max_attempts, run_at)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now())
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at, n)
            ORDER BY r.n
            RETURNING id
        )
        SELECT array_agg(inserted.id ORDER BY inserted.id) INTO ids FROM inserted;
        RETURN ids;
    END IF;

    -- Keys: insert the jobs not yet placed, a held key skipped (the first of
    -- several equal keys in the call takes it). The keyless ones are placed by
    -- order, as above; each keyed one by looking up its key's holder, in a new
    -- snapshot, which sees this call's own jobs too. A holder that finished in
    -- between has left its key free: go round again for those.
    ids := array_fill(NULL::bigint, ARRAY[total]);
    LOOP
        WITH inserted AS (
            INSERT INTO notifyworker.jobs
                (task, payload, object_id, timeout, max_attempts, run_at, unique_key)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now()), r.unique_key
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats,
                        unique_keys)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at,
                                       unique_key, n)
            WHERE ids[r.n] IS NULL
            ORDER BY r.n
            ON CONFLICT (unique_key)
                WHERE unique_key IS NOT NULL AND status IN ('new', 'queued', 'running')
                DO NOTHING
            RETURNING id, unique_key
        )
        SELECT array_agg(inserted.id ORDER BY inserted.id)
               FILTER (WHERE inserted.unique_key IS NULL)
        INTO keyless FROM inserted;

        placed := 0;
        FOR i IN 1 .. total LOOP
            IF ids[i] IS NULL AND unique_keys[i] IS NULL THEN
                placed := placed + 1;
                ids[i] := keyless[placed];
            END IF;
        END LOOP;

        -- The newest holder: under repeatable read this transaction may still
        -- see an older one that has finished since its snapshot.
        SELECT array_agg(coalesce(ids[k.n], held.id) ORDER BY k.n) INTO ids
        FROM unnest(unique_keys) WITH ORDINALITY AS k (unique_key, n)
        LEFT JOIN LATERAL (
            SELECT j.id FROM notifyworker.jobs AS j
            WHERE ids[k.n] IS NULL AND j.unique_key = k.unique_key
              AND j.status IN ('new', 'queued', 'running')
            ORDER BY j.id DESC
            LIMIT 1
        ) AS held ON true;

        EXIT WHEN array_position(ids, NULL) IS NULL;
    END LOOP;
    RETURN ids;
END;
$$;

-- One job: the SQL application's way to enqueue with a unique_key, e.g.
--   SELECT notifyworker.enqueue('resize', '{"image_id": 7}', unique_key => 'image-7');
-- NULL arguments take the column's default, as enqueue_many's do.
CREATE FUNCTION notifyworker.enqueue(
    task text, payload jsonb DEFAULT '{}', object_id text DEFAULT NULL,
    timeout interval DEFAULT NULL, max_attempts integer DEFAULT NULL,
    run_at timestamptz DEFAULT NULL, unique_key text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (notifyworker.enqueue_many(
        ARRAY[task], ARRAY[payload], ARRAY[object_id], ARRAY[timeout], ARRAY[max_attempts],
        ARRAY[run_at], ARRAY[unique_key]))[1];
END;
$$;

-- The application may set the key, and call both; the worker never inserts jobs.
GRANT INSERT (unique_key) ON notifyworker.jobs TO notifyworker_app;
REVOKE ALL ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[]) TO notifyworker_app;
REVOKE ALL ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text) TO notifyworker_app;
