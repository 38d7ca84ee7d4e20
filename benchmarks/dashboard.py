"""How fast the dashboard answers on a big table: 1,000,000 finished and 100,000 waiting jobs.

    python -m benchmarks.dashboard [--finished N] [--waiting N] [--requests N] [--rebuild]

Builds (once; kept for the next run) a database `nw_bench_dashboard` on
DATABASE_URL's server (else 127.0.0.1:5432): finished jobs spread over the
last day, as a day's retention keeps them, and waiting jobs in two queues.
Then serves the dashboard in this process (trio, as `notifyworker dashboard`)
and times each page over loopback: the figure is the whole answer as a
client on the same machine gets it, an upper bound on the server's time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import httpx
import psycopg
from anyio.from_thread import start_blocking_portal
from psycopg import sql
from psycopg.conninfo import make_conninfo

from notifyworker import db, schema
from notifyworker.config import DashboardSettings
from notifyworker.dashboard import serve_dashboard

NAME = "nw_bench_dashboard"


def build(url: str, finished: int, waiting: int) -> None:
    db.run_once(url, schema.migrate)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE notifyworker.jobs")
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, payload, queue, status, worker_id, created_at,"
            " queued_at, started_at, finished_at, cancelled_at, attempts, error)"
            " SELECT CASE WHEN n %% 7 = 0 THEN 'mail' ELSE 'resize' END, jsonb_build_object('n', n),"
            " CASE WHEN n %% 3 = 0 THEN 'mail' ELSE 'default' END,"
            " CASE WHEN n %% 50 = 0 THEN 'failed' WHEN n %% 97 = 0 THEN 'cancelled' ELSE 'done' END,"
            " 'w' || n %% 4, t - interval '20 ms', t - interval '15 ms', t - interval '10 ms', t,"
            " CASE WHEN n %% 97 = 0 AND n %% 50 <> 0 THEN t END, 1,"
            " CASE WHEN n %% 50 = 0 THEN 'it broke' END"
            " FROM generate_series(1, %s) AS n,"
            " LATERAL (SELECT now() - (%s - n) * (interval '1 day' / %s)) AS at (t)",
            [finished, finished, finished],
        )
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, payload, queue)"
            " SELECT 'resize', jsonb_build_object('n', n),"
            " CASE WHEN n %% 4 = 0 THEN 'mail' ELSE 'default' END"
            " FROM generate_series(1, %s) AS n",
            [waiting],
        )
        conn.execute("VACUUM ANALYZE notifyworker.jobs")


def database(server: str, finished: int, waiting: int, rebuild: bool) -> str:
    url = make_conninfo(server, dbname=NAME)
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [NAME]).fetchone()
        if rebuild and exists:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(NAME)))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(NAME)))
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute("SELECT to_regclass('notifyworker.jobs') IS NOT NULL").fetchone()
        counted: Any = None
        if have and have[0]:
            counted = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'new'), count(*) FROM notifyworker.jobs"
            ).fetchone()
    if counted != (waiting, finished + waiting):
        print(f"building {finished:,} finished and {waiting:,} waiting jobs…", flush=True)
        began = time.perf_counter()
        build(url, finished, waiting)
        print(f"built in {time.perf_counter() - began:.0f} s", flush=True)
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--rebuild", action="store_true", help="build the table anew")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = database(server, args.finished, args.waiting, args.rebuild)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT max(id) - 200000 FROM notifyworker.jobs").fetchone()
        some_job = int(row[0]) if row and row[0] else 1
    pages = [
        "/",
        "/jobs",
        "/jobs?status=new",
        "/jobs?status=done",
        "/jobs?status=failed",
        "/jobs?task=mail",
        "/jobs?queue=mail",
        f"/jobs?before={some_job}",
        f"/jobs/{some_job}",
        "/workers",
    ]
    with start_blocking_portal("trio") as portal:
        future, port = portal.start_task(serve_dashboard, url, DashboardSettings(port=0))
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                print(
                    f"{'page':<28} {'median':>8} {'p95':>8} {'max':>8}   (ms, {args.requests} requests)"
                )
                for page in pages:
                    for _ in range(3):  # warm the pool and the caches
                        client.get(page, headers={"x-live": "1"}).raise_for_status()
                    times = []
                    for _ in range(args.requests):
                        began = time.perf_counter()
                        client.get(page, headers={"x-live": "1"}).raise_for_status()
                        times.append((time.perf_counter() - began) * 1000)
                    times.sort()
                    p95 = times[max(0, int(len(times) * 0.95) - 1)]
                    print(
                        f"{page:<28} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f}",
                        flush=True,
                    )
        finally:
            future.cancel()


if __name__ == "__main__":
    main()
