-- Cron schedules: periodic jobs, declared next to a task in code (synced here
-- when a worker starts), or managed from SQL and `notifyworker schedules`.
--
-- Every worker runs a scheduler; they agree through this table alone. A tick
-- is fired by moving `last_tick` forward to it, compare-and-set, and inserting
-- its job in the same transaction: of all the replicas that try the same tick,
-- one moves the row and the others find it moved, so each tick makes exactly
-- one job, through restarts and rolling updates.
--
-- The cron expression and the time zone are checked by the worker, which
-- parses them (cronsim, Python's zoneinfo); the constraints here only refuse
-- what cannot be one. A row that passes them and still does not parse is
-- skipped by every scheduler, with one warning, and fires nothing.

CREATE TABLE notifyworker.schedules (
    name       text PRIMARY KEY,
    -- Five fields (minute hour day-of-month month day-of-week), six with
    -- seconds first, or a nickname such as @daily; read in `tz`.
    cron       text NOT NULL,
    -- An IANA time zone name, e.g. Europe/Paris.
    tz         text NOT NULL DEFAULT 'UTC',
    task       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    -- A paused schedule fires nothing; resumed, it starts from its next tick.
    paused     boolean NOT NULL DEFAULT false,
    -- After ticks were missed (no scheduler ran for a while): 'one' fires the
    -- latest of them once, 'none' fires none; never one job per missed tick.
    catch_up   text NOT NULL DEFAULT 'one',
    -- The last tick fired (or skipped); only ever moves forward.
    last_tick  timestamptz,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The last change of the definition (not of last_tick): ticks before it
    -- belong to the definition before, and never fire.
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),

    -- 1 to 200 characters, no whitespace. The vertical tab is written \x0b:
    -- PostgreSQL reads E'\v' as a plain 'v'.
    CONSTRAINT name_is_a_name CHECK (
        length(name) BETWEEN 1 AND 200 AND translate(name, E' \t\r\n\x0b\f', '') = name
    ),
    CONSTRAINT task_is_a_name CHECK (
        length(task) BETWEEN 1 AND 200 AND translate(task, E' \t\r\n\x0b\f', '') = task
    ),
    CONSTRAINT payload_is_an_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT cron_is_cron_shaped CHECK (
        length(cron) <= 200
        AND cron ~ '^(@[a-z]+|[0-9A-Za-z*/,#-]+( +[0-9A-Za-z*/,#-]+){4,5})$'
    ),
    CONSTRAINT tz_is_zone_shaped CHECK (
        length(tz) <= 64 AND tz ~ '^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$'
    ),
    CONSTRAINT catch_up_is_known CHECK (catch_up IN ('one', 'none')),
    CONSTRAINT last_tick_is_finite CHECK (isfinite(last_tick))
);

-- Stamps updated_at when the definition changes, from any client; firing a
-- tick (last_tick alone) is not a change.
CREATE FUNCTION notifyworker.schedule_changed_v1() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.name, NEW.cron, NEW.tz, NEW.task, NEW.payload, NEW.paused, NEW.catch_up)
        IS DISTINCT FROM
       (OLD.name, OLD.cron, OLD.tz, OLD.task, OLD.payload, OLD.paused, OLD.catch_up) THEN
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schedules_changed
    BEFORE UPDATE ON notifyworker.schedules
    FOR EACH ROW EXECUTE FUNCTION notifyworker.schedule_changed_v1();

-- The worker: read schedules, sync the ones declared in code (not pause
-- them, not delete them), record the ticks it fires, and insert their jobs
-- (only the columns a scheduled job sets).
GRANT SELECT ON notifyworker.schedules TO notifyworker_worker;
GRANT INSERT (name, cron, tz, task, payload, catch_up) ON notifyworker.schedules
    TO notifyworker_worker;
GRANT UPDATE (cron, tz, task, payload, catch_up, last_tick) ON notifyworker.schedules
    TO notifyworker_worker;
GRANT INSERT (task, payload, object_id) ON notifyworker.jobs TO notifyworker_worker;

-- The application may manage schedules from SQL, as it may insert jobs: a
-- schedule makes only jobs it could insert itself. It cannot set last_tick,
-- so it cannot make a tick fire twice.
GRANT SELECT, DELETE ON notifyworker.schedules TO notifyworker_app;
GRANT INSERT (name, cron, tz, task, payload, paused, catch_up) ON notifyworker.schedules
    TO notifyworker_app;
GRANT UPDATE (cron, tz, task, payload, paused, catch_up) ON notifyworker.schedules
    TO notifyworker_app;
