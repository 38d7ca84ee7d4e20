"""Batched marks against a real PostgreSQL: starts, outcomes, retries and the claim fence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from notifyworker import db, store
from notifyworker.models import FinishMark, JobId, Outcome, RetryPolicy, StartMark, WorkerId
from tests.helpers import scalar

W = WorkerId("w1")
RETRY = RetryPolicy(base=60.0, cap=600.0)


def queued(
    conn: psycopg.Connection[Any], worker: str = "w1", max_attempts: int = 1
) -> tuple[JobId, datetime]:
    """A job claimed by `worker`, and its claim stamp (the fence)."""
    row = conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, worker_id, queued_at, max_attempts)"
        " VALUES ('sleep', 'queued', %s, clock_timestamp(), %s) RETURNING id, queued_at",
        (worker, max_attempts),
    ).fetchone()
    assert row is not None
    return JobId(row[0]), row[1]


def story(conn: psycopg.Connection[Any], job: JobId) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, attempts, started_at, finished_at, cancelled_at, result, error"
        " FROM notifyworker.jobs WHERE id = %s",
        (job,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def record(url: str, starts: list[StartMark], finishes: list[FinishMark]) -> set[JobId]:
    flushed = db.run_once(url, store.record_marks, W, RETRY, starts, finishes)
    return {job_id for job_id, _ in flushed.refused}


def test_start_then_outcome_in_two_flushes(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job, claim = queued(conn)
    began = datetime.now(UTC) - timedelta(seconds=3)
    assert record(database_url, [StartMark(job, claim, began)], []) == set()
    assert story(conn, job)[:3] == ("running", 1, began)
    ended = datetime.now(UTC)
    done = FinishMark(job, claim, Outcome("done", result={"ok": True}), began, ended)
    assert record(database_url, [], [done]) == set()
    assert story(conn, job) == ("done", 1, began, ended, None, {"ok": True}, None)


def test_outcome_carries_an_unflushed_start(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job, claim = queued(conn)
    began, ended = datetime.now(UTC) - timedelta(seconds=1), datetime.now(UTC)
    cancelled = FinishMark(job, claim, Outcome("cancelled", error="timed out"), began, ended)
    assert record(database_url, [], [cancelled]) == set()
    assert story(conn, job) == ("cancelled", 1, began, ended, ended, None, "timed out")


def test_a_job_that_never_started_spends_no_attempt(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job, claim = queued(conn)
    failed = FinishMark(
        job, claim, Outcome("failed", error="unknown task"), None, datetime.now(UTC)
    )
    record(database_url, [], [failed])
    status, attempts, started_at, *_ = story(conn, job)
    assert (status, attempts, started_at) == ("failed", 0, None)


def test_marks_for_jobs_held_by_another_worker_are_refused(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    (mine, c1), (theirs, c2), (gone, c3) = queued(conn), queued(conn, "w2"), queued(conn)
    conn.execute(
        "UPDATE notifyworker.jobs SET status = 'cancelled', finished_at = now(),"
        " cancelled_at = now(), error = 'rescued' WHERE id = %s",
        (gone,),
    )
    at = datetime.now(UTC)
    refused = record(
        database_url,
        [StartMark(mine, c1, at), StartMark(theirs, c2, at)],
        [FinishMark(gone, c3, Outcome("done"), at, at)],
    )
    assert refused == {theirs, gone}
    assert story(conn, mine)[0] == "running"
    assert story(conn, theirs)[0] == "queued"
    assert story(conn, gone)[0] == "cancelled"  # the sweeper's verdict stands


def test_a_stale_claim_cannot_write_over_a_later_one(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # The job was taken from this worker and claimed by it again: the marks of
    # the first claim must not land on the second.
    job, first_claim = queued(conn)
    conn.execute("UPDATE notifyworker.jobs SET queued_at = clock_timestamp() WHERE id = %s", (job,))
    at = datetime.now(UTC)
    stale = FinishMark(job, first_claim, Outcome("done"), at, at)
    assert record(database_url, [StartMark(job, first_claim, at)], [stale]) == {job}
    assert story(conn, job)[:2] == ("queued", 0)


def test_a_retryable_failure_with_attempts_left_waits_out_its_backoff(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job, claim = queued(conn, max_attempts=2)
    began = datetime.now(UTC)
    broke = Outcome("failed", error="RuntimeError: flaky", retryable=True)
    flushed = db.run_once(
        database_url,
        store.record_marks,
        W,
        RETRY,
        [],
        [FinishMark(job, claim, broke, began, began)],
    )
    assert flushed.refused == frozenset()
    # The worker learns when to claim it again.
    (retry_in,) = flushed.retries_in
    assert 25 < retry_in <= 60
    row = conn.execute(
        "SELECT status, attempts, worker_id, queued_at, started_at, finished_at, error,"
        " extract(epoch FROM run_at - clock_timestamp())"
        " FROM notifyworker.jobs WHERE id = %s",
        (job,),
    ).fetchone()
    assert row is not None
    status, attempts, worker, queued_at, started_at, finished_at, error, due_in = row
    assert (status, attempts, worker, queued_at, started_at, finished_at, error) == (
        "new", 1, None, None, None, None, "RuntimeError: flaky"
    )  # fmt: skip
    # First retry: base 60 s with equal jitter, so between 30 and 60 s from now.
    assert 25 < due_in <= 60


def test_the_last_attempt_fails_for_good(database_url: str, conn: psycopg.Connection[Any]) -> None:
    job, claim = queued(conn, max_attempts=2)
    conn.execute("UPDATE notifyworker.jobs SET attempts = 1 WHERE id = %s", (job,))
    at = datetime.now(UTC)
    broke = Outcome("failed", error="RuntimeError: still broken", retryable=True)
    record(database_url, [], [FinishMark(job, claim, broke, at, at)])
    assert story(conn, job)[:2] == ("failed", 2)
    assert story(conn, job)[6] == "RuntimeError: still broken"


def test_bad_input_is_not_retried(database_url: str, conn: psycopg.Connection[Any]) -> None:
    job, claim = queued(conn, max_attempts=5)
    at = datetime.now(UTC)
    bad = Outcome("failed", error="payload does not match")  # not retryable
    record(database_url, [], [FinishMark(job, claim, bad, None, at)])
    assert story(conn, job)[:2] == ("failed", 0)
    assert scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'new'") == 0


def test_a_start_mark_sent_twice_counts_one_attempt(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # The first write committed but its answer was lost; the recorder sends it again.
    job, claim = queued(conn)
    began = datetime.now(UTC)
    assert record(database_url, [StartMark(job, claim, began)], []) == set()
    assert record(database_url, [StartMark(job, claim, began)], []) == set()
    assert story(conn, job)[:3] == ("running", 1, began)


def test_claims_whose_answer_was_lost_go_back_to_the_queue(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    (held, _), (lost, _), (theirs, _) = queued(conn), queued(conn), queued(conn, "w2")
    released = db.run_once(database_url, store.release_lost_claims, W, [held])
    assert released == 1
    statuses = dict(conn.execute("SELECT id, status FROM notifyworker.jobs").fetchall())
    assert statuses == {held: "queued", lost: "new", theirs: "queued"}
