"""Claims per job with 1, 3 and 5 idle worker processes: does one job wake one claim?

    python -m benchmarks.wake [--processes 1,3,5] [--rate 20] [--seconds 15] [--root DIR]

Each size gets a fresh database on DATABASE_URL's server (else 127.0.0.1:5432),
`notifyworker run` processes (the built-in no-op `sleep` task, rate 0) that
idle until each has beaten twice, then one INSERT per transaction at `rate`
jobs/s for `seconds`. Claims are counted by PostgreSQL itself, as calls of
notifyworker.claim_v1 (track_functions = 'pl' on the bench database), so the
figure is the same whichever worker code runs: `--root` runs the workers from
another checkout (e.g. the branch before a change) for a before/after.
Pickup is the table's started_at - created_at. Idle claims/s is the polling
floor, measured before the jobs come.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.run import ROOT, as_url, local_server, log, percentiles

DATABASE = f"bench_wake_{os.getpid()}"
CLAIMS = (
    "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
    " WHERE schemaname = 'notifyworker' AND funcname = 'claim_v1'"
)
INSERT = "INSERT INTO notifyworker.jobs (task, payload) VALUES ('sleep', '{\"seconds\": 0}')"
PICKUPS = (
    "SELECT extract(epoch FROM started_at - created_at)::float8 FROM notifyworker.jobs"
    " WHERE started_at IS NOT NULL ORDER BY 1"
)
# A backend flushes its statistics at most once a second when idle: wait out that delay.
STATS_FLUSH = 1.5


@dataclass(frozen=True)
class Result:
    processes: int
    jobs: int
    claims: int
    idle_claims_per_second: float
    pickup: dict[str, float]

    @property
    def claims_per_job(self) -> float:
        return self.claims / self.jobs if self.jobs else float("nan")


def fresh_database(server: str, root: Path) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        name = sql.Identifier(DATABASE)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        # Counts calls of PL/pgSQL functions (the claim) in every new session.
        conn.execute(sql.SQL("ALTER DATABASE {} SET track_functions = 'pl'").format(name))
    dsn = as_url(server, DATABASE)
    subprocess.run(
        [sys.executable, "-m", "notifyworker", "migrate"],
        cwd=root,
        env=worker_env(dsn),
        check=True,
        capture_output=True,
    )
    return dsn


def worker_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")}
    env.update(
        DATABASE_URL=dsn,
        NOTIFYWORKER_HEALTH_PORT="off",
        NOTIFYWORKER_LOG_LEVEL="WARNING",
        NOTIFYWORKER_LOG_FORMAT="text",
    )
    return env


def claims(conn: psycopg.Connection[Any]) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(scalar(conn, CLAIMS))


def wait_for_fleet(conn: psycopg.Connection[Any], processes: int, workers: list[Any]) -> None:
    """Until every process registered and then beat twice (so each knows the others)."""
    deadline = time.monotonic() + 60
    while scalar(conn, "SELECT count(*) FROM notifyworker.workers") != processes:
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise RuntimeError("the workers did not start")
        time.sleep(0.1)
    for _ in range(2):
        since = scalar(conn, "SELECT max(heartbeat_at) FROM notifyworker.workers")
        while not scalar(conn, "SELECT min(heartbeat_at) > %s FROM notifyworker.workers", since):
            time.sleep(0.1)


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query.encode(), params or None).fetchone()
    assert row is not None
    return row[0]


def produce(conn: psycopg.Connection[Any], rate: float, seconds: float) -> int:
    """One INSERT per transaction (autocommit) on absolute deadlines."""
    total = round(rate * seconds)
    began = time.monotonic()
    for n in range(total):
        pause = began + n / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        conn.execute(INSERT)
    return total


def measure(server: str, root: Path, processes: int, rate: float, seconds: float) -> Result:
    dsn = fresh_database(server, root)
    workers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(processes):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "notifyworker", "run", "--rate", "0"],
                    cwd=root,
                    env=worker_env(dsn),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_for_fleet(conn, processes, workers)
            time.sleep(STATS_FLUSH)
            idle_from, idle_began = claims(conn), time.monotonic()
            time.sleep(5.0)
            time.sleep(STATS_FLUSH)
            before, idle_ended = claims(conn), time.monotonic()
            idle_rate = (before - idle_from) / (idle_ended - idle_began)
            jobs = produce(conn, rate, seconds)
            done = "SELECT count(*) FROM notifyworker.jobs WHERE status = 'done'"
            while scalar(conn, done) < jobs:
                time.sleep(0.05)
            time.sleep(STATS_FLUSH)
            after = claims(conn)
            pickups = [row[0] for row in conn.execute(PICKUPS).fetchall()]
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            _, err = worker.communicate(timeout=60)
            if worker.returncode:
                log(f"a worker exited {worker.returncode}: {err[-1000:]}")
    return Result(processes, jobs, after - before, idle_rate, percentiles(pickups))


def report(results: list[Result], rate: float, seconds: float, root: Path) -> str:
    lines = [
        f"Claims per job, {rate:g} jobs/s (one per transaction) for {seconds:g} s,"
        f" workers from {root}",
        "",
        "| processes | jobs | claims | claims per job | idle claims/s | pickup p50 | pickup p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.processes} | {r.jobs} | {r.claims} | {r.claims_per_job:.2f}"
            f" | {r.idle_claims_per_second:.1f} | {r.pickup['p50'] * 1000:.1f} ms"
            f" | {r.pickup['p99'] * 1000:.1f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,3,5", help="fleet sizes, comma-separated")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs inserted per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long jobs come")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout the workers run from")
    args = parser.parse_args(argv)
    sizes = [int(part) for part in args.processes.split(",")]
    with contextlib.ExitStack() as stack:
        server = os.environ.get("DATABASE_URL") or local_server(stack)
        results = []
        for processes in sizes:
            log(f"{processes} process(es)")
            results.append(measure(server, args.root.resolve(), processes, args.rate, args.seconds))
            log(f"claims per job: {results[-1].claims_per_job:.2f}")
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE))
            )
    print(report(results, args.rate, args.seconds, args.root))


if __name__ == "__main__":
    main()
