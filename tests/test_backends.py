"""The worker on either event loop: embedded in an app, asyncio-only handlers, a blocked loop.

Most tests run on both loops already (see conftest); these are about what
differs: who owns the loop and its signals, what a handler may await, and
what the worker says when a handler stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import anyio
import asyncpg
import psycopg
import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

from notifyworker import config, runtime
from notifyworker.config import Settings
from notifyworker.embedding import worker_running
from notifyworker.errors import ConfigError
from notifyworker.loopwatch import LoopWatch
from notifyworker.tasks import Registry
from tests.helpers import Calls, Nothing, eventually, fast_settings, running_worker, scalar

HANDLED = (signal.SIGINT, signal.SIGTERM)


def signal_handlers() -> dict[int, Any]:
    return {signum: signal.getsignal(signum) for signum in HANDLED}


async def run_one_job_embedded(settings: Settings, calls: Calls, url: str) -> int:
    """What an application does in its lifespan: start a worker, use it, leave."""
    before = signal_handlers()
    async with worker_running(settings, calls.registry):
        with psycopg.connect(url, autocommit=True) as conn:
            job = scalar(
                conn,
                "INSERT INTO notifyworker.jobs (task, payload) VALUES ('record', '{\"n\": 1}')"
                " RETURNING id",
            )
            await eventually(
                lambda: (
                    scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job)
                    == "done"
                )
            )
        assert signal_handlers() == before, "the worker touched the application's signals"
    return int(job)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_an_application_embeds_a_worker_in_its_own_loop_and_keeps_its_signals(
    database_url: str, loop: str
) -> None:
    settings = fast_settings(database_url)
    calls = Calls()
    if loop == "asyncio":
        asyncio.run(run_one_job_embedded(settings, calls, database_url))
    else:
        trio.run(run_one_job_embedded, settings, calls, database_url)
    assert calls.started == [1]
    with psycopg.connect(database_url) as conn:
        # Leaving the block signed the worker off: nothing left for a sweeper.
        assert scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 0


async def test_leaving_the_block_gives_running_jobs_their_grace(database_url: str) -> None:
    calls = Calls()
    settings = fast_settings(database_url, shutdown_grace=30.0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        async with worker_running(settings, calls.registry):
            job = scalar(
                conn,
                "INSERT INTO notifyworker.jobs (task, payload)"
                " VALUES ('record', '{\"n\": 7, \"seconds\": 0.5}') RETURNING id",
            )
            with anyio.fail_after(10):
                await calls.ran.wait()
        # The block ended while the job slept: it finished within its grace, not cancelled.
        assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "done"


class Sleep(Nothing):
    seconds: float


@pytest.mark.backends("asyncio")  # asyncpg runs on asyncio only: what the backend is for
async def test_an_asyncio_handler_awaits_asyncpg_and_is_cancelled_from_sql_mid_await(
    database_url: str,
) -> None:
    dsn = conninfo_to_dict(database_url)
    started = anyio.Event()
    registry = Registry()

    async def wait_in_asyncpg(payload: Sleep) -> None:
        conn = await asyncpg.connect(
            host=dsn.get("host"),
            port=dsn.get("port"),
            user=dsn.get("user"),
            password=dsn.get("password"),
            database=dsn.get("dbname"),
        )
        try:
            started.set()
            await conn.fetchval("SELECT pg_sleep($1::float8)", payload.seconds)
        finally:
            # A handler's clean-up after a cancel, shielded as anyio asks; asyncpg
            # has by then sent the server a cancel request for the statement.
            with anyio.CancelScope(shield=True):
                await conn.close(timeout=5)

    registry.add("wait_in_asyncpg", wait_in_asyncpg)
    with psycopg.connect(database_url, autocommit=True) as conn:
        async with running_worker(fast_settings(database_url), registry):
            job = scalar(
                conn,
                "INSERT INTO notifyworker.jobs (task, payload)"
                " VALUES ('wait_in_asyncpg', '{\"seconds\": 600}') RETURNING id",
            )
            with anyio.fail_after(10):
                await started.wait()
            await eventually(
                lambda: (
                    scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job)
                    == "running"
                )
            )
            assert scalar(conn, "SELECT notifyworker.cancel(%s)", job) == "cancelled"
            await eventually(
                lambda: (
                    scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job)
                    == "cancelled"
                )
            )
            # The await was really cancelled: the server no longer runs its statement.
            await eventually(
                lambda: (
                    scalar(
                        conn,
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE query LIKE 'SELECT pg_sleep($1%%' AND state = 'active'",
                    )
                    == 0
                )
            )


async def test_a_handler_that_blocks_the_loop_is_named_and_the_worker_goes_on(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()

    async def hog(payload: Nothing) -> str:
        time.sleep(1.6)  # noqa: ASYNC251 - the mistake: a blocking call in an async handler
        return "done at last"

    registry.add("hog", hog)
    caplog.set_level(logging.INFO, logger="notifyworker.loopwatch")
    with psycopg.connect(database_url, autocommit=True) as conn:
        async with running_worker(fast_settings(database_url), registry):
            job = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('hog') RETURNING id")
            await eventually(
                lambda: (
                    scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job)
                    == "done"
                )
            )
    blocked = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
    assert len(blocked) == 1, blocked
    assert f"job {job} (hog)" in blocked[0]
    assert "anyio.to_thread.run_sync" in blocked[0]


async def test_the_loop_watch_stays_quiet_while_the_loop_turns() -> None:
    from notifyworker.inflight import InFlight

    watch = LoopWatch(InFlight(1), blocked_after=0.3)
    with anyio.move_on_after(1.0):
        await watch.run()
    assert watch.stalls == 0


def test_an_unknown_backend_is_refused_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^invalid settings: backend: Input should be 'trio' or 'asyncio'$"
    ):
        config.load(database_url="postgresql://x@localhost/y", backend="curio")


def test_an_unknown_backend_on_the_command_line_is_one_line_and_exit_2(database_url: str) -> None:
    """And no loop option is forced on anyio (uvloop measured no faster: not used)."""
    import subprocess
    import sys

    refused = subprocess.run(
        [sys.executable, "-m", "notifyworker", "run", "--backend", "curio"],
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "notifyworker: error: invalid settings: backend: Input should be 'trio' or 'asyncio'"
    ]
    assert runtime.backend_options("asyncio") == {}
