"""The hot statements use the partial indexes, so a table of finished jobs never slows them."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from notifyworker.producer import Job, enqueue, enqueue_many
from notifyworker.sqlfiles import query


def plan_text(conn: psycopg.Connection[Any], name: str, /, **params: Any) -> str:
    row = conn.execute(("EXPLAIN (FORMAT JSON) " + query(name)).encode(), params or None).fetchone()
    assert row is not None
    return json.dumps(row[0])


CLAIM = {
    "worker_id": "w",
    "serve": None,
    "limit": 100,
    "max_payload_bytes": 1_048_576,
    "pace_ahead": 0.1,
}


def nested_plans(conn: psycopg.Connection[Any], name: str, **params: Any) -> str:
    """The plans of every statement a named one runs inside functions (auto_explain)."""
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}".encode())
    with conn.transaction(force_rollback=True):
        conn.execute(query(name).encode(), params).fetchall()
    conn.execute("SET auto_explain.log_min_duration = -1")
    assert plans, "auto_explain showed no plan"
    return "\n".join(plans)


def fill(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at, finished_at)"
        " SELECT 'sleep', 'done', 'old', now(), now() FROM generate_series(1, 50000)"
    )
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'sleep' FROM generate_series(1, 50)")
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, started_at)"
        " SELECT 'sleep', 'running', 'w' || (n % 3), now() FROM generate_series(1, 30) AS n"
    )
    conn.execute("ANALYZE notifyworker.jobs")


def test_claim_and_sweep_use_the_partial_indexes(conn: psycopg.Connection[Any]) -> None:
    fill(conn)
    conn.execute("INSERT INTO notifyworker.workers (id, host, pid) VALUES ('w', 'h', 0)")
    claim = nested_plans(conn, "claim", **CLAIM)
    assert "jobs_waiting" in claim
    assert "Seq Scan" not in claim
    # Keys to be fair between, and fleet limits: the same index, and the key's.
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, limit_key)"
        " SELECT 'sleep', 'k' || n % 7 FROM generate_series(1, 50) AS n"
    )
    conn.execute(
        "INSERT INTO notifyworker.queues (name, rate, concurrency, key_rate, key_concurrency)"
        " VALUES ('default', 100, 50, 10, 5)"
    )
    conn.execute("ANALYZE notifyworker.jobs")
    fair = nested_plans(conn, "claim", **CLAIM)
    assert "jobs_waiting" in fair
    assert "jobs_held_by_queue" in fair
    assert "Seq Scan on jobs" not in fair
    backoff = {"retry_backoff": 1.0, "retry_backoff_max": 60.0}
    overdue = plan_text(conn, "sweep_overdue", limit=500, **backoff)
    # Either partial index of the held jobs (they hold the same rows).
    assert "jobs_on_worker" in overdue or "jobs_held_by_queue" in overdue
    assert "Seq Scan" not in overdue
    params: dict[str, dict[str, Any]] = {
        "rescue_dead_worker": {"lost_claims_limit": 5, **backoff},
        "requeue_unstarted": {},
        "unregister_worker": {},
    }
    for name, extra in params.items():
        plan = plan_text(conn, name, worker_id="w1", **extra)
        assert "jobs_on_worker" in plan, name
        assert "Seq Scan on jobs" not in plan, name
    # Dead workers and workers with no row that still hold jobs: active rows only.
    dead = plan_text(conn, "dead_workers", dead_after="15 seconds", limit=500)
    assert "jobs_on_worker" in dead
    assert "Seq Scan on jobs" not in dead
    mine = plan_text(conn, "attempts_not_ours", worker_id="w1", ids=[1, 2], queued_at=[None, None])
    assert "Seq Scan on jobs" not in mine


def test_the_status_gauge_never_scans_the_table(conn: psycopg.Connection[Any]) -> None:
    fill(conn)
    plan = plan_text(conn, "job_counts", cap=100_000)
    assert "jobs_waiting" in plan
    assert "jobs_on_worker" in plan or "jobs_held_by_queue" in plan
    assert "Seq Scan on jobs" not in plan


def test_the_retry_rule_is_inlined_into_the_hot_path(conn: psycopg.Connection[Any]) -> None:
    """mark_finished asks notifyworker.will_retry_v1 per row: inlined, it costs no call."""
    arrays = ("ids", "queued_at", "statuses", "retryable", "started_at", "finished_at")
    params: dict[str, Any] = {name: [] for name in (*arrays, "results", "errors")}
    row = conn.execute(
        ("EXPLAIN (VERBOSE, FORMAT JSON) " + query("mark_finished")).encode(),
        {"worker_id": "w", "retry_backoff": 1.0, "retry_backoff_max": 60.0, **params},
    ).fetchone()
    assert row is not None
    plan = json.dumps(row[0])
    assert "max_attempts" in plan  # the rule's expression, in place
    assert "will_retry" not in plan


def test_the_filtered_job_list_never_sorts_the_table(conn: psycopg.Connection[Any]) -> None:
    """`notifyworker jobs` with each filter: an index bounds the scan, or the search window does."""
    fill(conn)
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, object_id, status, worker_id, finished_at,"
        " cancelled_at, error)"
        " SELECT 'rare', 'img-' || n, CASE WHEN n % 2 = 0 THEN 'failed' ELSE 'cancelled' END,"
        " 'old', now(), now(), 'it broke' FROM generate_series(1, 40) AS n"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, object_id, status, worker_id, finished_at)"
        " SELECT 'sleep', 'obj-' || n, 'done', 'old', now() FROM generate_series(1, 2000) AS n"
    )
    conn.execute("ANALYZE notifyworker.jobs")
    none = {"status": None, "task": None, "object_id": None, "queue": None}

    def plan(from_id: int = 0, **filters: Any) -> str:
        return plan_text(conn, "find_jobs", from_id=from_id, limit=20, **{**none, **filters})

    indexed: dict[str, list[dict[str, Any]]] = {
        "jobs_failed_or_cancelled": [
            {"status": "failed"},
            {"status": "cancelled", "task": "rare"},
        ],
        "jobs_object_id": [{"object_id": "img-7"}, {"object_id": "obj-9", "status": "done"}],
        "jobs_on_worker": [
            {"status": "running"},
            {"status": "queued", "task": "rare"},
            {"status": "running", "queue": "default"},
        ],
        "jobs_pkey": [{}],
    }
    # Retention's jobs_finished (status, finished_at) serves a finished status too;
    # jobs_held_by_queue (0014) lists the same held jobs as jobs_on_worker.
    either = {
        "jobs_failed_or_cancelled": ("jobs_failed_or_cancelled", "jobs_finished"),
        "jobs_on_worker": ("jobs_on_worker", "jobs_held_by_queue"),
    }
    for index, cases in indexed.items():
        for filters in cases:
            shown = plan(**filters)
            assert any(name in shown for name in either.get(index, (index,))), (filters, shown)
            assert "Seq Scan" not in shown, filters
    # Waiting jobs: their partial index, or the newest end of the primary key.
    news: list[dict[str, Any]] = [{"status": "new"}, {"status": "new", "queue": "default"}]
    for new in news:
        waiting = plan(**new)
        assert "jobs_waiting" in waiting or "jobs_pkey" in waiting, new
        assert "Seq Scan" not in waiting, new
    # No index serves a task alone or `done`: a walk down the primary key, no
    # further than the search window (here the latest 10,000 of 52,140 jobs).
    start = conn.execute(query("window_start").encode(), {"window": 10_000}).fetchone()
    assert start is not None
    assert start[1] == 10_000
    for filters in (
        {"task": "rare"},
        {"status": "done"},
        {"status": "done", "task": "x"},
        {"queue": "default"},
    ):
        shown = plan(from_id=start[0], **filters)
        assert "jobs_pkey" in shown, filters
        assert "Seq Scan" not in shown, filters
    window = plan_text(conn, "window_start", window=10_000)
    assert '"Index Only Scan"' in window
    assert '"Scan Direction": "Backward"' in window
    assert "Seq Scan" not in window


def test_the_queue_list_reads_the_indexes_of_waiting_held_and_recent_jobs(
    conn: psycopg.Connection[Any],
) -> None:
    """`notifyworker queues`: no count or scan of the whole table, however many finished rows."""
    fill(conn)
    conn.execute(
        "UPDATE notifyworker.jobs SET finished_at = now() - interval '1 day' WHERE status = 'done'"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue, priority)"
        " SELECT 'sleep', 'q' || (n % 7), n % 3 FROM generate_series(1, 300) AS n"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue, status, worker_id, started_at, finished_at)"
        " SELECT 'sleep', 'q' || (n % 7), 'done', 'w', now(), now()"
        " FROM generate_series(1, 200) AS n"
    )
    conn.execute("INSERT INTO notifyworker.queues (name, rate, paused) VALUES ('idle', 5, true)")
    conn.execute("ANALYZE notifyworker.jobs")
    for name in (None, "q3"):
        shown = plan_text(conn, "list_queues", name=name, cap=10_000)
        assert "jobs_waiting" in shown, name
        assert "jobs_on_worker" in shown or "jobs_held_by_queue" in shown, name
        assert "jobs_finished" in shown, name
        assert "Seq Scan on jobs" not in shown, name


def test_enqueue_finds_a_keys_holder_through_the_unique_index(
    conn: psycopg.Connection[Any],
) -> None:
    """A held key is looked up by jobs_active_unique_key, however many finished rows share it."""
    fill(conn)
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, finished_at, unique_key)"
        " SELECT 'sleep', 'done', 'old', now(), 'key-' || (n % 500)"
        " FROM generate_series(1, 50000) AS n"
    )
    held = [enqueue(conn, "sleep", unique_key=f"key-{n}") for n in range(5)]
    conn.execute("ANALYZE notifyworker.jobs")
    try:
        conn.execute("LOAD 'auto_explain'")
    except (psycopg.errors.UndefinedFile, psycopg.errors.InsufficientPrivilege) as exc:
        pytest.skip(f"auto_explain cannot be loaded here: {exc}")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}".encode())
    plans: list[str] = []
    conn.add_notice_handler(lambda notice: plans.append(str(notice.message_primary)))
    jobs = [Job("sleep", unique_key=f"key-{n}") for n in range(10)]
    assert enqueue_many(conn, jobs)[:5] == held
    text = "\n".join(plans)
    assert "jobs_active_unique_key" in text, text
    assert "Seq Scan" not in text, text


def test_the_prune_reads_only_the_finished_rows_it_deletes(conn: psycopg.Connection[Any]) -> None:
    """A batch walks jobs_finished, oldest first per status, never the table or the hot indexes."""
    fill(conn)
    plan = plan_text(
        conn,
        "prune_finished",
        statuses=["done", "failed", "cancelled"],
        older_than=[86_400.0, 604_800.0, 604_800.0],
        limit=1000,
    )
    assert "jobs_finished" in plan
    assert "Seq Scan on jobs" not in plan
    # The index gives the order: no batch sorts every expired row to delete a thousand.
    assert not [key for key in sort_keys(json.loads(plan)) if "finished_at" in key]


def sort_keys(node: Any) -> list[str]:
    """Every Sort Key anywhere in an EXPLAIN (FORMAT JSON) plan."""
    if isinstance(node, list):
        return [key for item in node for key in sort_keys(item)]
    if isinstance(node, dict):
        own = list(node.get("Sort Key", []))
        return own + [key for value in node.values() for key in sort_keys(value)]
    return []
