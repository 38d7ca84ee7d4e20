-- 0002's task-name check wrote the vertical tab as E'\v', which PostgreSQL
-- reads as a plain 'v' (its escapes are \b \f \n \r \t): a task named
-- 'invoice' or 'deliver' was refused. The tab is written \x0b now. The new
-- check refuses less than the old one, so every existing row passes it.
-- NOT VALID then VALIDATE: existing rows are checked without blocking writers.

ALTER TABLE notifyworker.jobs DROP CONSTRAINT task_is_a_name;

ALTER TABLE notifyworker.jobs ADD CONSTRAINT task_is_a_name CHECK (
    length(task) BETWEEN 1 AND 200 AND translate(task, E' \t\r\n\x0b\f', '') = task
) NOT VALID;

ALTER TABLE notifyworker.jobs VALIDATE CONSTRAINT task_is_a_name;
