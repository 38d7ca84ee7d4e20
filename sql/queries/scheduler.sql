-- What the scheduler sends: it runs inside every worker, as the role
-- notifyworker_worker, and every replica tries every due tick; the table lets
-- one of them fire it (fire_tick). Every statement here must run with that
-- role's grants (tests/test_roles.py). The same block format as service.sql.

-- === The definitions ===

-- declare_schedule --
-- A schedule declared in code, written when a worker starts (and what
-- `notifyworker schedules add` sends): created, or brought up to date. The
-- owner's pause and the ticks fired are left as they are; a row already up to
-- date is not written at all, so a restart changes nothing.
INSERT INTO notifyworker.schedules AS s (name, cron, tz, task, payload, catch_up)
VALUES (%(name)s, %(cron)s, %(tz)s, %(task)s, %(payload)s, %(catch_up)s)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, tz = excluded.tz, task = excluded.task, payload = excluded.payload,
    catch_up = excluded.catch_up
WHERE (s.cron, s.tz, s.task, s.payload, s.catch_up)
    IS DISTINCT FROM (excluded.cron, excluded.tz, excluded.task, excluded.payload, excluded.catch_up)
RETURNING (xmax = 0) AS created;

-- load_schedules --
-- Every schedule, read again every second, with PostgreSQL's clock: ticks are
-- judged on it, so replicas with skewed clocks agree on what is due.
SELECT name, cron, tz, task, paused, catch_up, last_tick, updated_at,
       clock_timestamp() AS now
FROM notifyworker.schedules
ORDER BY name;

-- === Firing a tick ===

-- fire_tick --
-- Claims one tick of one schedule: moves last_tick forward to it, only while
-- it is due on PostgreSQL's clock, the schedule is not paused, its
-- expression and zone are still the ones the tick was computed from, and no
-- replica fired this tick or a later one. Of the replicas that try the same
-- tick, the row lock lets one through; the others find last_tick moved. The
-- caller inserts the job (enqueue_tick) in the same transaction.
UPDATE notifyworker.schedules
SET last_tick = %(tick)s
WHERE name = %(name)s AND cron = %(cron)s AND tz = %(tz)s AND NOT paused
  AND (last_tick IS NULL OR last_tick < %(tick)s)
  AND %(tick)s <= clock_timestamp()
RETURNING name;

-- enqueue_tick --
-- The job of the tick just claimed, from the schedule's row as it is now;
-- object_id names the schedule and the tick.
INSERT INTO notifyworker.jobs (task, payload, object_id)
SELECT task, payload, %(object_id)s
FROM notifyworker.schedules
WHERE name = %(name)s
RETURNING id;

-- skip_ticks --
-- Ticks missed under catch-up 'none': last_tick moves past them, and no job.
UPDATE notifyworker.schedules
SET last_tick = %(tick)s
WHERE name = %(name)s AND cron = %(cron)s AND tz = %(tz)s
  AND (last_tick IS NULL OR last_tick < %(tick)s)
RETURNING name;
