-- Queues, priorities, and limits that hold for the whole fleet.
--
-- 1. Every job belongs to a queue (`queue`, default 'default': existing rows
--    and INSERTs that do not name one keep working), has a `priority`
--    (higher first; within one priority, oldest first) and may carry a
--    `limit_key` (the application's tenant or account).
-- 2. notifyworker.queues holds a queue's settings, for the whole fleet:
--    `rate` (starts per second), `concurrency` (jobs held at once),
--    `key_rate` and `key_concurrency` (the same per limit_key), `paused`.
--    A queue without a row runs with each worker's own settings, as before.
--    Changed with a plain UPDATE from any SQL client; every claim reads it.
-- 3. notifyworker.claim_v1() is the one claim: for each queue the worker
--    serves, the queue's row is read in the claim's own transaction; a queue
--    with fleet limits is claimed under its row's lock, so two workers never
--    both take the last free place; rate slots are handed out from the row
--    (`next_start_at`, and notifyworker.queue_keys per key). Jobs with keys
--    are taken round-robin by key, so one key's backlog never starves another.
-- 4. The rate of `notifyworker rate` becomes the default queue's fleet rate:
--    a rate set with it moves from notifyworker.settings to the queue's row.
--    It was a rate per worker; it is now the fleet's (see the README).
-- 5. The insert trigger's notification names its transaction, so the fleet
--    can agree on one worker to wake (the wake-up token, see the README);
--    workers publish what they serve and their free slots with their beat.
--
-- Cost of the migration on a big table: the new columns have constant
-- defaults (no rewrite); the CHECKs and the new indexes read the table once
-- each, under the migration's lock (workers wait for it to commit).

ALTER TABLE notifyworker.jobs
    ADD COLUMN queue text NOT NULL DEFAULT 'default',
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN limit_key text,
    -- 1 to 100 characters, no whitespace (as task names).
    ADD CONSTRAINT queue_is_a_name CHECK (
        length(queue) BETWEEN 1 AND 100 AND translate(queue, E' \t\r\n\x0b\f', '') = queue
    ),
    ADD CONSTRAINT priority_in_range CHECK (priority BETWEEN -1000000 AND 1000000),
    ADD CONSTRAINT limit_key_1_to_200_characters CHECK (length(limit_key) BETWEEN 1 AND 200);

-- The claim reads a queue's due jobs, highest priority first, then oldest:
-- those without a key (coalesce(limit_key, '') = '', which no key can be),
-- or one key's; and walks the keys that wait. One index for every waiting
-- job, as before: a job pays for no second one.
DROP INDEX notifyworker.jobs_waiting;
CREATE INDEX jobs_waiting
    ON notifyworker.jobs (queue, (coalesce(limit_key, '')), priority DESC, run_at, id)
    WHERE status = 'new';
-- Concurrency limits count the jobs a queue (and a key) holds on workers.
CREATE INDEX jobs_held_by_queue ON notifyworker.jobs (queue, limit_key)
    WHERE status IN ('queued', 'running');

CREATE TABLE notifyworker.queues (
    name            text PRIMARY KEY,
    -- Starts per second for the whole fleet, 1/rate apart; 0: unpaced (not
    -- even each worker's own limiter); NULL: each worker's own rate.
    rate            double precision,
    -- Jobs held (queued or running) at once by the whole fleet; NULL: no limit.
    concurrency     integer,
    -- The same for each limit_key of the queue; jobs without a key are not
    -- limited by them.
    key_rate        double precision,
    key_concurrency integer,
    -- A paused queue's jobs stay `new`; resumed, they are claimed at once.
    paused          boolean NOT NULL DEFAULT false,
    -- The fleet's next free start slot (kept by the claim).
    next_start_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),

    CONSTRAINT name_is_a_name CHECK (
        length(name) BETWEEN 1 AND 100 AND translate(name, E' \t\r\n\x0b\f', '') = name
    ),
    -- As the rate setting: 0, or 0.001 to 100,000; refuses NaN and ±Infinity.
    CONSTRAINT rate_in_bounds
        CHECK (rate = 0 OR rate BETWEEN 0.001::float8 AND 100000::float8),
    CONSTRAINT key_rate_in_bounds CHECK (key_rate BETWEEN 0.001::float8 AND 100000::float8),
    CONSTRAINT concurrency_in_bounds CHECK (concurrency BETWEEN 1 AND 100000),
    CONSTRAINT key_concurrency_in_bounds CHECK (key_concurrency BETWEEN 1 AND 100000),
    CONSTRAINT next_start_at_is_finite CHECK (isfinite(next_start_at))
);

-- The next free start slot of each key of a queue with a key_rate. A row
-- whose slot is long past holds nothing: the pruner deletes those.
CREATE TABLE notifyworker.queue_keys (
    queue         text NOT NULL,
    key           text NOT NULL,
    next_start_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);

-- What a worker serves (NULL: every queue) and its free consumer slots, as of
-- its last beat: the fleet reads them to agree on whom a new job wakes.
ALTER TABLE notifyworker.workers
    ADD COLUMN queues text[],
    ADD COLUMN free_slots integer;

-- The rate of `notifyworker rate` is now the default queue's.
INSERT INTO notifyworker.queues (name, rate)
SELECT 'default', value FROM notifyworker.settings WHERE name = 'rate';
DELETE FROM notifyworker.settings WHERE name = 'rate';

-- Stamps a queue's updated_at when its settings change, from any client
-- (the claim's own next_start_at is not a change), and re-plans the start
-- slots at a new rate as the worker's own limiter does: the next slot is the
-- last one handed out plus the new interval, so a rate raised after a very
-- low one applies at once, and no change ever makes a burst.
CREATE FUNCTION notifyworker.queue_changed_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.rate, NEW.concurrency, NEW.key_rate, NEW.key_concurrency, NEW.paused)
        IS DISTINCT FROM
       (OLD.rate, OLD.concurrency, OLD.key_rate, OLD.key_concurrency, OLD.paused) THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    IF NEW.rate IS DISTINCT FROM OLD.rate THEN
        NEW.next_start_at := CASE
            WHEN OLD.rate > 0 AND NEW.rate > 0
            THEN OLD.next_start_at - make_interval(secs => 1 / OLD.rate)
                 + make_interval(secs => 1 / NEW.rate)
        END;
    END IF;
    IF NEW.key_rate IS DISTINCT FROM OLD.key_rate OR NEW.name <> OLD.name THEN
        UPDATE notifyworker.queue_keys AS k
        SET next_start_at = k.next_start_at - make_interval(secs => 1 / OLD.key_rate)
                            + make_interval(secs => 1 / NEW.key_rate)
        WHERE k.queue = OLD.name AND OLD.key_rate IS NOT NULL AND NEW.key_rate IS NOT NULL;
        DELETE FROM notifyworker.queue_keys AS k
        WHERE k.queue = OLD.name AND (OLD.key_rate IS NULL OR NEW.key_rate IS NULL
                                      OR NEW.name <> OLD.name);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER queues_changed
    BEFORE UPDATE ON notifyworker.queues
    FOR EACH ROW EXECUTE FUNCTION notifyworker.queue_changed_v1();

-- A queue resumed, or given more room, may have jobs waiting: wake the fleet.
CREATE FUNCTION notifyworker.notify_queue_changed_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyworker_jobs', 'queues');
    RETURN NULL;
END;
$$;

CREATE TRIGGER queues_changed_notify
    AFTER INSERT OR UPDATE OF rate, concurrency, key_rate, key_concurrency, paused
        OR DELETE ON notifyworker.queues
    FOR EACH STATEMENT EXECUTE FUNCTION notifyworker.notify_queue_changed_v1();

-- The insert trigger's notification names the transaction ('inserted:<xid>'):
-- one per transaction still (PostgreSQL folds identical ones), and every
-- worker can tell, from the same name, which one of them it wakes.
CREATE OR REPLACE FUNCTION notifyworker.notify_jobs_inserted_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('notifyworker_jobs', 'inserted:' || pg_current_xact_id()::text);
    RETURN NULL;
END;
$$;

-- The claim: up to `wanted` due jobs from the queues `serve` names (NULL:
-- every queue with waiting jobs, in random order), for one worker. Per queue:
-- - no row, or a row without limits: the due jobs, highest priority first,
--   then oldest, FOR UPDATE SKIP LOCKED (replicas claim side by side);
-- - paused: nothing;
-- - fleet limits: under the queue row's lock, so the claims of that queue
--   take turns across the fleet, and limits are counted from the table as it
--   is: no more than `concurrency` held, none of a key beyond
--   `key_concurrency`, start slots 1/rate apart (and 1/key_rate per key)
--   handed out no further than `pace_ahead` seconds ahead.
-- Where jobs carry a limit_key they are taken round-robin by key (the jobs
-- without one count as one more key), starting after the key this session
-- took last, so one key's backlog never starves another key's job.
-- Each row says when its job may start: start_in seconds after the claim
-- began (NULL: at the worker's own pace). A last row without a job, when a limit held jobs
-- back, says in claim_again_in when a claim may find more.
CREATE FUNCTION notifyworker.claim_v1(
    worker text, serve text[], wanted integer, max_payload_bytes integer,
    pace_ahead double precision
) RETURNS TABLE (
    id bigint, task text, payload text, stored_bytes integer, timeout double precision,
    queued_at timestamptz, created_at timestamptz, attempts integer, max_attempts integer,
    queue text, limit_key text, start_in double precision, claim_again_in double precision
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    q text;
    cfg record;
    limited boolean;
    left_over integer := wanted;
    budget integer;
    got integer;
    capped boolean;         -- a key at its key_concurrency held jobs back
    more boolean;           -- a key gave its whole share: it may have more
    again double precision;  -- seconds until a held-back queue may yield more
    clock timestamptz;
    horizon timestamptz;
    slot timestamptz;       -- the queue's next start slot (NULL: no fleet rate)
    start_at timestamptz;
    gap interval;
    key_gap interval;
    cursors jsonb := coalesce(
        nullif(current_setting('notifyworker.key_cursors', true), ''), '{}')::jsonb;
    after_key text;
    last_key text;
    found_ids bigint[];     -- the candidates, in the order they are taken
    found_keys text[];
    found_next timestamptz[];
    ids bigint[];
    starts timestamptz[];
    keys text[];
    key_slots timestamptz[];
    key_taken integer[];
    k integer;
    kslot timestamptz;
BEGIN
    -- A worker a sweeper declared dead claims nothing until it registered
    -- again, so a worker back from a freeze never runs a job's new attempt
    -- beside its stale one.
    IF wanted <= 0 OR NOT EXISTS (SELECT FROM notifyworker.workers AS w WHERE w.id = worker) THEN
        RETURN;
    END IF;
    FOR q IN
        SELECT u.name FROM (
            SELECT s.name FROM unnest(serve) AS s (name)
            UNION ALL
            -- Every queue with waiting jobs: one index probe per queue.
            (WITH RECURSIVE waiting AS (
                (SELECT j.queue FROM notifyworker.jobs AS j WHERE j.status = 'new'
                 ORDER BY j.queue LIMIT 1)
                UNION ALL
                SELECT (SELECT j.queue FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue > w.queue ORDER BY j.queue LIMIT 1)
                FROM waiting AS w WHERE w.queue IS NOT NULL
            )
            SELECT w.queue FROM waiting AS w WHERE serve IS NULL AND w.queue IS NOT NULL)
        ) AS u (name)
        -- A claim short of room spreads over the queues; a hundred at most,
        -- so that thousands of queues cannot make one claim slow.
        ORDER BY random()
        LIMIT 100
    LOOP
        EXIT WHEN left_over <= 0;
        SELECT c.rate, c.concurrency, c.key_rate, c.key_concurrency, c.paused, c.next_start_at
        INTO cfg FROM notifyworker.queues AS c WHERE c.name = q;
        limited := FOUND AND (cfg.rate > 0 OR cfg.concurrency IS NOT NULL
                              OR cfg.key_rate IS NOT NULL OR cfg.key_concurrency IS NOT NULL);
        IF cfg.paused THEN
            CONTINUE;
        END IF;

        IF NOT limited THEN
            IF NOT EXISTS (SELECT FROM notifyworker.jobs AS j
                           WHERE j.status = 'new' AND j.queue = q
                             AND coalesce(j.limit_key, '') > '') THEN
                -- The plain claim: no limits, no keys to be fair between.
                -- Priority by priority, highest first, each one's due jobs
                -- oldest first: jobs of a higher priority that are not due
                -- yet (scheduled, or a retry's backoff) are never read past.
                RETURN QUERY
                WITH RECURSIVE levels AS (
                    (SELECT j.priority FROM notifyworker.jobs AS j
                     WHERE j.status = 'new' AND j.queue = q AND coalesce(j.limit_key, '') = ''
                     ORDER BY j.priority DESC LIMIT 1)
                    UNION ALL
                    SELECT (SELECT j.priority FROM notifyworker.jobs AS j
                            WHERE j.status = 'new' AND j.queue = q
                              AND coalesce(j.limit_key, '') = '' AND j.priority < l.priority
                            ORDER BY j.priority DESC LIMIT 1)
                    FROM levels AS l WHERE l.priority IS NOT NULL
                ), picked AS (
                    SELECT d.id FROM levels AS l
                    CROSS JOIN LATERAL (
                        SELECT j.id FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue = q
                          AND coalesce(j.limit_key, '') = '' AND j.priority = l.priority
                          AND j.run_at <= now()
                        ORDER BY j.run_at, j.id
                        LIMIT left_over
                        FOR UPDATE SKIP LOCKED
                    ) AS d
                    WHERE l.priority IS NOT NULL
                    LIMIT left_over
                ), claimed AS (
                    UPDATE notifyworker.jobs AS j
                    SET status = 'queued', queued_at = clock_timestamp(), worker_id = worker
                    FROM picked WHERE j.id = picked.id
                    RETURNING j.*
                )
                SELECT c.id, c.task,
                       CASE WHEN pg_column_size(c.payload) <= max_payload_bytes
                            THEN c.payload::text END,
                       pg_column_size(c.payload), extract(epoch FROM c.timeout)::float8,
                       c.queued_at, c.created_at, c.attempts, c.max_attempts, c.queue,
                       c.limit_key, CASE WHEN cfg.rate = 0 THEN 0::float8 END, NULL::float8
                FROM claimed AS c;
                GET DIAGNOSTICS got = ROW_COUNT;
                left_over := left_over - got;
                CONTINUE;
            END IF;
            budget := left_over;
        ELSE
            -- Limits for the whole fleet: this queue's claims take turns.
            SELECT c.rate, c.concurrency, c.key_rate, c.key_concurrency, c.paused,
                   c.next_start_at
            INTO cfg FROM notifyworker.queues AS c WHERE c.name = q FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                -- Another worker's claim of this queue has the row (or a
                -- client's open transaction): never wait for it, look again soon.
                again := least(again, 0.01);
                CONTINUE;
            END IF;
            IF cfg.paused THEN
                CONTINUE;
            END IF;
            limited := cfg.rate > 0 OR cfg.concurrency IS NOT NULL
                       OR cfg.key_rate IS NOT NULL OR cfg.key_concurrency IS NOT NULL;
            budget := left_over;
            IF cfg.concurrency IS NOT NULL THEN
                budget := least(budget, cfg.concurrency - (
                    SELECT count(*) FROM notifyworker.jobs AS j
                    WHERE j.status IN ('queued', 'running') AND j.queue = q)::integer);
                IF budget <= 0 THEN
                    again := least(again, 0.05);  -- a job held elsewhere may end
                    CONTINUE;
                END IF;
            END IF;
        END IF;

        clock := clock_timestamp();
        horizon := clock + make_interval(secs => pace_ahead);
        slot := NULL; gap := NULL; key_gap := NULL;
        IF limited AND cfg.rate > 0 THEN
            -- A slot is never in the past when the worker gets it: 2 ms ahead
            -- at least, or jobs claimed after an idle spell would start at once.
            slot := greatest(clock + interval '2 milliseconds', cfg.next_start_at);
            gap := make_interval(secs => 1 / cfg.rate);
            IF slot > horizon THEN
                again := least(again, extract(epoch FROM slot - horizon)::float8);
                CONTINUE;
            END IF;
        END IF;
        IF limited AND cfg.key_rate IS NOT NULL THEN
            key_gap := make_interval(secs => 1 / cfg.key_rate);
        END IF;
        after_key := cursors ->> q;
        ids := '{}'; starts := '{}'; keys := '{}'; key_slots := '{}';
        key_taken := '{}';

        -- Candidates, round-robin by key: up to 200 keys after the last one
        -- this session took (then from the first), and the jobs without a
        -- key; each gives an equal share of the budget, highest priority
        -- first, then oldest.
        WITH RECURSIVE after_cursor AS (
                (SELECT coalesce(j.limit_key, '') AS turn_key FROM notifyworker.jobs AS j
                 WHERE j.status = 'new' AND j.queue = q
                   AND coalesce(j.limit_key, '') > coalesce(after_key, '')
                 ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                UNION ALL
                SELECT (SELECT coalesce(j.limit_key, '') FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue = q
                          AND coalesce(j.limit_key, '') > a.turn_key
                        ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                FROM after_cursor AS a WHERE a.turn_key IS NOT NULL
            ), from_first AS (
                (SELECT coalesce(j.limit_key, '') AS turn_key FROM notifyworker.jobs AS j
                 WHERE j.status = 'new' AND j.queue = q
                   AND coalesce(j.limit_key, '') > '' AND coalesce(j.limit_key, '') <= after_key
                 ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                UNION ALL
                SELECT (SELECT coalesce(j.limit_key, '') FROM notifyworker.jobs AS j
                        WHERE j.status = 'new' AND j.queue = q
                          AND coalesce(j.limit_key, '') > f.turn_key
                          AND coalesce(j.limit_key, '') <= after_key
                        ORDER BY coalesce(j.limit_key, '') LIMIT 1)
                FROM from_first AS f WHERE f.turn_key IS NOT NULL
            ), visited AS (
                -- Keys in turn order, no more than the budget (the LIMIT stops
                -- both walks: they run lazily), then the jobs without a key, if any.
                (SELECT a.turn_key FROM after_cursor AS a WHERE a.turn_key IS NOT NULL
                 UNION ALL
                 SELECT f.turn_key FROM from_first AS f WHERE f.turn_key IS NOT NULL
                 LIMIT least(budget, 200))
                UNION ALL
                SELECT '' WHERE EXISTS (
                    SELECT FROM notifyworker.jobs AS j
                    WHERE j.status = 'new' AND j.queue = q AND coalesce(j.limit_key, '') = '')
            ), turns AS (
                SELECT v.turn_key, row_number() OVER () AS turn FROM visited AS v
            ), shares AS (
                SELECT t.turn_key, t.turn,
                       ceil(budget::float8 / (SELECT count(*) FROM turns))::integer AS share,
                       CASE WHEN t.turn_key <> '' AND cfg.key_concurrency IS NOT NULL
                            THEN (SELECT count(*) FROM notifyworker.jobs AS j
                                  WHERE j.status IN ('queued', 'running') AND j.queue = q
                                    AND j.limit_key = t.turn_key)::integer
                       END AS held,
                       CASE WHEN t.turn_key <> '' AND cfg.key_rate IS NOT NULL
                            THEN (SELECT qk.next_start_at FROM notifyworker.queue_keys AS qk
                                  WHERE qk.queue = q AND qk.key = t.turn_key)
                       END AS key_next
                FROM turns AS t
            -- A key gives no more jobs than its free places under
            -- key_concurrency (none at it, and it locks none), and says so.
            ), candidates AS (
            SELECT c.id, nullif(s.turn_key, '') AS limit_key, s.key_next,
                   s.share > coalesce(cfg.key_concurrency - s.held, s.share) AS at_limit,
                   count(c.id) OVER (PARTITION BY s.turn) = s.share AS full_share,
                   row_number() OVER (ORDER BY c.priority DESC NULLS LAST, c.rank, s.turn) AS ord
            FROM shares AS s
            LEFT JOIN LATERAL (
                SELECT l.id, l.priority, l.run_at,
                       row_number() OVER (ORDER BY l.priority DESC, l.run_at, l.id) AS rank
                FROM (
                    SELECT j.id, j.priority, j.run_at FROM notifyworker.jobs AS j
                    WHERE j.status = 'new' AND j.queue = q
                      AND coalesce(j.limit_key, '') = s.turn_key AND j.run_at <= now()
                    ORDER BY j.priority DESC, j.run_at, j.id
                    LIMIT greatest(least(s.share, cfg.key_concurrency - s.held), 0)
                    FOR UPDATE SKIP LOCKED
                ) AS l
            ) AS c ON true
        )
        SELECT coalesce(array_agg(x.id ORDER BY x.ord) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(array_agg(x.limit_key ORDER BY x.ord) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(array_agg(x.key_next ORDER BY x.ord) FILTER (WHERE x.id IS NOT NULL), '{}'),
               coalesce(bool_or(x.at_limit), false), coalesce(bool_or(x.full_share), false)
        INTO found_ids, found_keys, found_next, capped, more
        FROM candidates AS x;
        IF key_gap IS NULL THEN
            -- One slot after another (if the queue has a rate), in the order found.
            IF slot IS NOT NULL THEN
                budget := least(budget,
                                floor(extract(epoch FROM horizon - slot) * cfg.rate)::integer + 1);
            END IF;
            ids := found_ids[1:budget];
            starts := ARRAY(
                SELECT CASE WHEN slot IS NOT NULL THEN slot + (n - 1) * gap
                            WHEN cfg.rate = 0 THEN clock END  -- unpaced: not even the worker's
                FROM generate_series(1, cardinality(ids)) AS n);
            last_key := (SELECT u.k FROM unnest(found_keys[1:budget]) WITH ORDINALITY AS u (k, n)
                         WHERE u.k IS NOT NULL ORDER BY u.n DESC LIMIT 1);
            IF slot IS NOT NULL THEN
                slot := slot + cardinality(ids) * gap;
                IF cardinality(found_ids) > cardinality(ids) THEN
                    again := least(again, extract(epoch FROM slot - horizon)::float8);
                END IF;
            END IF;
        ELSE
            -- A key_rate: each key's slots too, one job at a time.
            FOR i IN 1 .. cardinality(found_ids) LOOP
                EXIT WHEN cardinality(ids) >= budget;
                IF slot > horizon THEN
                    again := least(again, extract(epoch FROM slot - horizon)::float8);
                    EXIT;
                END IF;
                kslot := NULL;
                IF found_keys[i] IS NOT NULL THEN
                    k := array_position(keys, found_keys[i]);
                    IF k IS NULL THEN
                        keys := keys || found_keys[i];
                        k := cardinality(keys);
                        key_taken := key_taken || 0;
                        key_slots := key_slots || greatest(clock, found_next[i]);
                    END IF;
                    kslot := key_slots[k];
                    IF kslot > horizon THEN
                        again := least(again, extract(epoch FROM kslot - horizon)::float8);
                        CONTINUE;
                    END IF;
                    key_taken[k] := key_taken[k] + 1;
                    last_key := found_keys[i];
                END IF;
                start_at := greatest(slot, kslot);  -- NULL when neither paces it
                IF start_at IS NULL AND cfg.rate = 0 THEN
                    start_at := clock;
                END IF;
                ids := ids || found_ids[i];
                starts := starts || start_at;
                IF slot IS NOT NULL THEN
                    slot := start_at + gap;
                END IF;
                IF kslot IS NOT NULL THEN
                    key_slots[k] := start_at + key_gap;
                END IF;
            END LOOP;
        END IF;

        IF last_key IS NOT NULL THEN
            cursors := jsonb_set(cursors, ARRAY[q], to_jsonb(last_key));
            last_key := NULL;
        END IF;
        IF capped OR (cfg.concurrency IS NOT NULL AND cardinality(ids) = budget
                      AND budget < left_over) THEN
            again := least(again, 0.05);  -- places held elsewhere may free up
        END IF;
        IF more AND cardinality(ids) < budget THEN
            again := least(again, 0.0);  -- shares left room a second claim can fill
        END IF;
        IF slot IS NOT NULL THEN
            UPDATE notifyworker.queues AS c SET next_start_at = slot WHERE c.name = q;
        END IF;
        IF key_gap IS NOT NULL THEN
            INSERT INTO notifyworker.queue_keys AS qk (queue, key, next_start_at)
            SELECT q, u.key, u.next_start_at
            FROM unnest(keys, key_slots, key_taken) AS u (key, next_start_at, taken)
            WHERE u.taken > 0
            ON CONFLICT (queue, key) DO UPDATE SET next_start_at = excluded.next_start_at;
        END IF;
        CONTINUE WHEN cardinality(ids) = 0;
        RETURN QUERY
        WITH claimed AS (
            UPDATE notifyworker.jobs AS j
            SET status = 'queued', queued_at = clock_timestamp(), worker_id = worker
            FROM unnest(ids, starts) AS m (id, start_at)
            -- = ANY: the primary key's index, however small the planner
            -- thinks the table is (a sequential scan of a big one was 50 ms).
            WHERE j.id = m.id AND j.id = ANY (ids) AND j.status = 'new'
            RETURNING j.*, m.start_at
        )
        SELECT c.id, c.task,
               CASE WHEN pg_column_size(c.payload) <= max_payload_bytes THEN c.payload::text END,
               pg_column_size(c.payload), extract(epoch FROM c.timeout)::float8,
               c.queued_at, c.created_at, c.attempts, c.max_attempts, c.queue, c.limit_key,
               -- From the claim's start (now()), which the worker knows as the
               -- moment it sent the claim: the answer's delay moves no slot.
               extract(epoch FROM c.start_at - now())::float8,
               NULL::float8
        FROM claimed AS c;
        GET DIAGNOSTICS got = ROW_COUNT;
        left_over := left_over - got;
    END LOOP;
    PERFORM set_config('notifyworker.key_cursors', cursors::text, false);
    IF again IS NOT NULL THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::float8,
                            NULL::timestamptz, NULL::timestamptz, NULL::integer, NULL::integer,
                            NULL::text, NULL::text, NULL::float8, greatest(again, 0.001);
    END IF;
END;
$$;

-- enqueue() and enqueue_many() take the queue, the priority and the limit
-- key too (the new arguments come last, so existing calls keep working).
DROP FUNCTION notifyworker.enqueue(text, jsonb, text, interval, integer, timestamptz, text);
DROP FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[]);

-- Enqueues jobs, given one array per column (NULL, or one value per job): their
-- ids in the order given, a held unique_key giving its holder's id. A NULL value
-- is the column's default, as a plain INSERT leaves it (tests/test_producer.py
-- checks they agree). One statement for the caller, all or nothing.
-- SECURITY INVOKER: it needs nothing a plain INSERT does not (the INSERT and
-- SELECT privileges), so who may enqueue stays who may insert.
CREATE FUNCTION notifyworker.enqueue_many(
    tasks text[], payloads jsonb[] DEFAULT NULL, object_ids text[] DEFAULT NULL,
    timeouts interval[] DEFAULT NULL, max_attempts integer[] DEFAULT NULL,
    run_ats timestamptz[] DEFAULT NULL, unique_keys text[] DEFAULT NULL,
    queues text[] DEFAULT NULL, priorities integer[] DEFAULT NULL,
    limit_keys text[] DEFAULT NULL
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
        OR cardinality(queues) NOT IN (0, total) OR cardinality(priorities) NOT IN (0, total)
        OR cardinality(limit_keys) NOT IN (0, total)
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
            INSERT INTO notifyworker.jobs
                (task, payload, object_id, timeout, max_attempts, run_at, queue, priority,
                 limit_key)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now()), coalesce(r.queue, 'default'),
                   coalesce(r.priority, 0), r.limit_key
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats,
                        queues, priorities, limit_keys)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at,
                                       queue, priority, limit_key, n)
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
                (task, payload, object_id, timeout, max_attempts, run_at, unique_key, queue,
                 priority, limit_key)
            SELECT r.task, coalesce(r.payload, '{}'), r.object_id,
                   coalesce(r.timeout, interval '10 seconds'), coalesce(r.max_attempts, 1),
                   coalesce(r.run_at, now()), r.unique_key, coalesce(r.queue, 'default'),
                   coalesce(r.priority, 0), r.limit_key
            FROM unnest(tasks, payloads, object_ids, timeouts, enqueue_many.max_attempts, run_ats,
                        unique_keys, queues, priorities, limit_keys)
                 WITH ORDINALITY AS r (task, payload, object_id, timeout, max_attempts, run_at,
                                       unique_key, queue, priority, limit_key, n)
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
    run_at timestamptz DEFAULT NULL, unique_key text DEFAULT NULL,
    queue text DEFAULT NULL, priority integer DEFAULT NULL, limit_key text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (notifyworker.enqueue_many(
        ARRAY[task], ARRAY[payload], ARRAY[object_id], ARRAY[timeout], ARRAY[max_attempts],
        ARRAY[run_at], ARRAY[unique_key], ARRAY[queue], ARRAY[priority], ARRAY[limit_key]))[1];
END;
$$;

-- The application may set the new columns, and read the queues' settings
-- (to show them; changing them is the operator's, like `notifyworker rate`).
GRANT INSERT (queue, priority, limit_key) ON notifyworker.jobs TO notifyworker_app;
GRANT SELECT ON notifyworker.queues TO notifyworker_app;
REVOKE ALL ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[], text[], integer[],
    text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text, text, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue_many(
    text[], jsonb[], text[], interval[], integer[], timestamptz[], text[], text[], integer[],
    text[]) TO notifyworker_app;
GRANT EXECUTE ON FUNCTION notifyworker.enqueue(
    text, jsonb, text, interval, integer, timestamptz, text, text, integer, text)
    TO notifyworker_app;

-- The worker claims through claim_v1 (the row lock of a limited queue needs
-- UPDATE; it writes only next_start_at), and keeps the per-key slots.
GRANT SELECT, UPDATE (next_start_at) ON notifyworker.queues TO notifyworker_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifyworker.queue_keys TO notifyworker_worker;
REVOKE ALL ON FUNCTION notifyworker.claim_v1(text, text[], integer, integer, double precision)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.claim_v1(text, text[], integer, integer, double precision)
    TO notifyworker_worker;
