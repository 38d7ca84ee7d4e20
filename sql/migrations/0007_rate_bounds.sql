-- One rule for the rate, the same as notifyworker.models.rate_problem: 0
-- (unlimited), or between 0.001 and 100,000 job starts per second.
--
-- The old CHECK (value >= 0) let through what no worker can use: 'NaN' (which
-- PostgreSQL sorts above every number, so NaN >= 0 holds), 'Infinity', and
-- rates such as 1e-320 that stop every start for good. BETWEEN refuses NaN and
-- ±Infinity as well, since NaN <= 100000 and Infinity <= 100000 are false.
--
-- A row that breaks the rule is deleted first, or the new CHECK could not be
-- added. Deleting it is what `notifyworker rate --reset` does: each worker goes
-- back to its own configured rate. No worker was running at the bad value (it
-- killed them, or they ignored it), so there is nothing of it worth keeping.

DELETE FROM notifyworker.settings
WHERE name = 'rate'
  AND NOT (value = 0 OR value BETWEEN 0.001::float8 AND 100000::float8);

ALTER TABLE notifyworker.settings
    DROP CONSTRAINT rate_not_negative,
    ADD CONSTRAINT rate_in_bounds
        CHECK (name <> 'rate' OR value = 0 OR value BETWEEN 0.001::float8 AND 100000::float8);
