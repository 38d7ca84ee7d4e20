"""Every statement the dashboard sends reads the jobs table through an index, never all of it.

The small tables (queues, workers, settings) may be read whole; `jobs` never is.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from notifyworker import admin
from notifyworker.dashboard import reads
from notifyworker.sqlfiles import query, query_files

FILTERS: dict[str, Any] = {"status": None, "task": None, "queue": None, "object_id": None}
JOBS = {"before": reads.NEWEST, "floor": 0, "limit": reads.PAGE_SIZE + 1}
# Each statement with the parameters the dashboard sends, in the shapes it sends them.
SENT: list[tuple[str, dict[str, Any]]] = [
    ("job_counts", {"cap": reads.WAITING_CAP}),
    ("dashboard_finished", {"cap": reads.WAITING_CAP}),
    ("dashboard_queues", {"cap": reads.WAITING_CAP}),
    ("dashboard_throughput", {}),
    ("dashboard_pickup", {"sample": reads.PICKUP_SAMPLE}),
    ("dashboard_jobs", {**JOBS, **FILTERS}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "before": 40_000}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "status": "new"}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "status": "running"}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "status": "failed"}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "status": "done", "floor": 30_000}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "task": "sleep", "floor": 30_000}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "queue": "mail", "floor": 30_000}),
    ("dashboard_jobs", {**JOBS, **FILTERS, "object_id": "image-7"}),
    ("dashboard_window", {"before": reads.NEWEST, "window": admin.SEARCH_WINDOW}),
    ("dashboard_job", {"id": 42}),
    ("dashboard_workers", {}),
]


def plan(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> str:
    row = conn.execute(("EXPLAIN (FORMAT JSON) " + query(name)).encode(), params).fetchone()
    assert row is not None
    return json.dumps(row[0])


def test_every_read_of_the_dashboard_is_covered_here() -> None:
    sent = {name for name, _ in SENT}
    reads_of_the_file = {
        name
        for name, text in query_files()["dashboard.sql"].items()
        if text.startswith(("SELECT", "WITH"))
    }
    assert reads_of_the_file <= sent


@pytest.mark.parametrize(
    ("name", "params"), SENT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SENT)]
)
def test_no_dashboard_read_scans_the_jobs_table(
    conn: psycopg.Connection[Any], name: str, params: dict[str, Any]
) -> None:
    # Finished jobs as a day's retention keeps them: one a second, the newest just now.
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at, finished_at)"
        " SELECT 'sleep', 'done', 'w' || n % 3, now() - n * interval '1 second',"
        " now() - n * interval '1 second' FROM generate_series(1, 50000) AS n"
    )
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'sleep' FROM generate_series(1, 50)")
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at)"
        " SELECT 'sleep', 'running', 'w' || (n % 3), now() FROM generate_series(1, 30) AS n"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue, object_id, status, finished_at, error)"
        " SELECT 'resize', 'mail', 'image-' || n, 'failed', now(), 'x'"
        " FROM generate_series(1, 200) AS n"
    )
    conn.execute("INSERT INTO notifyworker.queues (name, paused) VALUES ('mail', true)")
    conn.execute("INSERT INTO notifyworker.workers (id, host, pid) VALUES ('w0', 'h', 1)")
    # As autovacuum leaves a table at rest (statistics and visibility map), and not
    # whenever it happens to run during the test.
    conn.execute("VACUUM ANALYZE notifyworker.jobs")
    text = plan(conn, name, params)
    assert not re.search(r'"Node Type": "Seq Scan", [^}]*"Relation Name": "jobs"', text), text
    assert '"Relation Name": "jobs"' in text or "jobs_" in text
