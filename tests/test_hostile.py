"""What a careless operator, a hostile application or any role that can connect may do.

Each test is a finding of the adversarial review of 8ce3394 (issue 14), kept
as the class it stands for: nothing a row, a notification or a role sends
may stop, stall or mislead a worker, and a job held by a worker is never
held by nobody. docs/guarantees.md ("What other roles can do") quotes them.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import psycopg
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel

from notifyworker import db, store
from notifyworker.demand import Demand
from notifyworker.inflight import InFlight
from notifyworker.listener import CANCEL_CHANNEL, JOBS_CHANNEL, _dispatch, parse_job_id
from notifyworker.models import JobId, RetryPolicy, WorkerId
from notifyworker.sqlfiles import query
from notifyworker.tasks import Registry
from tests.helpers import eventually, fast_settings, grant, running_worker, scalar, url_as

RETRYING = {"retry_backoff": 0.05, "retry_backoff_max": 0.1}


class Job(BaseModel):
    n: int = 0


class Tasks:
    """`hang` runs until cancelled (counting overlaps), `quick` returns, `exit` calls sys.exit()."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.running: dict[int, int] = {}
        self.most_at_once = 0
        self.started_event = anyio.Event()
        self.registry = Registry()
        self.registry.add("hang", self.hang)
        self.registry.add("quick", self.quick)
        self.registry.add("exit", self.exit)

    async def hang(self, payload: Job) -> None:
        self.started.append(payload.n)
        self.running[payload.n] = self.running.get(payload.n, 0) + 1
        self.most_at_once = max(self.most_at_once, self.running[payload.n])
        self.started_event.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(payload.n)
            raise
        finally:
            self.running[payload.n] -= 1

    async def quick(self, payload: Job) -> dict[str, int]:
        return {"n": payload.n}

    async def exit(self, payload: Job) -> None:
        sys.exit(1)


def insert(conn: psycopg.Connection[Any], task: str, n: int = 0, **columns: Any) -> int:
    names = ", ".join(["task", "payload", *columns])
    marks = ", ".join(["%s"] * (2 + len(columns)))
    return int(
        scalar(
            conn,
            f"INSERT INTO notifyworker.jobs ({names}) VALUES ({marks}) RETURNING id",
            task,
            f'{{"n": {n}}}',
            *columns.values(),
        )
    )


def status(conn: psycopg.Connection[Any], job: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, attempts, error FROM notifyworker.jobs WHERE id = %s", (job,)
    ).fetchone()
    assert row is not None
    return tuple(row)


def final(conn: psycopg.Connection[Any], *jobs: int) -> bool:
    return all(status(conn, job)[0] in ("done", "failed", "cancelled") for job in jobs)


# Finding 1: retries after a timeout were dropped (an early-cancel memory) and sat `queued`.


async def test_jobs_that_time_out_with_retries_left_are_retried_to_the_end_on_two_workers(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    settings = fast_settings(database_url, **RETRYING)
    async with running_worker(settings, tasks.registry), running_worker(settings, tasks.registry):
        jobs = [insert(conn, "hang", n, timeout="0.3 seconds", max_attempts=3) for n in range(12)]
        # Three attempts of 0.3 s, a sweep (0.1 s) and a backoff (≤ 0.1 s) each: ~2 s.
        await eventually(lambda: final(conn, *jobs), within=20)
    for job in jobs:
        assert status(conn, job)[:2] == ("cancelled", 3)
    assert sorted(tasks.started) == sorted(list(range(12)) * 3)


# Findings 2 and 5: NOTIFY needs no privilege; a payload could crash the
# listener, cancel a running job, or make a future job be dropped.


@given(st.text())
@example("①")  # str.isdigit() took it and int() refused it: the listener died
@example("٣")
@example("0")
@example("01")
@example(str(2**63))
def test_a_cancel_payload_is_a_job_id_or_nothing(payload: str) -> None:
    job_id = parse_job_id(payload)
    if job_id is not None:
        assert str(job_id) == payload
        assert payload.isascii()
        assert 1 <= job_id < 2**63


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_every_bigint_id_parses(n: int) -> None:
    assert parse_job_id(str(n)) == n


@given(st.sampled_from([JOBS_CHANNEL, CANCEL_CHANNEL, "notifyworker_ping", "x"]), st.text())
@example(CANCEL_CHANNEL, "①")
@example(CANCEL_CHANNEL, "9" * 30)
def test_no_notification_raises(channel: str, payload: str) -> None:
    asked: list[JobId] = []
    _dispatch(channel, payload, Demand(InFlight(1)), asked.append)
    assert all(str(job_id) == payload for job_id in asked)


HOSTILE_PAYLOADS = ["①", "٣", "-1", "+1", "0", "01", " 1", "1 ", "1e3", "9" * 30, "", "x"]


async def test_notifications_from_a_role_with_no_grants_stop_and_cancel_nothing(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry) as worker:
        running = insert(conn, "hang", 1, timeout="1 hour")
        await tasks.started_event.wait()
        # The next jobs: a witness (running + 1), then two announced before they exist.
        next_id = running + 2
        with psycopg.connect(url_as(database_url, login_role), autocommit=True) as stranger:
            for payload in [*HOSTILE_PAYLOADS, str(running), str(next_id), str(next_id + 1)]:
                stranger.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, payload))
            stranger.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, "\x1b[31m"))
        # A real cancel, sent after them: once it lands, they were all heard and checked.
        witness = insert(conn, "hang", 2, timeout="1 hour")
        assert witness == running + 1
        await eventually(lambda: 2 in tasks.started)
        assert scalar(conn, "SELECT notifyworker.cancel(%s)", witness) == "cancelled"
        await eventually(lambda: 2 in tasks.cancelled)
        assert tasks.cancelled == [2]  # the running job the stranger named runs on
        assert status(conn, running)[0] == "running"
        # Ids announced before their jobs existed: those jobs run all the same.
        announced = [insert(conn, "quick", n) for n in (3, 4)]
        assert announced == [next_id, next_id + 1]
        await eventually(lambda: final(conn, *announced))
        assert [status(conn, job)[0] for job in announced] == ["done", "done"]
        assert worker.readiness() is None


# Finding 3: a row's absurd value made the sweeper's arithmetic overflow and crash every worker.


async def test_an_absurd_timeout_is_refused_and_cannot_stop_the_sweeper(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_app", login_role[0])
    with (
        psycopg.connect(url_as(database_url, login_role), autocommit=True) as app,
        pytest.raises(psycopg.errors.CheckViolation, match="timeout_at_most_a_year"),
    ):
        insert(app, "hang", timeout="300000 years")
    with pytest.raises(psycopg.errors.CheckViolation, match="created_at_is_finite"):
        insert(conn, "quick", created_at="infinity")
    # A row from before the bound (or a superuser's): the sweeper must go on regardless.
    conn.execute("ALTER TABLE notifyworker.jobs DROP CONSTRAINT timeout_at_most_a_year")
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry) as worker:
        absurd = insert(conn, "hang", 1, timeout="300000 years")
        await eventually(lambda: 1 in tasks.started)
        overdue = insert(conn, "hang", 2, timeout="0.2 seconds")
        await eventually(lambda: final(conn, overdue))
        assert status(conn, overdue)[0] == "cancelled"
        assert status(conn, absurd)[0] == "running"
        assert worker.readiness() is None


async def test_a_background_task_survives_a_database_error_and_readiness_says_so(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry) as worker:
        conn.execute("DELETE FROM notifyworker.sweeper")  # every sweep now fails
        await eventually(lambda: "sweeper has failed" in (worker.readiness() or ""))
        job = insert(conn, "quick", 1)
        await eventually(lambda: final(conn, job))  # the rest of the worker goes on
        conn.execute("INSERT INTO notifyworker.sweeper DEFAULT VALUES")
        await eventually(lambda: worker.readiness() is None)


# Findings 6 and 10: a worker that crashed deleted its row, orphaning its running jobs;
# a worker back from the dead ran a job's new attempt beside its stale one.


def test_a_worker_that_signs_off_leaving_jobs_leaves_them_to_the_next_sweep(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO notifyworker.workers (id, host, pid)"
        " VALUES ('crashed', 'h', 1), ('clean', 'h', 2)"
    )
    job = insert(conn, "hang", 1, max_attempts=2)
    conn.execute(
        "UPDATE notifyworker.jobs SET status = 'running', worker_id = 'crashed', attempts = 1,"
        " queued_at = clock_timestamp(), started_at = clock_timestamp() WHERE id = %s",
        (job,),
    )
    # A worker that stops with an outcome unwritten keeps its row, marked dead at once…
    assert db.run_once(database_url, store.unregister_worker, WorkerId("crashed")) is True
    dead = "SELECT heartbeat_at = 'epoch' FROM notifyworker.workers WHERE id = 'crashed'"
    assert scalar(conn, dead) is True
    assert db.run_once(database_url, store.unregister_worker, WorkerId("clean")) is False
    assert scalar(conn, "SELECT count(*) FROM notifyworker.workers WHERE id = 'clean'") == 0
    # …so the very next sweep rescues its job, not one dead_worker_after (here 10 min) later.
    report = db.run_once(
        database_url, store.sweep, WorkerId("other"), 600.0, RetryPolicy(60.0, 60.0)
    )
    assert (report.dead_workers, report.rescued_retried) == (1, 1)
    assert status(conn, job)[:2] == ("new", 1)


async def test_a_worker_whose_row_vanished_stops_its_stale_attempt_before_the_next(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    settings = fast_settings(database_url, **RETRYING)
    async with running_worker(settings, tasks.registry) as worker:
        job = insert(conn, "hang", 1, timeout="1 hour", max_attempts=3)
        await tasks.started_event.wait()
        # As a sweeper does to a worker it declared dead (or an operator by hand).
        conn.execute("DELETE FROM notifyworker.workers WHERE id = %s", (worker.worker_id,))
        # Its own sweeper rescues the job; the worker stops attempt 1, registers
        # again, and only then claims attempt 2.
        await eventually(lambda: tasks.started == [1, 1])
        assert tasks.cancelled == [1]
        assert tasks.most_at_once == 1
        # Attempt 2 is this worker's (once its start mark is in), and cancel() reaches it.
        await eventually(lambda: status(conn, job)[:2] == ("running", 2))
        assert scalar(conn, "SELECT notifyworker.cancel(%s)", job) == "cancelled"
        await eventually(lambda: tasks.cancelled == [1, 1])
    assert status(conn, job)[:2] == ("cancelled", 2)


# Finding 7: large legal payloads were fetched, timed the claim out, and were claimed forever.


async def test_payloads_over_the_limit_fail_without_being_fetched(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    # 2 MB of incompressible JSON each (md5 hex), against a 100 kB limit.
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, payload)"
        " SELECT 'quick', jsonb_build_object('blob', string_agg(md5(n::text || ':' || j), ''))"
        " FROM generate_series(1, 4) AS j, generate_series(1, 60000) AS n GROUP BY j"
    )
    # The claim statement itself brings back no payload text for them, only their size.
    conn.execute("INSERT INTO notifyworker.workers (id, host, pid) VALUES ('peek', 'h', 0)")
    with conn.transaction():
        rows = conn.execute(
            query("claim").encode(),
            {
                "worker_id": "peek",
                "serve": None,
                "limit": 10,
                "max_payload_bytes": 100_000,
                "pace_ahead": 0.1,
            },
        ).fetchall()
        assert len(rows) == 4
        assert all(row[2] is None and row[3] > 100_000 for row in rows)  # payload, stored_bytes
        raise psycopg.Rollback  # leave them for the worker
    settings = fast_settings(database_url, max_payload_bytes=100_000)
    async with running_worker(settings, tasks.registry):
        await eventually(
            lambda: (
                scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'failed'") == 4
            )
        )
    errors = [row[0] for row in conn.execute("SELECT error FROM notifyworker.jobs").fetchall()]
    assert all("over the limit of 100000" in error and "not fetched" in error for error in errors)
    assert scalar(conn, "SELECT max(lost_claims) FROM notifyworker.jobs") == 0


# Finding 9: any role could switch off every sweeper by holding an advisory lock.


async def test_no_role_without_the_worker_grant_can_stop_the_sweeper(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    tasks = Tasks()
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as stranger:
        stranger.execute("SELECT pg_advisory_lock(hashtext('notifyworker.sweep'))")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            stranger.execute("SELECT FROM notifyworker.sweeper FOR UPDATE")
        async with running_worker(fast_settings(database_url), tasks.registry):
            overdue = insert(conn, "hang", 1, timeout="0.2 seconds")
            # The worker's own watchdog would cancel it only at timeout + sweep_interval + 1 s;
            # the sweeper, not blocked by the stranger's lock, gets there first.
            await eventually(lambda: final(conn, overdue))
    assert status(conn, overdue)[0] == "cancelled"
    assert "found by the sweeper" in status(conn, overdue)[2]


async def test_a_fleet_whose_sweeper_cannot_run_is_not_ready(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry) as worker:
        await eventually(lambda: worker.readiness() is None)
        with conn.transaction():
            conn.execute("SELECT FROM notifyworker.sweeper FOR UPDATE")  # the lease, held
            await eventually(lambda: "no sweeper" in (worker.readiness() or ""))
        await eventually(lambda: worker.readiness() is None)


# Finding 11: a database's own defaults (a 1 ms statement_timeout…) stalled the worker for good.


async def test_hostile_database_defaults_change_nothing(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'quick' FROM generate_series(1, 200)")
    name = scalar(conn, "SELECT current_database()")
    for setting, value in (
        ("statement_timeout", "1ms"),
        ("lock_timeout", "1ms"),
        ("idle_in_transaction_session_timeout", "1ms"),
        ("default_transaction_isolation", "serializable"),
        ("DateStyle", "SQL, DMY"),
        ("IntervalStyle", "sql_standard"),
    ):
        conn.execute(f"ALTER DATABASE \"{name}\" SET {setting} = '{value}'")
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry):
        await eventually(
            lambda: (
                scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'done'") == 200
            ),
            within=30,
        )


async def test_a_worker_that_cannot_record_outcomes_is_not_ready(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry) as worker:
        job = insert(conn, "hang", 1, timeout="0.3 seconds")
        await tasks.started_event.wait()
        with conn.transaction():
            # The row held: the sweeper skips it, the worker's own watchdog cancels
            # the handler, and its outcome waits on the lock.
            conn.execute("SELECT FROM notifyworker.jobs WHERE id = %s FOR UPDATE", (job,))
            await eventually(
                lambda: "outcomes have not reached the table" in (worker.readiness() or "")
            )
        await eventually(lambda: final(conn, job))
        await eventually(lambda: worker.readiness() is None)
    assert status(conn, job)[0] == "cancelled"


# Finding 13: past the grace, a running job with attempts left is cancelled and retried.


async def test_a_job_past_the_shutdown_grace_is_cancelled_and_retried_later(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    settings = fast_settings(database_url, shutdown_grace=0.2, retry_backoff=60)
    async with running_worker(settings, tasks.registry) as worker:
        job = insert(conn, "hang", 1, timeout="1 hour", max_attempts=2)
        await tasks.started_event.wait()
        worker.stop()
    assert tasks.cancelled == [1]
    status_now, attempts, error = status(conn, job)
    assert (status_now, attempts) == ("new", 1)
    assert error == "cancelled at shutdown: ran past the 0.2s grace period"


# Finding 14: a handler that called sys.exit() stopped the whole worker.


async def test_a_handler_that_calls_sys_exit_fails_its_job_and_the_worker_goes_on(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    tasks = Tasks()
    async with running_worker(fast_settings(database_url), tasks.registry) as worker:
        exits = insert(conn, "exit", 1, max_attempts=3)
        await eventually(lambda: final(conn, exits))
        after = insert(conn, "quick", 2)
        await eventually(lambda: final(conn, after))
        assert worker.readiness() is None
    assert status(conn, exits) == ("failed", 1, "handler raised SystemExit: 1")
    assert status(conn, after)[0] == "done"
