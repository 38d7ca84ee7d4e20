"""Retries, cancellation from SQL, dead jobs and connection faults, in one real worker."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel

from notifyworker.errors import AccessDenied, ConnectionLost
from notifyworker.service import Worker
from notifyworker.tasks import Registry
from tests.helpers import Calls, Numbered, eventually, fast_settings, running_worker, scalar

# poll_interval stays 600 s (fast_settings): a retry is claimed when it falls due, not by a poll.
RETRYING = {"retry_backoff": 0.05, "retry_backoff_max": 0.2}


def row(conn: psycopg.Connection[Any], job: int, columns: str) -> tuple[Any, ...]:
    found = conn.execute(
        f"SELECT {columns} FROM notifyworker.jobs WHERE id = %s".encode(), (job,)
    ).fetchone()
    assert found is not None
    return tuple(found)


def is_final(conn: psycopg.Connection[Any], job: int) -> bool:
    return row(conn, job, "status")[0] in ("done", "failed", "cancelled")


class Flaky:
    """A task that fails its first `failures` runs of each n, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs: dict[int, int] = {}
        self.registry = Registry()
        self.registry.add("flaky", self.run)

    async def run(self, payload: Numbered) -> None:
        self.runs[payload.n] = self.runs.get(payload.n, 0) + 1
        if self.runs[payload.n] <= self.failures:
            raise RuntimeError(f"failure {self.runs[payload.n]}")


async def test_a_failing_handler_is_retried_until_it_succeeds_or_runs_out(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    flaky = Flaky(failures=2)
    async with running_worker(fast_settings(database_url, **RETRYING), flaky.registry):
        recovers = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, max_attempts)"
            " VALUES ('flaky', '{\"n\": 1}', 3) RETURNING id",
        )
        gives_up = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, max_attempts)"
            " VALUES ('flaky', '{\"n\": 2}', 2) RETURNING id",
        )
        await eventually(lambda: is_final(conn, recovers) and is_final(conn, gives_up))
    assert row(conn, recovers, "status, attempts, error") == ("done", 3, None)
    assert row(conn, gives_up, "status, attempts, error") == (
        "failed", 2, "RuntimeError: failure 2"
    )  # fmt: skip
    assert flaky.runs == {1: 3, 2: 2}


async def test_default_is_one_attempt(database_url: str, conn: psycopg.Connection[Any]) -> None:
    flaky = Flaky(failures=1)
    async with running_worker(fast_settings(database_url, **RETRYING), flaky.registry):
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload) VALUES ('flaky', '{\"n\": 1}')"
            " RETURNING id",
        )
        await eventually(lambda: is_final(conn, job))
    assert row(conn, job, "status, attempts") == ("failed", 1)
    assert flaky.runs == {1: 1}


async def test_cancel_from_sql_stops_a_running_job_and_a_waiting_one_never_starts(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        later = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, run_at)"
            " VALUES ('record', '{\"n\": 1}', now() + interval '1 hour') RETURNING id",
        )
        assert scalar(conn, "SELECT notifyworker.cancel(%s)", later) == "cancelled"
        running = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, timeout)"
            " VALUES ('hang', '{\"n\": 2}', '1 hour') RETURNING id",
        )
        with anyio.fail_after(5):
            await calls.ran.wait()
        assert scalar(conn, "SELECT notifyworker.cancel(%s)", running) == "cancelled"
        # The handler itself is cancelled, through NOTIFY and its cancel scope.
        await eventually(lambda: calls.cancelled == [2], within=5)
    assert calls.started == [2]
    # The handler's start mark may not have reached the table when the cancel came.
    for job, was in ((later, ("new",)), (running, ("queued", "running"))):
        status, cancelled_at, finished_at, error = row(
            conn, job, "status, cancelled_at IS NOT NULL, finished_at IS NOT NULL, error"
        )
        assert (status, cancelled_at, finished_at) == ("cancelled", True, True)
        assert error in {f"cancelled with notifyworker.cancel() while {w}" for w in was}
    # Finished and unknown jobs: nothing changes.
    assert scalar(conn, "SELECT notifyworker.cancel(%s)", running) == "cancelled"
    assert scalar(conn, "SELECT notifyworker.cancel(-1)") is None


async def test_cancel_reaches_a_claimed_job_waiting_for_its_start_slot(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    # One start per 10 s: the first job starts, the second waits in the limiter.
    async with running_worker(fast_settings(database_url, rate=0.1), calls.registry):
        first = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload) VALUES ('hang', '{\"n\": 1}')"
            " RETURNING id",
        )
        with anyio.fail_after(5):
            await calls.ran.wait()
        second = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload) VALUES ('record', '{\"n\": 2}')"
            " RETURNING id",
        )
        await eventually(lambda: row(conn, second, "status")[0] == "queued")
        assert scalar(conn, "SELECT notifyworker.cancel(%s)", second) == "cancelled"
        assert scalar(conn, "SELECT notifyworker.cancel(%s)", first) == "cancelled"
        await eventually(lambda: calls.cancelled == [1])
    assert calls.started == [1]
    assert row(conn, second, "status, started_at, attempts") == ("cancelled", None, 0)


async def test_an_overdue_job_is_retried_then_cancelled_counting_each_attempt(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url, **RETRYING), calls.registry):
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, timeout, max_attempts)"
            " VALUES ('hang', '{\"n\": 7}', '200 milliseconds', 2) RETURNING id",
        )
        await eventually(lambda: is_final(conn, job))
        await eventually(lambda: calls.cancelled == [7, 7])
    status, attempts, error = row(conn, job, "status, attempts, error")
    assert (status, attempts) == ("cancelled", 2)
    assert "timed out" in error
    assert "attempt 2 of 2" in error
    assert calls.started == [7, 7]


async def test_a_dead_workers_jobs_are_retried_or_cancelled_by_their_policy(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO notifyworker.workers (id, host, pid, heartbeat_at)"
        " VALUES ('ghost', 'nowhere', 1, now() - interval '1 minute')"
    )
    retried = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, payload, status, worker_id, queued_at, started_at,"
        " attempts, max_attempts) VALUES ('record', '{\"n\": 1}', 'running', 'ghost', now(),"
        " now(), 1, 2) RETURNING id",
    )
    poison = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, payload, status, worker_id, queued_at, lost_claims)"
        " VALUES ('record', '{\"n\": 2}', 'queued', 'ghost', now(), 4) RETURNING id",
    )
    calls = Calls()
    async with running_worker(fast_settings(database_url, **RETRYING), calls.registry):
        await eventually(lambda: is_final(conn, retried) and is_final(conn, poison))
    assert row(conn, retried, "status, attempts") == ("done", 2)
    status, lost, error = row(conn, poison, "status, lost_claims, error")
    assert (status, lost) == ("cancelled", 5)
    assert "5 workers died holding this job before it started" in error
    assert calls.started == [1]


async def test_a_slow_job_on_a_live_worker_is_never_rescued(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    # The job runs three times as long as a silent worker is given to live.
    settings = fast_settings(database_url, heartbeat_interval=0.1, dead_worker_after=0.5)
    async with running_worker(settings, calls.registry):
        job = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload, max_attempts)"
            " VALUES ('record', '{\"n\": 1, \"seconds\": 1.5}', 3) RETURNING id",
        )
        await eventually(lambda: is_final(conn, job))
    assert row(conn, job, "status, attempts, error") == ("done", 1, None)
    assert calls.started == [1]


class Blob(BaseModel):
    text: str


async def test_an_oversized_payload_fails_without_running(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ran: list[int] = []
    registry = Registry()

    async def blob(payload: Blob) -> None:
        ran.append(len(payload.text))

    registry.add("blob", blob)
    async with running_worker(fast_settings(database_url, max_payload_bytes=100), registry):
        big = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload)"
            " VALUES ('blob', jsonb_build_object('text', repeat('x', 200))) RETURNING id",
        )
        small = scalar(
            conn,
            "INSERT INTO notifyworker.jobs (task, payload)"
            " VALUES ('blob', '{\"text\": \"ok\"}') RETURNING id",
        )
        await eventually(lambda: is_final(conn, big) and is_final(conn, small))
    status, attempts, error = row(conn, big, "status, attempts, error")
    assert (status, attempts) == ("failed", 0)
    assert "over the limit of 100" in error
    assert row(conn, small, "status")[0] == "done"
    assert ran == [2]


def signal_backend(pid: int, signum: signal.Signals) -> bool:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def test_a_half_open_listener_is_noticed_and_replaced(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    settings = fast_settings(database_url, listener_check_interval=0.2)

    def listeners() -> list[int]:
        return [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'notifyworker-listener' ORDER BY backend_start"
            ).fetchall()
        ]

    async with running_worker(settings, calls.registry):
        (stuck,) = listeners()
        # A stopped backend keeps its TCP connection open and answers nothing:
        # from the worker's side, exactly a peer that vanished without a FIN.
        if not signal_backend(stuck, signal.SIGSTOP):
            pytest.skip("the server's backends are not this machine's processes")
        try:
            await eventually(lambda: len(listeners()) == 2, within=10)
            job = scalar(
                conn,
                "INSERT INTO notifyworker.jobs (task, payload) VALUES ('record', '{\"n\": 1}')"
                " RETURNING id",
            )
            # poll_interval is 600 s: only the new listener's NOTIFY can bring it.
            await eventually(lambda: is_final(conn, job), within=5)
        finally:
            signal_backend(stuck, signal.SIGCONT)
    assert calls.started == [1]


async def test_an_unreachable_database_is_waited_for_with_a_line_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="notifyworker")
    settings = fast_settings("postgresql://postgres:s3cret@127.0.0.1:1/none", startup_timeout=1.0)
    with pytest.raises(ExceptionGroup) as raised:
        await Worker(settings, Registry()).run()
    assert raised.group_contains(ConnectionLost, match="gave up after 1s", depth=None)
    attempts = [r.getMessage() for r in caplog.records if "(attempt" in r.getMessage()]
    assert len(attempts) >= 2
    assert "Connection refused" in attempts[0] or "connection refused" in attempts[0].lower()
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


async def test_a_database_that_refuses_the_url_stops_the_worker_at_once(server_url: str) -> None:
    settings = fast_settings(
        make_conninfo(server_url, dbname="no_such_database"), startup_timeout=0
    )
    with anyio.fail_after(10), pytest.raises(ExceptionGroup) as raised:
        await Worker(settings, Registry()).run()
    assert raised.group_contains(AccessDenied, match="does not exist", depth=None)
