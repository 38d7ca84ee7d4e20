-- A cluster-wide knob for the per-process rate, changed while workers run.
-- Every worker reads it with its heartbeat; no row means each worker's own
-- configured rate. Still per process: N workers start up to N x rate jobs/s.

CREATE TABLE notifyworker.settings (
    name  text PRIMARY KEY,
    value double precision NOT NULL,
    CONSTRAINT setting_is_known CHECK (name IN ('rate')),
    CONSTRAINT rate_not_negative CHECK (name <> 'rate' OR value >= 0)
);
