"""Least privilege: what notifyworker_app and notifyworker_worker may, and may not, do."""

from __future__ import annotations

import re
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg.types.json import Jsonb

from notifyworker import sqlfiles
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
    "dead_after": "15 seconds",
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
    "timeout": 5.0,
    "statuses": ["done", "failed"],
    "older_than": [60.0, 3600.0],
    "pause": 1.0,
}
# Who, besides the schema's owner, may send each statement of admin.sql, by design.
ADMIN_SENDERS: dict[str, set[str]] = {
    "migrate_lock": {"worker", "app"},  # an advisory lock needs no privilege
    "migrate_bookkeeping": set(),
    "record_migration": set(),
    "enqueue": {"app"},
    "enqueue_with_timeout": {"app"},
    "cancel_job": {"app"},
    "set_rate": set(),
    "reset_rate": set(),
    "get_rate": {"worker"},  # workers read the rate with every heartbeat
    "latest_jobs": {"worker", "app"},  # both may read the jobs
    "summary_since": {"worker", "app"},
    "last_job_id": {"worker", "app"},
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


def test_the_app_role_inserts_reads_and_cancels_and_nothing_else(
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
        for statement in (
            "UPDATE notifyworker.jobs SET status = 'done'",
            "DELETE FROM notifyworker.jobs",
            "INSERT INTO notifyworker.jobs (task, status) VALUES ('sleep', 'done')",
            "INSERT INTO notifyworker.jobs (task, worker_id) VALUES ('sleep', 'me')",
            "SELECT * FROM notifyworker.workers",
            "INSERT INTO notifyworker.settings (name, value) VALUES ('rate', 1)",
            "CREATE TABLE notifyworker.mine (id int)",
            "SELECT notifyworker.retry_delay(1, 1, 1)",
            "SELECT * FROM notifyworker.delete_finished_v1('{1}')",
            "SELECT FROM notifyworker.pruner FOR UPDATE",
        ):
            assert refused(app, statement), statement


def test_the_worker_role_runs_jobs_and_cannot_do_more(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as worker:
        for statement in (
            "INSERT INTO notifyworker.jobs (task) VALUES ('sleep')",
            "DELETE FROM notifyworker.jobs",
            "UPDATE notifyworker.jobs SET task = 'other', payload = '{}'",
            "UPDATE notifyworker.jobs SET max_attempts = 100",
            "INSERT INTO notifyworker.settings (name, value) VALUES ('rate', 1)",
            "DROP TABLE notifyworker.jobs",
            "SELECT notifyworker.cancel(1)",
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


def test_the_worker_role_may_send_every_statement_of_the_worker_and_the_sweeper(
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
    files = sqlfiles.query_files()
    statements = {**files["service.sql"], **files["sweeper.sql"]}
    failed = []
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as worker:
        for name, statement in statements.items():
            try:
                sent(worker, statement, {**SAMPLES, **marks})
            except psycopg.Error as exc:
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failed, "the worker role cannot send:\n" + "\n".join(failed)


@pytest.mark.parametrize("role", ["worker", "app"])
def test_the_operators_statements_are_refused_to_roles_not_meant_to_send_them(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str], role: str
) -> None:
    statements = sqlfiles.query_files()["admin.sql"]
    assert set(statements) == set(ADMIN_SENDERS), "classify every statement of admin.sql"
    grant(conn, f"notifyworker_{role}", login_role[0])
    wrong = []
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as client:
        for name, statement in statements.items():
            allowed = role in ADMIN_SENDERS[name]
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
