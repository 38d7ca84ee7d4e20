"""The chaos suite's parts: a fleet of real worker processes, a ledger, an audit.

Each scenario enqueues a few thousand jobs, starts two worker processes,
injects one fault mid-drain, lets the fleet recover, and then proves from the
ledger (one row per handler run, written by the handler itself) that every
job ended, none was lost, and every second run is one the table accounts for
(a retry, a rescue, or a claim taken back from a dead worker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg

from tests.helpers import eventually, scalar

ROOT = Path(__file__).resolve().parents[2]

JOBS = 3000
# Long enough that a fault always finds jobs running, short enough to drain fast.
JOB_SECONDS = 0.01
# Settings for the fleet: quick sweeps and a short time to declare a worker
# dead, so recovery takes seconds; retries come back quickly.
FLEET_ENV = {
    "NOTIFYWORKER_RATE": "0",
    "NOTIFYWORKER_CONCURRENCY": "10",
    "NOTIFYWORKER_POLL_INTERVAL": "0.2",
    "NOTIFYWORKER_SWEEP_INTERVAL": "0.5",
    "NOTIFYWORKER_HEARTBEAT_INTERVAL": "0.5",
    "NOTIFYWORKER_DEAD_WORKER_AFTER": "3",
    "NOTIFYWORKER_RETRY_BACKOFF": "0.1",
    "NOTIFYWORKER_RETRY_BACKOFF_MAX": "1",
    "NOTIFYWORKER_LISTENER_CHECK_INTERVAL": "1",
    "NOTIFYWORKER_SHUTDOWN_GRACE": "10",
    "NOTIFYWORKER_STARTUP_TIMEOUT": "60",
    "NOTIFYWORKER_LOG_LEVEL": "WARNING",
    # Two workers on one machine: each takes a free port for its probes.
    "NOTIFYWORKER_HEALTH_PORT": "0",
}
# Each job may start this often: a rescued job runs again instead of ending cancelled.
MAX_ATTEMPTS = 5


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


class Fleet:
    """Worker processes as deployed: `notifyworker run`, one database, env settings."""

    def __init__(self, url: str, env: dict[str, str] | None = None, backend: str = "trio") -> None:
        self.url = url
        # Settings over FLEET_ENV's for every worker of this fleet (a scenario's timing),
        # and the event loop its workers run on: the chaos is survived on both.
        self.env = {"NOTIFYWORKER_BACKEND": backend, **(env or {})}
        self.workers: list[Worker] = []

    def start(self, count: int, env: dict[str, str] | None = None) -> list[Worker]:
        """Start `count` more workers (with `env` over the fleet's settings); the new ones."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")},
            **FLEET_ENV,
            **self.env,
            **(env or {}),
            "DATABASE_URL": self.url,
        }
        started: list[Worker] = []
        for _ in range(count):
            # A file, not a pipe: a chatty worker must never block on a full pipe.
            log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop_all
            process = subprocess.Popen(
                [sys.executable, "-m", "notifyworker", "run", "--tasks", "tests.ledger_tasks"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=log,
            )
            self.workers.append(Worker(process, log))
            started.append(self.workers[-1])
        return started

    def alive(self) -> set[int]:
        """The pids of the workers still running."""
        return {w.pid for w in self.workers if w.process.poll() is None}

    def stop_all(self, timeout: float = 30) -> list[int | None]:
        """SIGTERM every worker still running; their exit codes (None: killed by us)."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for worker in self.workers:
            try:
                codes.append(worker.process.wait(timeout))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                codes.append(None)
            worker.log.close()
        return codes


def prepare(
    conn: psycopg.Connection[Any],
    jobs: int = JOBS,
    *,
    seconds: float = JOB_SECONDS,
    max_attempts: int = MAX_ATTEMPTS,
    timeout: float = 30.0,
    first: int = 1,
) -> list[int]:
    """The ledger table, and `jobs` ledger jobs numbered from `first`; their ids."""
    conn.execute("CREATE TABLE IF NOT EXISTS ledger (n integer NOT NULL, pid integer NOT NULL)")
    rows = conn.execute(
        "INSERT INTO notifyworker.jobs (task, payload, max_attempts, timeout)"
        " SELECT 'ledger', jsonb_build_object('n', n, 'seconds', %s::float8), %s,"
        " make_interval(secs => %s)"
        " FROM generate_series(%s::int, %s::int - 1) AS n RETURNING id",
        (seconds, max_attempts, timeout, first, first + jobs),
    ).fetchall()
    return [row[0] for row in rows]


async def until_workers(conn: psycopg.Connection[Any], count: int) -> None:
    await eventually(
        lambda: scalar(conn, "SELECT count(*) FROM notifyworker.workers") >= count, within=60
    )


async def until_ran(conn: psycopg.Connection[Any], runs: int) -> None:
    await eventually(lambda: scalar(conn, "SELECT count(*) FROM ledger") >= runs, within=60)


async def until_all_final(conn: psycopg.Connection[Any], within: float = 120) -> None:
    await eventually(
        lambda: (
            scalar(
                conn,
                "SELECT count(*) FROM notifyworker.jobs"
                " WHERE status NOT IN ('done', 'failed', 'cancelled')",
            )
            == 0
        ),
        within=within,
    )


@dataclass(frozen=True)
class Audit:
    jobs: int
    done: int
    unfinished: int
    never_ran: int
    doubles: int  # jobs whose handler ran more than once
    unexplained: int  # ...more often than the table accounts for
    longest_pause: float  # seconds without any job finishing, fault included
    drain_seconds: float
    rescued: int  # jobs that needed a second start (retry, rescue, lost claim)
    rescued_within: float  # seconds from the fault to the last of them finishing

    def line(self, scenario: str) -> str:
        return (
            f"chaos {scenario}: {self.jobs} jobs, {self.done} done, {self.unfinished} unfinished, "
            f"{self.never_ran} never ran, {self.doubles} ran twice (all accounted for: "
            f"{self.unexplained == 0}), {self.rescued} rescued or retried, all done within "
            f"{self.rescued_within:.1f}s of the fault, longest pause {self.longest_pause:.2f}s, "
            f"drained in {self.drain_seconds:.1f}s"
        )


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    """The server's clock, which every timestamp in the jobs table uses."""
    now: datetime = scalar(conn, "SELECT clock_timestamp()")
    return now


def audit(conn: psycopg.Connection[Any], fault_at: datetime) -> Audit:
    """Every job's fate, proved from the ledger and the jobs table."""
    row = conn.execute(
        """
        WITH runs AS (SELECT n, count(*) AS runs FROM ledger GROUP BY n)
        SELECT count(*),
               count(*) FILTER (WHERE j.status = 'done'),
               count(*) FILTER (WHERE j.status NOT IN ('done', 'failed', 'cancelled')),
               count(*) FILTER (WHERE r.runs IS NULL),
               count(*) FILTER (WHERE r.runs > 1),
               -- Each run either counted an attempt or was taken back from a
               -- dead worker before its start was written (lost_claims).
               count(*) FILTER (WHERE r.runs > j.attempts + j.lost_claims)
        FROM notifyworker.jobs AS j
        LEFT JOIN runs AS r ON r.n = (j.payload ->> 'n')::integer
        """
    ).fetchone()
    assert row is not None
    pause, drain = conn.execute(
        """
        WITH ends AS (
            SELECT finished_at, finished_at - lag(finished_at) OVER (ORDER BY finished_at) AS gap
            FROM notifyworker.jobs WHERE finished_at IS NOT NULL
        )
        SELECT coalesce(extract(epoch FROM max(gap)), 0)::float8,
               coalesce(extract(epoch FROM max(finished_at) - min(finished_at)), 0)::float8
        FROM ends
        """
    ).fetchone() or (0.0, 0.0)
    rescued, within = conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM max(finished_at) - %s), 0)::float8"
        " FROM notifyworker.jobs WHERE attempts > 1 OR lost_claims > 0",
        (fault_at,),
    ).fetchone() or (0, 0.0)
    jobs, done, unfinished, never_ran, doubles, unexplained = row
    return Audit(
        jobs, done, unfinished, never_ran, doubles, unexplained, pause, drain, rescued, within
    )


def terminate(conn: psycopg.Connection[Any], application_name_like: str) -> int:
    """pg_terminate_backend for this database's connections whose name matches."""
    killed = conn.execute(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE %s"
        " AND pid <> pg_backend_pid()",
        (application_name_like,),
    ).fetchone()
    assert killed is not None
    count: int = killed[0]
    return count
