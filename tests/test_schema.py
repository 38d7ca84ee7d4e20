"""The schema: migrations are idempotent and concurrent-safe, sql/schema.sql builds what they
build, constraints reject bad rows, the trigger notifies once per statement, and every named
query is used and exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest

from notifyworker import admin, db, schema, sqlfiles
from notifyworker.errors import NotifyWorkerError, RowRejected
from notifyworker.models import FINAL_STATUSES, MAX_RATE, MIN_RATE, Outcome, will_retry
from tests.catalog import describe, difference
from tests.helpers import scalar

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_SQL = ROOT / "sql" / "schema.sql"


def test_migrate_twice_is_harmless(empty_database_url: str) -> None:
    first = db.run_once(empty_database_url, schema.migrate)
    second = db.run_once(empty_database_url, schema.migrate)
    assert first == [f"{m.version:04d}_{m.name}" for m in sqlfiles.migrations()]
    assert second == []
    assert db.run_once(empty_database_url, schema.pending_migrations) == []


def test_schema_sql_builds_what_the_migrations_build(
    empty_database_url: str, other_empty_database_url: str
) -> None:
    """sql/schema.sql is the readable copy of migrations 0001..N: same catalog, same rows."""
    db.run_once(empty_database_url, schema.migrate)
    with psycopg.connect(other_empty_database_url, autocommit=True) as written:
        written.execute(SCHEMA_SQL.read_bytes())
        from_file = describe(written)
    with psycopg.connect(empty_database_url) as migrated:
        from_migrations = describe(migrated)
    assert from_migrations, "the catalog queries found nothing"
    diff = difference(from_migrations, from_file, "migrations 0001..N", "sql/schema.sql")
    assert not diff, f"sql/schema.sql is not what the migrations build; update it:\n{diff}"


def test_the_schema_comparison_sees_a_default_a_grant_a_body_and_a_comment(
    conn: psycopg.Connection[Any],
) -> None:
    before = describe(conn)
    conn.execute("ALTER TABLE notifyworker.jobs ALTER COLUMN timeout SET DEFAULT '11 seconds'")
    conn.execute("REVOKE UPDATE (result) ON notifyworker.jobs FROM notifyworker_worker")
    conn.execute(
        "CREATE OR REPLACE FUNCTION notifyworker.will_retry_v1("
        "status text, retryable boolean, attempts integer, max_attempts integer)"
        " RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT false $$"
    )
    conn.execute("COMMENT ON COLUMN notifyworker.jobs.task IS 'what to run'")
    diff = difference(before, describe(conn), "before", "after")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert any("jobs.timeout" in line and "00:00:11" in line for line in changed), diff
    assert any("jobs.result: grant UPDATE to notifyworker_worker" in line for line in changed)
    assert any("will_retry_v1" in line and "SELECT false" in line for line in changed), diff
    assert any("comment on table column notifyworker.jobs.task" in line for line in changed)


def test_migrate_from_two_processes_at_once(empty_database_url: str) -> None:
    command = [
        sys.executable,
        "-m",
        "notifyworker",
        "migrate",
        "--database-url",
        empty_database_url,
    ]
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    said = sorted(out.strip() for out, _ in outputs)
    assert said[0].startswith("applied 0001_")
    assert said[1] == "schema is up to date"
    with psycopg.connect(empty_database_url) as conn:
        versions = scalar(conn, "SELECT count(*) FROM notifyworker.migrations")
    assert versions == len(sqlfiles.migrations())


@pytest.mark.parametrize(
    ("columns", "values", "constraint"),
    [
        ("task, payload", "'has spaces', '{}'", "task_is_a_name"),
        ("task, payload", "'', '{}'", "task_is_a_name"),
        ("task, payload", "'sleep', '[1, 2]'", "payload_is_an_object"),
        ("task, status", "'sleep', 'finished'", "status_is_known"),
        ("task, timeout", "'sleep', '-1 second'", "timeout_is_positive"),
        ("task, attempts", "'sleep', -1", "attempts_not_negative"),
        ("task, status", "'sleep', 'running'", "active_has_worker"),
        ("task, status", "'sleep', 'done'", "finished_has_finished_at"),
        ("task, max_attempts", "'sleep', 0", "max_attempts_in_range"),
        ("task, max_attempts", "'sleep', 101", "max_attempts_in_range"),
        ("task, lost_claims", "'sleep', -1", "lost_claims_not_negative"),
        ("task, unique_key", "'sleep', ''", "unique_key_1_to_200_characters"),
        ("task, unique_key", "'sleep', repeat('k', 201)", "unique_key_1_to_200_characters"),
    ],
)
def test_malformed_insert_is_rejected_by_a_named_constraint(
    conn: psycopg.Connection[Any], columns: str, values: str, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        conn.execute(f"INSERT INTO notifyworker.jobs ({columns}) VALUES ({values})".encode())


@pytest.mark.parametrize("task", ["invoice", "deliver", "send.v2", "ünïcode"])
def test_any_task_name_without_whitespace_is_taken(
    conn: psycopg.Connection[Any], task: str
) -> None:
    """0002 wrote the vertical tab as E'\\v', which PostgreSQL reads as 'v' (fixed by 0013)."""
    assert (
        scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES (%s) RETURNING task", task)
        == task
    )


@pytest.mark.parametrize("space", [" ", "\t", "\n", "\r", "\x0b", "\x0c"])
def test_a_task_name_with_whitespace_is_refused(conn: psycopg.Connection[Any], space: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="task_is_a_name"):
        conn.execute("INSERT INTO notifyworker.jobs (task) VALUES (%s)", (f"send{space}mail",))


def test_missing_task_is_rejected(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.NotNullViolation, match='"task"'):
        conn.execute("INSERT INTO notifyworker.jobs (payload) VALUES ('{}')")


def test_rejection_reaches_the_cli_as_row_rejected(database_url: str) -> None:
    with pytest.raises(RowRejected, match="task_is_a_name"):
        db.run_once(database_url, admin.enqueue, "bad name", {})


def test_trigger_notifies_once_per_statement(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN notifyworker_jobs")
        conn.execute(
            "INSERT INTO notifyworker.jobs (task) SELECT 'sleep' FROM generate_series(1, 1000)"
        )
        conn.execute("INSERT INTO notifyworker.jobs (task) VALUES ('sleep')")
        with conn.transaction():  # one transaction, two statements: one notification
            conn.execute("INSERT INTO notifyworker.jobs (task) VALUES ('sleep')")
            conn.execute("INSERT INTO notifyworker.jobs (task) VALUES ('sleep')")
        got = list(listener.notifies(timeout=1.0))
    assert [n.channel for n in got] == ["notifyworker_jobs"] * 3
    # Each names its transaction: the wake-up token the fleet agrees on.
    tokens = [n.payload.removeprefix("inserted:") for n in got]
    assert all(token.isdigit() for token in tokens)
    assert len(set(tokens)) == 3


def test_every_named_query_exists_and_is_used() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "notifyworker").rglob("*.py"))
    called = set(re.findall(r"""(?:rows|one|execute|query)\(\s*"([a-z0-9_]+)\"""", source))
    literals = set(re.findall(r'"([a-z0-9_]+)"', source))
    defined = set(sqlfiles.queries())
    assert called - defined == set()
    assert defined - literals == set()


def test_queries_come_in_one_file_per_sender() -> None:
    assert set(sqlfiles.query_files()) == {
        "service.sql",
        "sweeper.sql",
        "scheduler.sql",
        "admin.sql",
        "producer.sql",
        "dashboard.sql",
    }
    assert all(sqlfiles.query_files().values())


def test_a_query_name_in_two_files_is_refused() -> None:
    files = {"service.sql": {"claim": "SELECT 1"}, "admin.sql": {"claim": "SELECT 2"}}
    with pytest.raises(
        NotifyWorkerError, match=r"'claim' is defined in both service\.sql and admin\.sql"
    ):
        sqlfiles.merge_queries(files)


def test_query_file_parser() -> None:
    parsed = sqlfiles.parse_queries(
        "-- header\n\n-- first --\n-- what it does\nSELECT 1;\n\n-- second --\nSELECT\n  2;\n"
    )
    assert parsed == {"first": "SELECT 1;", "second": "SELECT\n  2;"}


@pytest.mark.parametrize(
    "value", ["'NaN'", "'Infinity'", "'-Infinity'", "-1", "1e-320", "0.0009", "100000.5"]
)
def test_a_rate_the_rule_refuses_is_refused_by_a_named_constraint(
    conn: psycopg.Connection[Any], value: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="rate_in_bounds"):
        conn.execute(f"INSERT INTO notifyworker.settings (name, value) VALUES ('rate', {value})")


@pytest.mark.parametrize("value", [0, MIN_RATE, 50, MAX_RATE])
def test_every_rate_the_rule_accepts_is_stored(database_url: str, value: float) -> None:
    db.run_once(database_url, admin.set_rate, value)
    assert db.run_once(database_url, admin.get_rate) == value


@pytest.mark.parametrize(("value", "kept"), [("'NaN'", None), ("1e-320", None), ("20", 20.0)])
def test_rate_bounds_migration_copes_with_a_row_already_there(
    database_url: str, conn: psycopg.Connection[Any], value: str, kept: float | None
) -> None:
    # Back to the schema before the rate_bounds migration, holding a row its old CHECK let through.
    conn.execute(
        "ALTER TABLE notifyworker.settings DROP CONSTRAINT rate_in_bounds,"
        " ADD CONSTRAINT rate_not_negative CHECK (name <> 'rate' OR value >= 0)"
    )
    conn.execute("DELETE FROM notifyworker.migrations WHERE name = 'rate_bounds'")
    conn.execute(f"INSERT INTO notifyworker.settings (name, value) VALUES ('rate', {value})")
    assert db.run_once(database_url, schema.migrate) == [
        f"{m.version:04d}_{m.name}" for m in sqlfiles.migrations() if m.name == "rate_bounds"
    ]
    row = conn.execute("SELECT value FROM notifyworker.settings WHERE name = 'rate'").fetchone()
    assert (None if row is None else row[0]) == kept
    with pytest.raises(psycopg.errors.CheckViolation, match="rate_in_bounds"):
        conn.execute("INSERT INTO notifyworker.settings (name, value) VALUES ('rate', 'NaN')")


@pytest.mark.parametrize("value", [None, 0.0, 20.0])
def test_the_queues_migration_moves_the_rate_to_the_default_queues_row(
    empty_database_url: str, value: float | None
) -> None:
    """`notifyworker rate` set before 0014 is the default queue's fleet rate after it."""
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute(sqlfiles.query("migrate_bookkeeping"))
            for migration in sqlfiles.migrations():
                if migration.version < 14:
                    conn.execute(migration.sql)
                    conn.execute(
                        sqlfiles.query("record_migration"),
                        {"version": migration.version, "name": migration.name},
                    )
        if value is not None:
            conn.execute(
                "INSERT INTO notifyworker.settings (name, value) VALUES ('rate', %s)", (value,)
            )
        assert db.run_once(empty_database_url, schema.migrate) == ["0014_queues"]
        assert db.run_once(empty_database_url, admin.get_rate) == value
        assert scalar(conn, "SELECT count(*) FROM notifyworker.settings") == 0
        queues = conn.execute("SELECT name, rate, paused FROM notifyworker.queues").fetchall()
        assert queues == ([] if value is None else [("default", value, False)])


def test_the_retry_rule_has_one_python_twin(conn: psycopg.Connection[Any]) -> None:
    """models.will_retry (the log line) says what notifyworker.will_retry_v1 decides."""
    for status in FINAL_STATUSES:
        for retryable in (False, True):
            for attempts, max_attempts in ((0, 1), (1, 1), (1, 2), (2, 2), (3, 2)):
                decided = scalar(
                    conn,
                    "SELECT notifyworker.will_retry_v1(%s, %s, %s, %s)",
                    status,
                    retryable,
                    attempts,
                    max_attempts,
                )
                outcome = Outcome(status, retryable=retryable)
                assert will_retry(outcome, attempts, max_attempts) is decided, outcome
