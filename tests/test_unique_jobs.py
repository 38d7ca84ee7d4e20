"""Unique jobs: one waiting or running job per key, the holder's id to every other enqueue,
race-free from several connections at once, from Python and from SQL; the key is free again
once its job finishes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from notifyworker.errors import DatabaseBusy
from notifyworker.producer import Job, enqueue, enqueue_many
from tests.helpers import scalar

ACTIVE = (
    "SELECT count(*) FROM notifyworker.jobs"
    " WHERE unique_key = %s AND status IN ('new', 'queued', 'running')"
)

# What a worker leaves on a row as it moves it along (as the owner, no worker running).
MOVED = {
    "queued": "status = 'queued', worker_id = 'w', queued_at = now()",
    "running": "status = 'running', worker_id = 'w', queued_at = now(), started_at = now()",
    "done": "status = 'done', worker_id = 'w', finished_at = now()",
    "failed": "status = 'failed', worker_id = 'w', finished_at = now()",
    "cancelled": "status = 'cancelled', finished_at = now(), cancelled_at = now()",
}


def move(conn: psycopg.Connection[Any], job: int, status: str) -> None:
    conn.execute(f"UPDATE notifyworker.jobs SET {MOVED[status]} WHERE id = %s".encode(), (job,))


@pytest.mark.parametrize("status", ["new", "queued", "running"])
def test_a_held_key_gives_the_holders_id(conn: psycopg.Connection[Any], status: str) -> None:
    first = enqueue(conn, "sleep", {"seconds": 1}, unique_key="image-7")
    if status != "new":
        move(conn, first, status)
    assert enqueue(conn, "sleep", {"seconds": 2}, unique_key="image-7") == first
    assert enqueue_many(conn, [Job("sleep", unique_key="image-7")]) == [first]
    assert scalar(conn, "SELECT count(*) FROM notifyworker.jobs") == 1
    assert scalar(conn, "SELECT payload FROM notifyworker.jobs") == {"seconds": 1}


@pytest.mark.parametrize("status", ["done", "failed", "cancelled"])
def test_the_key_is_free_again_once_its_job_finishes(
    conn: psycopg.Connection[Any], status: str
) -> None:
    first = enqueue(conn, "sleep", unique_key="nightly")
    move(conn, first, status)
    second = enqueue(conn, "sleep", unique_key="nightly")
    assert second != first
    assert enqueue(conn, "sleep", unique_key="nightly") == second
    # The finished job keeps its key in its row, as a record.
    keys = conn.execute("SELECT id, unique_key, status FROM notifyworker.jobs ORDER BY id")
    assert keys.fetchall() == [(first, "nightly", status), (second, "nightly", "new")]


def test_cancel_frees_the_key(conn: psycopg.Connection[Any]) -> None:
    first = enqueue(conn, "sleep", unique_key="k")
    assert scalar(conn, "SELECT notifyworker.cancel(%s)", first) == "cancelled"
    assert enqueue(conn, "sleep", unique_key="k") != first


def test_equal_keys_in_one_bulk_call_share_one_job(conn: psycopg.Connection[Any]) -> None:
    held = enqueue(conn, "sleep", unique_key="b")
    ids = enqueue_many(
        conn,
        [
            Job("sleep", {"n": 0}, unique_key="a"),
            Job("sleep", {"n": 1}),
            Job("sleep", {"n": 2}, unique_key="b"),
            Job("sleep", {"n": 3}, unique_key="a"),
            Job("sleep", {"n": 4}),
        ],
    )
    assert ids[2] == held
    assert ids[0] == ids[3]
    assert len({ids[0], ids[1], ids[4], held}) == 4
    assert ids[0] < ids[1] < ids[4]  # the new jobs in the order given
    payloads = dict(conn.execute("SELECT id, payload->>'n' FROM notifyworker.jobs").fetchall())
    assert [payloads[ids[n]] for n in (0, 1, 4)] == ["0", "1", "4"]


def test_from_sql_too(conn: psycopg.Connection[Any]) -> None:
    enqueue_one = (
        "SELECT notifyworker.enqueue('resize', '{\"image_id\": 7}', unique_key => 'image-7')"
    )
    first = scalar(conn, enqueue_one)
    assert scalar(conn, enqueue_one) == first
    ids = scalar(
        conn,
        "SELECT notifyworker.enqueue_many(ARRAY['a', 'b', 'c'],"
        " unique_keys => ARRAY['image-7', NULL, 'x'])",
    )
    assert ids[0] == first
    assert len(set(ids)) == 3
    with pytest.raises(psycopg.errors.UniqueViolation, match="jobs_active_unique_key"):
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, unique_key) VALUES ('resize', 'image-7')"
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="one value per task"):
        conn.execute("SELECT notifyworker.enqueue_many(ARRAY['a', 'b'], ARRAY['{}'::jsonb])")
    with pytest.raises(psycopg.errors.CheckViolation, match="unique_key_1_to_200_characters"):
        conn.execute("SELECT notifyworker.enqueue('a', unique_key => repeat('k', 201))")


def race(database_url: str, writers: int, body: Any) -> list[Any]:
    """`body(conn, i)` from `writers` threads at once, each on its own connection."""
    start = threading.Barrier(writers)

    def one(i: int) -> Any:
        with psycopg.connect(database_url) as conn:
            start.wait()
            return body(conn, i)

    with ThreadPoolExecutor(writers) as pool:
        return list(pool.map(one, range(writers)))


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_enqueues_of_one_key_make_one_job(
    database_url: str, conn: psycopg.Connection[Any], round_: int
) -> None:
    def body(tx: psycopg.Connection[Any], i: int) -> int | None:
        job = enqueue(tx, "sleep", {"writer": i}, unique_key="same")
        time.sleep(0.02 * (i % 3))  # hold the transaction while the others wait on it
        if i == round_:  # one writer rolls back: its job never existed
            tx.rollback()
            return None
        tx.commit()
        return job

    ids = race(database_url, 8, body)
    committed = {job for job in ids if job is not None}
    assert len(committed) == 1
    assert scalar(conn, "SELECT array_agg(id) FROM notifyworker.jobs") == list(committed)
    assert scalar(conn, ACTIVE, "same") == 1


def test_concurrent_bulk_enqueues_share_their_keyed_jobs(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    def body(tx: psycopg.Connection[Any], i: int) -> list[int]:
        jobs = [Job("sleep", unique_key=key) for key in ("a", "b", "c")] + [Job("sleep")]
        with tx.transaction():
            return [int(job) for job in enqueue_many(tx, jobs)]

    ids = race(database_url, 6, body)
    assert len({tuple(row[:3]) for row in ids}) == 1
    assert len({row[3] for row in ids}) == 6
    assert scalar(conn, "SELECT count(*) FROM notifyworker.jobs") == 3 + 6


def test_a_holder_finishing_meanwhile_never_loses_an_enqueue(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Enqueues racing a worker that finishes each holder: every call gets a job with the key."""
    stop = threading.Event()

    def finisher() -> None:
        with psycopg.connect(database_url, autocommit=True) as worker:
            while not stop.is_set():
                worker.execute(
                    "UPDATE notifyworker.jobs SET status = 'done', worker_id = 'w',"
                    " finished_at = now() WHERE unique_key = 'churn' AND status = 'new'"
                )

    thread = threading.Thread(target=finisher)
    thread.start()
    try:
        got = [enqueue(conn, "sleep", unique_key="churn") for _ in range(300)]
    finally:
        stop.set()
        thread.join()
    keys = dict(conn.execute("SELECT id, unique_key FROM notifyworker.jobs").fetchall())
    assert all(keys[job] == "churn" for job in got)
    assert scalar(conn, ACTIVE, "churn") <= 1


def test_a_holder_committed_after_a_repeatable_read_snapshot_is_a_serialization_failure(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(database_url) as tx:
        tx.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        tx.execute("SELECT 1")  # the snapshot
        held = enqueue(conn, "sleep", unique_key="k")
        with pytest.raises(DatabaseBusy) as caught:
            enqueue(tx, "sleep", unique_key="k")
        assert isinstance(caught.value.__cause__, psycopg.errors.SerializationFailure)
        tx.rollback()
        assert enqueue(tx, "sleep", unique_key="k") == held  # a new snapshot sees the holder
