"""Queues, priorities and limit keys: the claim's rules, and limits that hold for a fleet.

The claim's order and fairness are checked on the claim itself (SQL, one
worker row); the fleet-wide limits with several real worker processes, from
the timestamps the jobs leave in the table.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.helpers import Calls, eventually, fast_settings, grant, running_worker, scalar, url_as
from tests.test_processes import spawn, stop

CLAIM = (
    "SELECT id, queue, limit_key, start_in, claim_again_in"
    " FROM notifyworker.claim_v1(%s, %s, %s, 1048576, 0.1)"
)


def claim(conn: psycopg.Connection[Any], n: int, serve: list[str] | None = None) -> list[Any]:
    return conn.execute(CLAIM.encode(), ("w", serve, n)).fetchall()


@pytest.fixture
def worker_row(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute("INSERT INTO notifyworker.workers (id, host, pid) VALUES ('w', 'h', 1)")
    return conn


def test_a_high_priority_job_behind_a_long_line_is_the_next_claimed(
    worker_row: psycopg.Connection[Any],
) -> None:
    conn = worker_row
    conn.execute(
        "INSERT INTO notifyworker.jobs (task) SELECT 'ledger' FROM generate_series(1, 100000)"
    )
    urgent = scalar(
        conn, "INSERT INTO notifyworker.jobs (task, priority) VALUES ('ledger', 10) RETURNING id"
    )
    low = scalar(
        conn, "INSERT INTO notifyworker.jobs (task, priority) VALUES ('ledger', -5) RETURNING id"
    )
    first = claim(conn, 1)
    assert [row[0] for row in first] == [urgent]
    # Within one priority, oldest first; a lower priority after every default one.
    assert [row[0] for row in claim(conn, 3)] == [1, 2, 3]
    assert low not in [row[0] for row in claim(conn, 50)]


def test_one_keys_backlog_does_not_starve_another_key(worker_row: psycopg.Connection[Any]) -> None:
    conn = worker_row
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, limit_key)"
        " SELECT 'ledger', 'A' FROM generate_series(1, 10000)"
    )
    b = scalar(
        conn, "INSERT INTO notifyworker.jobs (task, limit_key) VALUES ('ledger', 'B') RETURNING id"
    )
    plain = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('ledger') RETURNING id")
    taken = [row[0] for row in claim(conn, 3)]
    # The next claim, not after A's 10,000.
    assert b in taken
    assert plain in taken
    # Round-robin goes on after the key it took last: A's turn again.
    assert {row[2] for row in claim(conn, 1)} == {"A"}


def test_paused_and_other_queues(worker_row: psycopg.Connection[Any]) -> None:
    conn = worker_row
    conn.execute("INSERT INTO notifyworker.queues (name, paused) VALUES ('email', true)")
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue) VALUES ('ledger', 'email'), ('ledger', 'sms')"
    )
    assert [row[1] for row in claim(conn, 10)] == ["sms"]
    assert claim(conn, 10) == []
    conn.execute("UPDATE notifyworker.queues SET paused = false WHERE name = 'email'")
    assert [row[1] for row in claim(conn, 10, ["email"])] == ["email"]


def test_serving_some_queues_takes_only_theirs(worker_row: psycopg.Connection[Any]) -> None:
    conn = worker_row
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue) VALUES ('ledger', 'a'), ('ledger', 'b')"
    )
    assert [row[1] for row in claim(conn, 10, ["b", "nowhere"])] == ["b"]


def test_a_concurrency_limit_counts_what_the_fleet_holds(
    worker_row: psycopg.Connection[Any],
) -> None:
    conn = worker_row
    conn.execute("INSERT INTO notifyworker.queues (name, concurrency) VALUES ('default', 3)")
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'ledger' FROM generate_series(1, 10)")
    rows = claim(conn, 10)
    jobs = [row for row in rows if row[0] is not None]
    assert len(jobs) == 3
    again = claim(conn, 10)
    assert [row[0] for row in again] == [None]  # no job: only when to look again
    assert again[0][4] > 0


def test_a_fleet_rate_hands_out_slots_one_interval_apart(
    worker_row: psycopg.Connection[Any],
) -> None:
    conn = worker_row
    conn.execute("INSERT INTO notifyworker.queues (name, rate) VALUES ('default', 20)")
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'ledger' FROM generate_series(1, 10)")
    rows = claim(conn, 10)
    starts = sorted(row[3] for row in rows if row[0] is not None)
    # 0.1 s ahead at 20/s, the first slot 2 ms ahead (never in the past when
    # the worker gets it): that one and the one 50 ms later, no more.
    assert len(starts) == 2
    assert starts[0] > 0
    assert starts[1] - starts[0] == pytest.approx(0.05, abs=1e-5)


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("queue", "''", "queue_is_a_name"),
        ("queue", "'two words'", "queue_is_a_name"),
        ("priority", "2000000", "priority_in_range"),
        ("limit_key", "repeat('k', 201)", "limit_key_1_to_200_characters"),
    ],
)
def test_bad_job_values_are_refused_by_name(
    conn: psycopg.Connection[Any], column: str, value: str, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        conn.execute(
            f"INSERT INTO notifyworker.jobs (task, {column}) VALUES ('ledger', {value})".encode()
        )


@pytest.mark.parametrize(
    ("setting", "constraint"),
    [
        ("rate = -1", "rate_in_bounds"),
        ("rate = 'NaN'", "rate_in_bounds"),
        ("key_rate = 'Infinity'", "key_rate_in_bounds"),
        ("concurrency = 0", "concurrency_in_bounds"),
        ("key_concurrency = -3", "key_concurrency_in_bounds"),
    ],
)
def test_bad_queue_settings_are_refused_by_name(
    conn: psycopg.Connection[Any], setting: str, constraint: str
) -> None:
    conn.execute("INSERT INTO notifyworker.queues (name) VALUES ('q')")
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        conn.execute(f"UPDATE notifyworker.queues SET {setting} WHERE name = 'q'".encode())


async def test_a_paused_queue_holds_while_others_run_and_resumes_live(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("INSERT INTO notifyworker.queues (name, paused) VALUES ('email', true)")
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, queue, payload) VALUES"
            " ('record', 'email', '{\"n\": 1}'), ('record', 'other', '{\"n\": 2}')"
        )
        await eventually(lambda: calls.started == [2])
        # The other queue's job ran after it: the paused one was passed over.
        assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE queue = 'email'") == "new"
        # A plain UPDATE from any client reaches the worker at once.
        conn.execute("UPDATE notifyworker.queues SET paused = false WHERE name = 'email'")
        await eventually(lambda: calls.started == [2, 1])


def _most_at_once(conn: psycopg.Connection[Any], by_key: bool) -> int:
    """The most jobs (of one key) that ran at once, from their start and end stamps."""
    group = "o.limit_key = j.limit_key" if by_key else "true"
    return int(
        scalar(
            conn,
            "SELECT max((SELECT count(*) FROM notifyworker.jobs AS o"
            f" WHERE {group} AND o.started_at <= j.started_at AND o.finished_at > j.started_at))"
            " FROM notifyworker.jobs AS j WHERE j.started_at IS NOT NULL",
        )
    )


async def three_workers_ran(
    database_url: str, conn: psycopg.Connection[Any], insert: str, jobs: int, concurrency: int
) -> None:
    """Three worker processes run the `jobs` jobs `insert` makes, and stop cleanly."""
    workers = [
        spawn(database_url, "--rate", "0", "--concurrency", str(concurrency)) for _ in range(3)
    ]
    try:
        await eventually(
            lambda: scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 3, within=30
        )
        conn.execute(insert.encode())
        await eventually(
            lambda: (
                scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'done'") == jobs
            ),
            within=120,
        )
    finally:
        results = [stop(worker) for worker in workers]
    assert [code for code, _ in results] == [0, 0, 0], [err for _, err in results]


async def test_key_and_queue_concurrency_hold_across_three_worker_processes(
    database_url: str, ledger: psycopg.Connection[Any]
) -> None:
    conn = ledger
    conn.execute(
        "INSERT INTO notifyworker.queues (name, concurrency, key_concurrency)"
        " VALUES ('default', 12, 2)"
    )
    # 4 slots each: the fleet's 12 places need all three workers.
    await three_workers_ran(
        database_url,
        conn,
        "INSERT INTO notifyworker.jobs (task, payload, limit_key)"
        " SELECT 'ledger', jsonb_build_object('n', n, 'seconds', 0.1), 'k' || n % 20"
        " FROM generate_series(1, 240) AS n",
        jobs=240,
        concurrency=4,
    )
    assert _most_at_once(conn, by_key=True) == 2  # reached, never passed
    assert _most_at_once(conn, by_key=False) <= 12
    # 2 s of work for 12 places, 4 a worker: the workers the wake-up token did
    # not pick joined at their poll.
    assert scalar(conn, "SELECT count(DISTINCT pid) FROM ledger") == 3


async def test_a_fleet_rate_is_never_exceeded_by_three_worker_processes(
    database_url: str, ledger: psycopg.Connection[Any]
) -> None:
    conn = ledger
    conn.execute("INSERT INTO notifyworker.queues (name, rate) VALUES ('default', 40)")
    await three_workers_ran(
        database_url,
        conn,
        "INSERT INTO notifyworker.jobs (task, payload)"
        " SELECT 'ledger', jsonb_build_object('n', n, 'seconds', 0.6)"
        " FROM generate_series(1, 81) AS n",
        jobs=81,
        concurrency=10,
    )
    # 81 starts at 40/s span at least 2 s whoever started them; a slow
    # machine only makes it longer, so this cannot fail for being slow.
    span = scalar(
        conn, "SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM notifyworker.jobs"
    )
    assert span >= 2.0 * 0.98
    # 0.6 s jobs at 40/s hold 24 places, 10 a worker: more than one worker ran them.
    assert scalar(conn, "SELECT count(DISTINCT pid) FROM ledger") >= 2


def test_the_worker_role_claims_from_a_queue_with_every_limit(
    database_url: str, conn: psycopg.Connection[Any], login_role: tuple[str, str]
) -> None:
    grant(conn, "notifyworker_worker", login_role[0])
    conn.execute(
        "INSERT INTO notifyworker.queues (name, rate, concurrency, key_rate, key_concurrency)"
        " VALUES ('default', 100, 10, 50, 2)"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, limit_key)"
        " SELECT 'ledger', 'k' || n % 3 FROM generate_series(1, 20) AS n"
    )
    with psycopg.connect(url_as(database_url, login_role), autocommit=True) as worker:
        worker.execute("INSERT INTO notifyworker.workers (id, host, pid) VALUES ('w', 'h', 1)")
        jobs = [row for row in claim(worker, 10) if row[0] is not None]
    assert jobs
    # The worker role kept the fleet's slots: the queue's and each key's.
    assert scalar(conn, "SELECT next_start_at > now() FROM notifyworker.queues")
    assert scalar(conn, "SELECT count(*) FROM notifyworker.queue_keys") == len(
        {row[2] for row in jobs}
    )


def test_a_new_rate_replans_the_next_slot_at_once(worker_row: psycopg.Connection[Any]) -> None:
    conn = worker_row
    conn.execute("INSERT INTO notifyworker.queues (name, rate) VALUES ('default', 0.001)")
    conn.execute("INSERT INTO notifyworker.jobs (task) SELECT 'ledger' FROM generate_series(1, 5)")
    assert len([row for row in claim(conn, 5) if row[0] is not None]) == 1
    # The next slot is 1,000 s away; raised to 10/s, it is 0.1 s after the last one.
    conn.execute("UPDATE notifyworker.queues SET rate = 10 WHERE name = 'default'")
    due_in = scalar(
        conn, "SELECT extract(epoch FROM next_start_at - now()) FROM notifyworker.queues"
    )
    assert due_in < 0.2


def test_a_queue_row_held_by_another_transaction_never_stalls_the_claim(
    worker_row: psycopg.Connection[Any], database_url: str
) -> None:
    conn = worker_row
    conn.execute("INSERT INTO notifyworker.queues (name, concurrency) VALUES ('held', 5)")
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue) VALUES ('ledger', 'held'), ('ledger', 'free')"
    )
    with psycopg.connect(database_url) as other:
        other.execute("SELECT FROM notifyworker.queues WHERE name = 'held' FOR UPDATE")
        rows = claim(conn, 10)
        other.rollback()
    assert [row[1] for row in rows if row[0] is not None] == ["free"]
    assert [row[4] for row in rows if row[0] is None] == [pytest.approx(0.01)]  # soon again
    assert [row[1] for row in claim(conn, 10)] == ["held"]


def test_a_few_keys_fill_the_claim(
    worker_row: psycopg.Connection[Any],
) -> None:
    """Shares that leave room say to claim again at once."""
    conn = worker_row
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, limit_key)"
        " SELECT 'ledger', 'only' FROM generate_series(1, 100)"
    )
    rows = claim(conn, 10)
    jobs = [row for row in rows if row[0] is not None]
    again = [row[4] for row in rows if row[0] is None]
    assert len(jobs) == 10  # no jobs without a key wait: the key's share is the whole claim
    assert again == []
    conn.execute("INSERT INTO notifyworker.jobs (task) VALUES ('ledger')")
    rows = claim(conn, 10)
    # Now two turns share the claim: half each, the key's half full, so look again at once.
    assert len([row for row in rows if row[0] is not None]) == 6
    assert [row[4] for row in rows if row[0] is None] == [pytest.approx(0.001)]


def test_jobs_of_a_higher_priority_not_yet_due_never_hold_the_claim_back(
    worker_row: psycopg.Connection[Any],
) -> None:
    conn = worker_row
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, priority, run_at)"
        " SELECT 'ledger', 10, now() + interval '1 hour' FROM generate_series(1, 1000)"
    )
    due = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('ledger') RETURNING id")
    assert [row[0] for row in claim(conn, 5)] == [due]


async def test_a_worker_given_queues_serves_only_those(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    calls = Calls()
    # An array literal's own characters in a name: quoted on the way, not parsed.
    mine = 'we"ird,{q}\\'
    settings = fast_settings(database_url, queues=(mine, "b"))
    async with running_worker(settings, calls.registry):
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, queue, payload) VALUES"
            " ('record', 'other', '{\"n\": 1}'), ('record', %s, '{\"n\": 2}')",
            (mine,),
        )
        await eventually(lambda: calls.started == [2])
        # The job of the queue it was not given was never claimed.
        assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE queue = 'other'") == "new"
