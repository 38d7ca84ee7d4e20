"""Least privilege: what notifyworker_app and notifyworker_worker may, and may not, do."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.helpers import Calls, eventually, fast_settings, grant, running_worker, scalar, url_as


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


async def test_a_worker_does_all_its_work_as_the_worker_role(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    conn.execute(
        "INSERT INTO notifyworker.workers (id, host, pid, heartbeat_at)"
        " VALUES ('ghost', 'nowhere', 1, now() - interval '1 minute')"
    )
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
