-- Retention: finished jobs (`done`, `failed`, `cancelled`) are deleted once
-- older than their status's retention period, a bounded batch at a time, by
-- one worker of the fleet at a time (its pruner) or by `notifyworker prune`.
--
-- 1. jobs_finished, the prune's index: finished rows by status, oldest first,
--    so a batch reads the rows it deletes and no others, however many active
--    or younger rows the table holds. Active rows never enter it: its one cost
--    on the hot path is one more index entry when a job finishes.
--    Built inside this migration's transaction, so writes to notifyworker.jobs
--    wait while it builds (docs/benchmarks.md has the time per million rows).
-- 2. delete_finished_v1(): the worker role's only way to delete jobs, and
--    only finished ones. The worker picks the rows (sql/queries/sweeper.sql,
--    prune_finished, which EXPLAIN shows on this index) and locks them; the
--    function deletes those of them still finished.
-- 3. The pruner's lease: a one-row table like the sweeper's, so a batch never
--    holds the sweeper's lock (other replicas would skip their sweeps while it
--    did). due_at paces the whole fleet's batches, however many replicas.

CREATE INDEX jobs_finished ON notifyworker.jobs (status, finished_at)
    WHERE status IN ('done', 'failed', 'cancelled');

-- Deletes those of `ids` that are finished; returns what it deleted.
-- SECURITY DEFINER: the worker role may delete no row itself.
CREATE FUNCTION notifyworker.delete_finished_v1(ids bigint[])
RETURNS TABLE (id bigint, status text)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM notifyworker.jobs AS j
    WHERE j.id = ANY (ids) AND j.status IN ('done', 'failed', 'cancelled')
    RETURNING j.id, j.status
$$;
REVOKE ALL ON FUNCTION notifyworker.delete_finished_v1(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION notifyworker.delete_finished_v1(bigint[]) TO notifyworker_worker;

-- One row: whoever holds its lock prunes a batch; the next batch of the fleet
-- is not due before due_at.
CREATE TABLE notifyworker.pruner (
    one        boolean PRIMARY KEY DEFAULT true CONSTRAINT pruner_has_one_row CHECK (one),
    due_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    pruned_at  timestamptz,
    pruned_by  text
);
INSERT INTO notifyworker.pruner DEFAULT VALUES;

-- SELECT … FOR UPDATE needs UPDATE: the worker role's alone (and the owner's).
GRANT SELECT, UPDATE ON notifyworker.pruner TO notifyworker_worker;
