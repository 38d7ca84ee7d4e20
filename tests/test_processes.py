"""Real worker processes, as deployed: exactly-once across replicas, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers import eventually, scalar

ROOT = Path(__file__).resolve().parent.parent


def spawn(url: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "NOTIFYWORKER_LOG_LEVEL": "WARNING",
        "NOTIFYWORKER_HEALTH_PORT": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "notifyworker", "run", "--tasks", "tests.ledger_tasks", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


async def test_two_worker_processes_never_run_the_same_job(
    database_url: str, ledger: psycopg.Connection[Any]
) -> None:
    workers = [spawn(database_url, "--rate", "0", "--concurrency", "10") for _ in range(2)]
    try:
        await eventually(
            lambda: scalar(ledger, "SELECT count(*) FROM notifyworker.workers") == 2, within=30
        )
        ledger.execute(
            "INSERT INTO notifyworker.jobs (task, payload)"
            " SELECT 'ledger', jsonb_build_object('n', n) FROM generate_series(1, 2000) AS n"
        )
        await eventually(
            lambda: (
                scalar(ledger, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'done'")
                == 2000
            ),
            within=90,
        )
    finally:
        results = [stop(worker) for worker in workers]
    assert [code for code, _ in results] == [0, 0], [err for _, err in results]
    runs, distinct, pids = ledger.execute(
        "SELECT count(*), count(DISTINCT n), count(DISTINCT pid) FROM ledger"
    ).fetchone() or (0, 0, 0)
    assert (runs, distinct) == (2000, 2000)
    assert pids == 2  # both replicas took part
    assert scalar(ledger, "SELECT count(*) FROM notifyworker.jobs WHERE attempts <> 1") == 0


async def test_sigterm_lets_running_jobs_finish_and_returns_the_rest(
    database_url: str, ledger: psycopg.Connection[Any]
) -> None:
    # One start per second: one job runs (for 1 s), the others wait for their slot.
    worker = spawn(database_url, "--rate", "1", "--concurrency", "5", "--shutdown-grace", "10")
    try:
        ledger.execute(
            "INSERT INTO notifyworker.jobs (task, payload)"
            " SELECT 'ledger', jsonb_build_object('n', n, 'seconds', 1.0)"
            " FROM generate_series(1, 5) AS n"
        )
        await eventually(lambda: scalar(ledger, "SELECT count(*) FROM ledger") == 1, within=30)
    finally:
        code, err = stop(worker)
    assert code == 0, err
    statuses = dict(
        ledger.execute("SELECT status, count(*) FROM notifyworker.jobs GROUP BY status").fetchall()
    )
    assert statuses == {"done": 1, "new": 4}
    assert scalar(ledger, "SELECT count(*) FROM notifyworker.workers") == 0
    assert "Traceback" not in err
