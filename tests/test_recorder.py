"""Batched marks against a real PostgreSQL: starts, outcomes, and the ownership guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from notifyworker import db, store
from notifyworker.models import FinishMark, JobId, Outcome, StartMark, WorkerId
from tests.helpers import scalar

W = WorkerId("w1")


def queued(conn: psycopg.Connection[Any], worker: str = "w1") -> JobId:
    job: int = scalar(
        conn,
        "INSERT INTO notifyworker.jobs (task, status, worker_id, queued_at)"
        " VALUES ('sleep', 'queued', %s, now()) RETURNING id",
        worker,
    )
    return JobId(job)


def story(conn: psycopg.Connection[Any], job: JobId) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, attempts, started_at, finished_at, cancelled_at, result, error"
        " FROM notifyworker.jobs WHERE id = %s",
        (job,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_start_then_outcome_in_two_flushes(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = queued(conn)
    began = datetime.now(UTC) - timedelta(seconds=3)
    assert db.run_once(database_url, store.record_marks, W, [StartMark(job, began)], []) == set()
    assert story(conn, job)[:3] == ("running", 1, began)
    ended = datetime.now(UTC)
    done = FinishMark(job, Outcome("done", result={"ok": True}), began, ended)
    assert db.run_once(database_url, store.record_marks, W, [], [done]) == set()
    assert story(conn, job) == ("done", 1, began, ended, None, {"ok": True}, None)


def test_outcome_carries_an_unflushed_start(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = queued(conn)
    began, ended = datetime.now(UTC) - timedelta(seconds=1), datetime.now(UTC)
    cancelled = FinishMark(job, Outcome("cancelled", error="timed out"), began, ended)
    assert db.run_once(database_url, store.record_marks, W, [], [cancelled]) == set()
    assert story(conn, job) == ("cancelled", 1, began, ended, ended, None, "timed out")


def test_a_job_that_never_started_spends_no_attempt(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    job = queued(conn)
    failed = FinishMark(job, Outcome("failed", error="unknown task"), None, datetime.now(UTC))
    db.run_once(database_url, store.record_marks, W, [], [failed])
    status, attempts, started_at, *_ = story(conn, job)
    assert (status, attempts, started_at) == ("failed", 0, None)


def test_marks_for_jobs_held_by_another_worker_are_refused(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    mine, theirs, gone = queued(conn), queued(conn, "w2"), queued(conn)
    conn.execute(
        "UPDATE notifyworker.jobs SET status = 'cancelled', finished_at = now(),"
        " cancelled_at = now(), error = 'rescued' WHERE id = %s",
        (gone,),
    )
    at = datetime.now(UTC)
    refused = db.run_once(
        database_url,
        store.record_marks,
        W,
        [StartMark(mine, at), StartMark(theirs, at)],
        [FinishMark(gone, Outcome("done"), at, at)],
    )
    assert refused == {theirs, gone}
    assert story(conn, mine)[0] == "running"
    assert story(conn, theirs)[0] == "queued"
    assert story(conn, gone)[0] == "cancelled"  # the sweeper's verdict stands
