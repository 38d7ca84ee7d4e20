"""Least privilege: what notifyworker_app and notifyworker_worker may, and may not, do."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.types.json import Jsonb

from notifyworker import sqlfiles
from notifyworker.producer import Job, enqueue, enqueue_many
from tests.helpers import Calls, eventually, fast_settings, grant, running_worker, scalar, url_as

# A value of the right type for every parameter of sql/queries/: each statement is
# sent with these, as its sender would send it.
SAMPLES: dict[str, Any] = {
    "worker_id": "ghost",
    "host": "nowhere",
    "pid": 1,
    "token": "self-check",
    "reason": "test",
    "limit": 10,
    "cap": 1000,
    "max_payload_bytes": 1_048_576,
    "serve": None,
    "pace_ahead": 0.1,
    "dead_after": "15 seconds",
    "free_slots": 3,
    "retry_backoff": 0.1,
    "retry_backoff_max": 1.0,
    "lost_claims_limit": 5,
    "held": [],
    "version": 9999,
    "name": "nothing",
    "id": 1,
    "rate": 1.0,
    "after_id": 0,
    "task": "sleep",
    "payload": Jsonb({}),
    "object_id": None,
    "max_attempts": 1,
    "timeout": timedelta(seconds=5),
    "from_id": 0,
    "status": None,
    "queue": None,
    "window": 10,
    # producer.sql
    "run_at": None,
    "unique_key": "k",
    "tasks": ["sleep", "sleep"],
    "payloads": [Jsonb({}), Jsonb({"seconds": 1})],
    "object_ids": None,
    "timeouts": None,
    "max_attempts_each": [2, None],
    "run_ats": None,
    "unique_keys": ["k", None],
    "cron": "* * * * * *",
    "tz": "UTC",
    "catch_up": "one",
    "tick": datetime(2026, 1, 1, tzinfo=UTC),
    "paused": True,
    "statuses": ["done", "failed"],
    "older_than": [60.0, 3600.0],
    "pause": 1.0,
    # queues (0014)
    "changes": Jsonb({"rate": 1.0, "concurrency": None, "paused": True}),
    "priority": 5,
    "limit_key": "tenant-1",
    "queues": ["email", None],
    "priorities": [1, None],
    "limit_keys": None,
}
# Who, besides the schema's owner, may send each statement of admin.sql and
# producer.sql, by design.
SENDERS: dict[str, set[str]] = {
    "migrate_lock": {"worker", "app"},  # an advisory lock needs no privilege
    "migrate_bookkeeping": set(),
    "record_migration": set(),
    "cancel_job": {"app"},
    "retry_job": {"app"},
    # a queue's settings are the operator's to change; both may read them (0014_queues.sql)
    "set_queue": set(),
    "list_queues": {"worker", "app"},
    "set_rate": set(),
    "reset_rate": set(),
    "get_rate": {"worker", "app"},
    "latest_jobs": {"worker", "app"},  # both may read the jobs
    "find_jobs": {"worker", "app"},
    "window_start": {"worker", "app"},
    "job_story": {"worker", "app"},
    "summary_since": {"worker", "app"},
    "last_job_id": {"worker", "app"},
    # producer.sql: the application's (the worker inserts only its schedules' jobs, by plain INSERT)
    "enqueue_job": {"app"},
    "enqueue_jobs": {"app"},
    "enqueue_job_keyless": {"app"},
    "enqueue_jobs_keyless": {"app"},
    # the application may manage schedules from SQL (0010_schedules.sql), so the CLI's too
    "list_schedules": {"worker", "app"},
    "remove_schedule": {"app"},
    "pause_schedule": {"app"},
}


def dead_worker(conn: psycopg.Connection[Any], worker_id: str) -> None:
    """A worker row whose heartbeat stopped a minute ago: the sweeper's to rescue."""
    conn.execute(
        "INSERT INTO notifyworker.workers (id, host, pid, heartbeat_at)"
        " VALUES (%s, 'nowhere', 1, now() - interval '1 minute')",
        (worker_id,),
    )


def refused(conn: psycopg.Connection[Any], statement: str) -> bool:
    try:
        with conn.transaction():
            conn.execute(statement.encode())
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def test_the_app_role_inserts_reads_cancels_and_retries_and_nothing_else(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_app", login_role[0])
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as app:
        job = scalar(
            app,
            "INSERT INTO notifyworker.jobs (task, payload, max_attempts)"
            " VALUES ('sleep', '{}', 2) RETURNING id",
        )
        assert scalar(app, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "new"
        assert scalar(app, "SELECT notifyworker.cancel(%s)", job) == "cancelled"
        assert scalar(app, "SELECT notifyworker.retry(%s)", job) == "new"
        assert scalar(app, "SELECT max_attempts FROM notifyworker.jobs WHERE id = %s", job) == 2
        # Unique jobs: the key by plain INSERT, and the holder's id through the functions.
        keyed = scalar(
            app,
            "INSERT INTO notifyworker.jobs (task, unique_key) VALUES ('sleep', 'k') RETURNING id",
        )
        assert scalar(app, "SELECT notifyworker.enqueue('sleep', unique_key => 'k')") == keyed
        assert scalar(
            app, "SELECT notifyworker.enqueue_many(ARRAY['sleep'], unique_keys => ARRAY['k'])"
        ) == [keyed]
        for statement in (
            "UPDATE notifyworker.jobs SET status = 'done'",
            "DELETE FROM notifyworker.jobs",
            "INSERT INTO notifyworker.jobs (task, status) VALUES ('sleep', 'done')",
            "INSERT INTO notifyworker.jobs (task, worker_id) VALUES ('sleep', 'me')",
            "INSERT INTO notifyworker.jobs (task, attempts_before_retry) VALUES ('sleep', 99)",
            "SELECT * FROM notifyworker.workers",
            "INSERT INTO notifyworker.settings (name, value) VALUES ('rate', 1)",
            "CREATE TABLE notifyworker.mine (id int)",
            "SELECT notifyworker.retry_delay(1, 1, 1)",
            "SELECT * FROM notifyworker.delete_finished_v1('{1}')",
            "SELECT FROM notifyworker.pruner FOR UPDATE",
        ):
            assert refused(app, statement), statement


def test_the_app_role_enqueues_into_queues_and_reads_their_settings_but_cannot_change_them(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    conn.execute("INSERT INTO notifyworker.queues (name, rate, paused) VALUES ('email', 5, true)")
    grant(conn, "notifyworker_app", login_role[0])
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as app:
        plain = scalar(
            app,
            "INSERT INTO notifyworker.jobs (task, queue, priority, limit_key)"
            " VALUES ('sleep', 'email', 3, 'tenant-1') RETURNING id",
        )
        by_function = scalar(
            app,
            "SELECT notifyworker.enqueue('sleep', queue => 'email', priority => 3,"
            " limit_key => 'tenant-1')",
        )
        by_python = enqueue(app, "sleep", queue="email", priority=3, limit_key="tenant-1")
        in_bulk = enqueue_many(app, [Job("sleep", queue="email", priority=3, limit_key="tenant-1")])
        placed = app.execute(
            "SELECT DISTINCT queue, priority, limit_key FROM notifyworker.jobs WHERE id = ANY(%s)",
            ([plain, by_function, by_python, *in_bulk],),
        ).fetchall()
        assert placed == [("email", 3, "tenant-1")]
        assert scalar(app, "SELECT paused FROM notifyworker.queues WHERE name = 'email'") is True
        for statement in (
            "UPDATE notifyworker.queues SET paused = false",
            "UPDATE notifyworker.queues SET rate = 1000",
            "UPDATE notifyworker.queues SET next_start_at = now()",
            "INSERT INTO notifyworker.queues (name, concurrency) VALUES ('mine', 100)",
            "DELETE FROM notifyworker.queues",
            "SELECT * FROM notifyworker.queue_keys",
        ):
            assert refused(app, statement), statement
    assert conn.execute("SELECT rate, paused FROM notifyworker.queues").fetchall() == [(5, True)]


def test_the_app_role_manages_schedules_but_cannot_make_a_tick_fire_twice(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_app", login_role[0])
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as app:
        app.execute(
            "INSERT INTO notifyworker.schedules (name, cron, tz, task, payload, catch_up)"
            " VALUES ('nightly', '0 3 * * *', 'Europe/Paris', 'sleep', '{}', 'none')"
        )
        app.execute("UPDATE notifyworker.schedules SET paused = true, cron = '0 4 * * *'")
        assert scalar(app, "SELECT paused FROM notifyworker.schedules") is True
        for statement in (
            "UPDATE notifyworker.schedules SET last_tick = now() - interval '1 day'",
            "UPDATE notifyworker.schedules SET updated_at = now() - interval '1 day'",
            "INSERT INTO notifyworker.schedules (name, cron, task, last_tick)"
            " VALUES ('again', '* * * * *', 'sleep', now() - interval '1 day')",
            "INSERT INTO notifyworker.jobs (task, object_id, status) VALUES ('sleep', 'x', 'done')",
        ):
            assert refused(app, statement), statement
        app.execute("DELETE FROM notifyworker.schedules WHERE name = 'nightly'")
        assert scalar(app, "SELECT count(*) FROM notifyworker.schedules") == 0


def test_the_worker_role_runs_jobs_and_cannot_do_more(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as worker:
        for statement in (
            # It inserts its schedules' jobs (task, payload, object_id), nothing more.
            "INSERT INTO notifyworker.jobs (task, status) VALUES ('sleep', 'done')",
            "INSERT INTO notifyworker.jobs (task, max_attempts) VALUES ('sleep', 100)",
            "INSERT INTO notifyworker.jobs (task, run_at) VALUES ('sleep', now())",
            "DELETE FROM notifyworker.jobs",
            "DELETE FROM notifyworker.schedules",
            "UPDATE notifyworker.schedules SET paused = true",
            "INSERT INTO notifyworker.schedules (name, cron, task, last_tick)"
            " VALUES ('s', '* * * * *', 'sleep', now())",
            "UPDATE notifyworker.jobs SET task = 'other', payload = '{}'",
            "UPDATE notifyworker.jobs SET max_attempts = 100",
            "INSERT INTO notifyworker.settings (name, value) VALUES ('rate', 1)",
            "DROP TABLE notifyworker.jobs",
            "SELECT notifyworker.cancel(1)",
            "SELECT notifyworker.retry(1)",
            "UPDATE notifyworker.jobs SET retries = 1, attempts_before_retry = 1",
            "SELECT notifyworker.enqueue('sleep')",
            "SELECT notifyworker.enqueue_many(ARRAY['sleep'])",
            # It keeps a queue's start slot, and changes none of its settings.
            "UPDATE notifyworker.queues SET paused = true",
            "UPDATE notifyworker.queues SET rate = 1000, concurrency = NULL",
            "INSERT INTO notifyworker.queues (name, rate) VALUES ('mine', 1000)",
            "DELETE FROM notifyworker.queues",
        ):
            assert refused(worker, statement), statement


def test_the_worker_role_deletes_finished_jobs_only(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    jobs = {
        status: scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at, finished_at,"
            " cancelled_at) VALUES ('sleep', %s, 'w', now(), now(), now()) RETURNING id",
            status,
        )
        for status in ("queued", "running", "done", "failed", "cancelled")
    }
    waiting = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('sleep') RETURNING id")
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as worker:
        deleted = worker.execute(
            "SELECT id, status FROM notifyworker.delete_finished_v1(%s)",
            ([waiting, *jobs.values()],),
        ).fetchall()
        assert refused(worker, f"DELETE FROM notifyworker.jobs WHERE id = {waiting}")
    assert sorted(status for _, status in deleted) == ["cancelled", "done", "failed"]
    left = conn.execute("SELECT id FROM notifyworker.jobs ORDER BY id").fetchall()
    assert [row[0] for row in left] == sorted([jobs["queued"], jobs["running"], waiting])


async def test_a_worker_does_all_its_work_as_the_worker_role(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    dead_worker(conn, "ghost")
    ghosts = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, payload, status, worker_id, queued_at)"
        " VALUES ('record', '{\"n\": 1}', 'queued', 'ghost', now()) RETURNING id",
    )
    calls = Calls()
    settings = fast_settings(url_as(database_url, login_role), retry_backoff=0.05)
    async with running_worker(settings, calls.registry):
        jobs = [
            scalar(
                conn,
                "INSERT INTO notifyworker.jobs (task, payload, timeout, max_attempts)"
                " VALUES (%s, %s, '200 milliseconds', 2) RETURNING id",
                task,
                payload,
            )
            for task, payload in (("record", '{"n": 2}'), ("boom", "{}"), ("hang", '{"n": 3}'))
        ]

        def settled() -> bool:
            statuses = conn.execute(
                "SELECT status FROM notifyworker.jobs WHERE id = ANY(%s)", ([ghosts, *jobs],)
            ).fetchall()
            return all(s in ("done", "failed", "cancelled") for (s,) in statuses)

        await eventually(settled, within=15)
    rows = {
        job: (status, attempts)
        for job, status, attempts in conn.execute(
            "SELECT id, status, attempts FROM notifyworker.jobs"
        ).fetchall()
    }
    assert rows[ghosts] == ("done", 1)  # rescued by this worker's sweeper, then run here
    assert [rows[job] for job in jobs] == [("done", 1), ("failed", 2), ("cancelled", 2)]
    assert scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 0


def sent(conn: psycopg.Connection[Any], statement: LiteralString, samples: dict[str, Any]) -> None:
    """Run a named statement with sample parameters, in a transaction rolled back after."""
    params = {name: samples[name] for name in re.findall(r"%\((\w+)\)s", statement)}
    with conn.transaction(force_rollback=True):
        conn.execute(statement, params or None)


def test_the_worker_role_may_send_every_statement_of_the_worker_sweeper_and_scheduler(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    # A dead worker holding a queued job and an overdue running one, and a waiting
    # job: the statements find rows to claim, mark, kill and take back.
    dead_worker(conn, "ghost")
    conn.execute("INSERT INTO notifyworker.jobs (task) VALUES ('sleep')")
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, queued_at)"
        " VALUES ('sleep', 'queued', 'ghost', now())"
    )
    running = conn.execute(
        "INSERT INTO notifyworker.jobs"
        " (task, status, worker_id, queued_at, started_at, attempts, max_attempts, timeout)"
        " VALUES ('sleep', 'running', 'ghost', now(), now() - interval '1 minute', 1, 2, '1s')"
        " RETURNING id, queued_at, started_at"
    ).fetchone()
    assert running is not None
    job, claimed_at, started_at = running
    marks = {
        "ids": [job],
        "queued_at": [claimed_at],
        "started_at": [started_at],
        "statuses": ["failed"],
        "retryable": [True],
        "finished_at": [started_at],
        "results": [None],
        "errors": ["it broke"],
    }
    # A schedule to declare again, fire a tick of and skip ticks of.
    conn.execute(
        "INSERT INTO notifyworker.schedules (name, cron, task)"
        " VALUES ('nothing', '* * * * * *', 'sleep')"
    )
    files = sqlfiles.query_files()
    statements = {**files["service.sql"], **files["sweeper.sql"], **files["scheduler.sql"]}
    failed = []
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as worker:
        for name, statement in statements.items():
            try:
                sent(worker, statement, {**SAMPLES, **marks})
            except psycopg.Error as exc:
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failed, "the worker role cannot send:\n" + "\n".join(failed)


@pytest.mark.parametrize("role", ["worker", "app"])
def test_the_operators_and_producers_statements_are_sent_by_the_roles_meant_to_alone(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str], role: str
) -> None:
    files = sqlfiles.query_files()
    statements = {**files["admin.sql"], **files["producer.sql"]}
    assert set(statements) == set(SENDERS), "classify every statement of admin.sql, producer.sql"
    grant(conn, f"notifyworker_{role}", login_role[0])
    wrong = []
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as client:
        for name, statement in statements.items():
            allowed = role in SENDERS[name]
            try:
                sent(client, statement, SAMPLES)
            except psycopg.errors.InsufficientPrivilege as exc:
                if allowed:
                    wrong.append(f"{name}: refused, but it is the {role} role's to send: {exc}")
            except psycopg.Error as exc:
                wrong.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                if not allowed:
                    wrong.append(f"{name}: runs, but only the owner may send it")
    assert not wrong, f"as notifyworker_{role}:\n" + "\n".join(wrong)
