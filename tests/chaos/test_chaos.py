"""Faults injected mid-drain into two real worker processes; the ledger proves the outcome.

Every scenario ends with the same proof: all jobs done, none lost, and every
handler run beyond the first accounted for in the table. The line each one
prints is what docs/guarantees.md quotes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import anyio
import psycopg
import pytest

from tests.chaos.conftest import PrivateServer
from tests.chaos.harness import (
    JOBS,
    Audit,
    Fleet,
    audit,
    db_now,
    prepare,
    terminate,
    until_all_final,
    until_ran,
    until_workers,
)
from tests.helpers import scalar

Report = Callable[[str, Audit], None]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    def show(scenario: str, result: Audit) -> None:
        with capsys.disabled():
            print("\n" + result.line(scenario))

    return show


@pytest.fixture
def fleet(database_url: str, anyio_backend_name: str) -> Iterator[Fleet]:
    workers = Fleet(database_url, backend=anyio_backend_name)
    yield workers
    workers.stop_all()


def prove(
    conn: psycopg.Connection[Any], fault_at: datetime, scenario: str, report: Report
) -> Audit:
    result = audit(conn, fault_at)
    report(scenario, result)
    assert result.jobs == JOBS
    assert result.unfinished == 0
    assert result.never_ran == 0  # nothing lost
    assert result.done == JOBS  # nothing given up on: retries covered every fault
    assert result.unexplained == 0  # every second run is a retry or a rescue
    return result


async def drain_with_fault(
    conn: psycopg.Connection[Any], fleet: Fleet, fault: Callable[[], None]
) -> datetime:
    """Drain JOBS jobs through two workers with `fault` a third of the way; when it struck."""
    prepare(conn)
    fleet.start(2)
    await until_workers(conn, 2)
    await until_ran(conn, JOBS // 3)
    fault_at = db_now(conn)
    fault()
    await until_all_final(conn)
    return fault_at


async def test_sigkill_one_worker(
    conn: psycopg.Connection[Any], fleet: Fleet, report: Report
) -> None:
    def kill() -> None:
        fleet.workers[0].process.send_signal(signal.SIGKILL)

    fault_at = await drain_with_fault(conn, fleet, kill)
    assert fleet.stop_all() == [-signal.SIGKILL, 0]
    prove(conn, fault_at, "SIGKILL one worker", report)
    assert scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 0  # the dead one swept


async def test_sigterm_one_worker_is_graceful(
    conn: psycopg.Connection[Any], fleet: Fleet, report: Report
) -> None:
    def term() -> None:
        fleet.workers[0].process.send_signal(signal.SIGTERM)

    fault_at = await drain_with_fault(conn, fleet, term)
    assert fleet.workers[0].process.wait(30) == 0
    assert fleet.stop_all() == [0, 0]
    result = prove(conn, fault_at, "SIGTERM one worker", report)
    assert result.doubles == 0


async def test_terminate_the_listener_backend(
    conn: psycopg.Connection[Any], fleet: Fleet, report: Report
) -> None:
    def kill_listeners() -> None:
        assert terminate(conn, "notifyworker-listener") == 2

    fault_at = await drain_with_fault(conn, fleet, kill_listeners)
    assert fleet.stop_all() == [0, 0]
    prove(conn, fault_at, "terminate the listener backends", report)


async def test_terminate_every_backend_of_the_workers(
    conn: psycopg.Connection[Any], fleet: Fleet, report: Report
) -> None:
    killed: list[int] = []
    fault_at = await drain_with_fault(conn, fleet, lambda: killed.append(terminate(conn, "%")))
    assert killed[0] >= 2 * 8  # pool, listener and claim connections of both workers
    assert fleet.stop_all() == [0, 0]
    prove(conn, fault_at, "terminate every backend", report)


async def test_a_long_transaction_holds_a_snapshot_while_jobs_flow(
    conn: psycopg.Connection[Any], database_url: str, fleet: Fleet, report: Report
) -> None:
    with psycopg.connect(database_url) as holder:
        # REPEATABLE READ keeps its first snapshot: dead row versions the
        # claims leave behind cannot be cleaned up until it ends.
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM notifyworker.jobs")
        fault_at = await drain_with_fault(conn, fleet, lambda: None)
        still_open = holder.execute("SELECT count(*) FROM notifyworker.jobs").fetchone()
        assert still_open == (0,)  # the snapshot predates every job: it was held throughout
        holder.rollback()
    assert fleet.stop_all() == [0, 0]
    prove(conn, fault_at, "a long transaction holding a snapshot", report)


async def test_restart_postgres(
    private_server: PrivateServer, report: Report, anyio_backend_name: str
) -> None:
    fleet = Fleet(private_server.url, backend=anyio_backend_name)
    with psycopg.connect(private_server.url, autocommit=True) as conn:
        # One server for the module: the scenario starts from an empty table each time.
        conn.execute("TRUNCATE notifyworker.jobs, notifyworker.workers")
        conn.execute("DROP TABLE IF EXISTS ledger")
        prepare(conn)
        try:
            fleet.start(2)
            await until_workers(conn, 2)
            await until_ran(conn, JOBS // 3)
        except BaseException:
            fleet.stop_all()
            raise
    try:
        with psycopg.connect(private_server.url) as conn:
            fault_at = db_now(conn)
        private_server.stop()
        await anyio.sleep(2.0)  # the outage: the workers must ride it out, not exit
        assert [w.process.poll() for w in fleet.workers] == [None, None]
        private_server.start()
        with psycopg.connect(private_server.url, autocommit=True) as conn:
            await until_all_final(conn)
            codes = fleet.stop_all()
            assert codes == [0, 0], [w.stderr()[-2000:] for w in fleet.workers]
            prove(conn, fault_at, "restart PostgreSQL (2 s outage)", report)
    finally:
        fleet.stop_all()
