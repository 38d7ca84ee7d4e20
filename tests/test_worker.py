"""The worker end to end against a real PostgreSQL: pickup, sweeping, bad input, shutdown."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg

from notifyworker.models import FINAL_STATUSES
from tests.helpers import Calls, eventually, fast_settings, running_worker, scalar

INSERT = "INSERT INTO notifyworker.jobs (task, payload) VALUES (%s, %s::jsonb) RETURNING id"


def insert(conn: psycopg.Connection[Any], task: str, payload: str = "{}") -> int:
    job_id: int = scalar(conn, INSERT, task, payload)
    return job_id


def status(conn: psycopg.Connection[Any], job_id: int) -> str:
    value: str = scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job_id)
    return value


def listener_backend(conn: psycopg.Connection[Any]) -> int:
    """The backend of the worker's listener, by the name its connection gives."""
    pid: int = scalar(
        conn,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'notifyworker-listener'",
    )
    return pid


def final(conn: psycopg.Connection[Any], job_id: int) -> bool:
    return status(conn, job_id) in FINAL_STATUSES


async def finished(conn: psycopg.Connection[Any], job_id: int, within: float = 10.0) -> None:
    """Until the job reaches a final status."""
    await eventually(lambda: final(conn, job_id), within=within)


async def test_plain_insert_is_picked_up_through_notify(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    # Polling every ten minutes: only a notification can bring the second job in time.
    async with running_worker(fast_settings(database_url, poll_interval=600), calls.registry):
        first = insert(conn, "record", '{"n": 1}')
        await finished(conn, first)
        with anyio.fail_after(5):
            second = insert(conn, "record", '{"n": 2}')
            await finished(conn, second)
    assert calls.started == [1, 2]
    row = conn.execute(
        "SELECT status, attempts, result, queued_at >= created_at, started_at >= queued_at,"
        " finished_at >= started_at FROM notifyworker.jobs WHERE id = %s",
        (second,),
    ).fetchone()
    assert row == ("done", 1, {"n": 2}, True, True, True)


async def test_missed_notification_is_caught_by_the_poll(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url, poll_interval=0.3), calls.registry):
        # Triggers do not fire for a replica session: the job's NOTIFY is never sent.
        conn.execute("SET session_replication_role = replica")
        job = insert(conn, "record", '{"n": 7}')
        conn.execute("SET session_replication_role = origin")
        await finished(conn, job, within=0.3 * 3)
    assert calls.started == [7]


async def test_job_inserted_while_the_listener_is_down_is_done_once_it_is_back(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url, poll_interval=600), calls.registry):
        # A first job, so the worker's start-up claim is behind us.
        first = insert(conn, "record", '{"n": 1}')
        await finished(conn, first)
        listener_pid = listener_backend(conn)
        # The listener's backend dies, and a job comes in whose NOTIFY nobody hears.
        assert scalar(conn, "SELECT pg_terminate_backend(%s)", listener_pid)
        conn.execute("SET session_replication_role = replica")
        job = insert(conn, "record", '{"n": 3}')
        conn.execute("SET session_replication_role = origin")
        # With polling at ten minutes, only the claim after re-LISTEN can run it.
        await finished(conn, job)
        new_pid = listener_backend(conn)
    assert status(conn, job) == "done"
    assert new_pid != listener_pid
    assert calls.started == [1, 3]


async def test_stuck_job_is_cancelled_by_the_sweeper_and_in_the_worker(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, timeout)"
            " VALUES ('hang', '{\"n\": 5}', '300 milliseconds') RETURNING id",
        )
        await finished(conn, job)
        # The handler's task itself was cancelled, not only its row.
        await eventually(lambda: calls.cancelled == [5], within=2)
    row = conn.execute(
        "SELECT status, cancelled_at IS NOT NULL, finished_at IS NOT NULL, error,"
        " cancelled_at - started_at FROM notifyworker.jobs WHERE id = %s",
        (job,),
    ).fetchone()
    assert row is not None
    assert row[:3] == ("cancelled", True, True)
    assert "timed out (found by the sweeper)" in row[3]
    assert "attempt 1 of 1" in row[3]
    assert row[4].total_seconds() >= 0.3


async def test_unknown_task_and_invalid_payload_fail_and_the_worker_goes_on(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        unknown = insert(conn, "no_such_task")
        invalid = insert(conn, "record", '{"n": "not a number"}')
        broken = insert(conn, "boom")
        unstorable = insert(conn, "nul")
        fine = insert(conn, "record", '{"n": 9}')
        for job in (unknown, invalid, broken, unstorable, fine):
            await finished(conn, job)
    rows = dict(
        conn.execute("SELECT id, (status, error) FROM notifyworker.jobs ORDER BY id").fetchall()
    )
    assert rows[unknown][0] == "failed"
    assert "unknown task 'no_such_task'" in rows[unknown][1]
    assert rows[invalid][0] == "failed"
    assert "invalid payload for task 'record'" in rows[invalid][1]
    assert "n:" in rows[invalid][1]
    assert rows[broken] == ("failed", "RuntimeError: the handler broke")
    assert rows[unstorable][0] == "failed"
    assert "could not record the outcome" in rows[unstorable][1]
    assert "unsupported Unicode escape sequence" in rows[unstorable][1]
    assert rows[fine] == ("done", None)
    assert calls.started == [9]


async def test_stop_gives_running_jobs_their_grace_and_hands_back_unstarted_ones(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    # One start per second: the first job starts, the other three wait for their slot.
    settings = fast_settings(database_url, rate=1, concurrency=4, shutdown_grace=5)
    async with running_worker(settings, calls.registry) as worker:
        jobs = [insert(conn, "record", f'{{"n": {n}, "seconds": 0.3}}') for n in range(4)]
        with anyio.fail_after(5):
            await calls.ran.wait()
        await eventually(
            lambda: (
                scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'queued'") == 3
            )
        )
        worker.stop()
    statuses = [status(conn, job) for job in jobs]
    assert statuses == ["done", "new", "new", "new"]
    assert calls.started == [0]
    leftover = scalar(
        conn,
        "SELECT count(*) FROM notifyworker.jobs WHERE worker_id IS NOT NULL AND status = 'new'",
    )
    assert leftover == 0


async def test_jobs_running_past_the_grace_are_cancelled_at_shutdown(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    settings = fast_settings(database_url, shutdown_grace=0.2)
    async with running_worker(settings, calls.registry):
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, timeout)"
            " VALUES ('hang', '{\"n\": 1}', '1 hour') RETURNING id",
        )
        with anyio.fail_after(5):
            await calls.ran.wait()
    assert calls.cancelled == [1]
    row = conn.execute(
        "SELECT status, error, cancelled_at IS NOT NULL FROM notifyworker.jobs WHERE id = %s",
        (job,),
    ).fetchone()
    assert row is not None
    assert row[0] == "cancelled"
    assert "grace" in row[1]
    assert row[2] is True
    assert scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 0


async def test_dead_worker_jobs_are_rescued_and_a_live_worker_is_left_alone(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # A worker that stopped heart-beating a minute ago, holding one queued and one running job.
    conn.execute(
        "INSERT INTO notifyworker.workers (id, host, pid, heartbeat_at)"
        " VALUES ('ghost', 'nowhere', 1, now() - interval '1 minute')"
    )
    queued = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, payload, status, worker_id, queued_at)"
        " VALUES ('record', '{\"n\": 1}', 'queued', 'ghost', now()) RETURNING id",
    )
    running = scalar(
        conn,
        "INSERT INTO notifyworker.jobs"
        " (task, payload, status, worker_id, started_at, attempts, timeout)"
        " VALUES ('record', '{\"n\": 2}', 'running', 'ghost', now(), 1, '1 hour') RETURNING id",
    )
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        slow = insert(conn, "record", '{"n": 3, "seconds": 1.0}')
        await eventually(lambda: final(conn, queued) and final(conn, running) and final(conn, slow))
    rows = dict(conn.execute("SELECT id, (status, error) FROM notifyworker.jobs").fetchall())
    assert rows[queued] == ("done", None)  # never started on the ghost: requeued, then run here
    assert rows[running][0] == "cancelled"
    assert "ghost stopped heart-beating" in rows[running][1]
    assert rows[slow] == ("done", None)  # a slow job on a live worker is never rescued
    assert sorted(calls.started) == [1, 3]
    assert scalar(conn, "SELECT count(*) FROM notifyworker.workers WHERE id = 'ghost'") == 0


async def test_worker_recovers_when_all_its_backends_are_terminated(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url, poll_interval=600), calls.registry):
        first = insert(conn, "record", '{"n": 1}')
        await finished(conn, first)
        killed = scalar(
            conn,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        # Listener, claim connection and pool all come back; the next job still runs.
        second = insert(conn, "record", '{"n": 2}')
        await finished(conn, second)
    assert killed >= 3
    assert calls.started == [1, 2]
    assert status(conn, second) == "done"
