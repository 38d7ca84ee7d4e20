"""One job wakes one claim: the wake-up token, decided alike by every worker of the fleet."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from notifyworker import db, rendezvous, store
from notifyworker.db import Database
from notifyworker.demand import Demand
from notifyworker.heartbeat import pass_wakes_on
from notifyworker.inflight import InFlight
from notifyworker.listener import JOBS_CHANNEL, _dispatch
from notifyworker.models import WorkerId
from notifyworker.rendezvous import parse_token
from tests.helpers import eventually, scalar
from tests.test_inflight import job
from tests.test_processes import ROOT, stop

FLEET = [f"worker-{n}" for n in range(5)]


def member(worker: str, others: list[str], *, slots: int = 2, **options: Any) -> Demand:
    """`worker`'s Demand after a beat that published its free slots and read `others`."""
    demand = Demand(InFlight(slots), worker, **options)
    demand.fleet_seen(others, published=demand.free)
    return demand


def fill(demand: Demand, inflight: InFlight) -> None:
    for n in range(inflight.free):
        inflight.claimed(job(n + 1), 0)


def wakes(demand: Demand, token: str) -> bool:
    """Whether the token wakes this worker's claimer (a wake is a new generation)."""
    before = demand.generation
    demand.job_inserted(token)
    return demand.generation > before


def token_for(worker: str, fleet: list[str]) -> str:
    """A token that designates `worker` among `fleet`."""
    return next(str(x) for x in range(1, 10_000) if rendezvous.designated(str(x), fleet) == worker)


# -- the choice ---------------------------------------------------------------


def test_the_hash_is_the_same_in_every_process() -> None:
    # Python's hash() is salted per process: every worker would choose differently.
    assert rendezvous.weight("12345", "a").hex() == "4b00d14746986551bed6bb03cb42d782"
    assert rendezvous.designated("12345", ["a", "b", "c"]) == "b"
    assert rendezvous.designated("12345", ["c", "b", "a"]) == "b"  # order does not matter
    assert rendezvous.designated("12345", []) is None


async def test_every_worker_agrees_on_the_one_a_token_wakes() -> None:
    fleet = [member(w, [o for o in FLEET if o != w]) for w in FLEET]
    chosen: Counter[str] = Counter()
    for xid in range(1, 301):
        woken = [demand.worker_id for demand in fleet if wakes(demand, str(xid))]
        assert woken == [rendezvous.designated(str(xid), FLEET)]
        chosen[woken[0]] += 1
    assert set(chosen) == set(FLEET)  # each takes a share
    for demand in fleet:  # the others only noted that work may wait
        assert demand.more_waiting


async def test_a_worker_without_free_slots_is_skipped() -> None:
    busy, free = FLEET[0], FLEET[1:]
    inflight = InFlight(2)
    full = Demand(inflight, busy)
    fill(full, inflight)
    full.fleet_seen(free, published=full.free)  # its beat published 0: the others skip it
    fleet = [member(w, [o for o in free if o != w]) for w in free]
    for xid in range(1, 201):
        assert not wakes(full, str(xid))
        woken = [demand.worker_id for demand in fleet if wakes(demand, str(xid))]
        assert woken == [rendezvous.designated(str(xid), free)]
    assert full.more_waiting  # a slot that frees claims at once
    assert full.passed_on == 0


async def test_a_designated_worker_that_filled_up_since_its_beat_passes_the_wake_on() -> None:
    me = FLEET[0]
    inflight = InFlight(2)
    demand = Demand(inflight, me)
    demand.fleet_seen(FLEET[1:], published=2)  # free at its beat: the others count on it
    fill(demand, inflight)
    token = token_for(me, FLEET)
    others = [member(w, [o for o in FLEET if o != w]) for w in FLEET[1:]]
    assert not any(wakes(other, token) for other in others)
    demand.job_inserted(token)
    assert demand.passed_on == 1
    with anyio.fail_after(1):
        await demand.wakes_to_pass()


async def test_a_stopping_worker_passes_the_wake_on_and_publishes_no_room() -> None:
    me = FLEET[0]
    demand = member(me, FLEET[1:])
    demand.stop_claiming()
    assert demand.published_free == 0
    demand.job_inserted(token_for(me, FLEET))
    with anyio.fail_after(1):
        await demand.wakes_to_pass()


async def test_without_a_known_fleet_or_serving_some_queues_every_token_wakes() -> None:
    unknown = Demand(InFlight(2), FLEET[0])  # before its first beat
    some = member(FLEET[1], FLEET[2:], queues=("email",))
    lost = member(FLEET[2], FLEET[3:])
    lost.fleet_lost()  # declared dead: registering again
    for xid in range(1, 50):
        assert wakes(unknown, str(xid))
        assert wakes(some, str(xid))
        assert wakes(lost, str(xid))


async def test_a_stale_view_of_the_fleet_wakes_as_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    demand = member(FLEET[0], FLEET[1:], fleet_ttl=15.0)
    others = token_for(FLEET[1], FLEET)
    assert not wakes(demand, others)
    await anyio.sleep(16)  # no beat got through for longer than dead_worker_after
    assert wakes(demand, others)


# -- hostile payloads ---------------------------------------------------------

HOSTILE_TOKENS = [
    "inserted:",
    "inserted",
    "inserted:abc",
    "inserted:01",
    "inserted:0",
    "inserted:-1",
    "inserted:+1",
    "inserted: 1",
    "inserted:1 ",
    "inserted:1e3",
    "inserted:①",
    "inserted:١٢",
    "inserted:" + "9" * 21,
    "inserted:" + str(2**64),
    "inserted:" + "9" * 100_000,
    "inserted:1:2",
    "INSERTED:1",
    "inserted",
    "wake",
    "retried",
    "queues",
    "\x1b[31m",
    "",
]


@given(st.one_of(st.text(), st.text().map(lambda t: "inserted:" + t)))
@example("inserted:" + str(2**64 - 1))
@example("inserted:" + str(2**64))
@example("inserted:١")
def test_a_token_is_canonical_ascii_digits_or_nothing(payload: str) -> None:
    token = parse_token(payload)
    if token is not None:
        assert payload == rendezvous.INSERTED + token
        assert token.isascii()
        assert token.isdigit()
        assert not token.startswith("0")
        assert 1 <= int(token) < 2**64


@pytest.mark.parametrize("payload", HOSTILE_TOKENS)
async def test_a_payload_that_is_not_a_token_wakes_as_before(payload: str) -> None:
    # A worker that a well-formed token would skip: anything else wakes it.
    demand = member(FLEET[0], FLEET[1:])
    before = demand.generation
    asked: list[int] = []
    _dispatch(JOBS_CHANNEL, payload, demand, asked.append)
    assert demand.generation == before + 1
    assert asked == []


# -- the database's side ------------------------------------------------------


def test_a_beat_publishes_its_room_and_reads_the_free_workers_that_serve_every_queue(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    def beat(worker: str, free: int, queues: tuple[str, ...] | None = None) -> store.Beat:
        return db.run_once(database_url, store.heartbeat, WorkerId(worker), free, queues, 15.0)

    for worker in ("me", "full", "email", "gone", "idle", "new"):
        db.run_once(database_url, store.register_worker, WorkerId(worker), "host", 1)
    assert beat("full", 0).wakeable == ()  # the others have not beaten yet: no room known
    beat("email", 5, ("email",))
    beat("gone", 5)
    conn.execute("UPDATE notifyworker.workers SET heartbeat_at = now() - interval '1 minute'"
                 " WHERE id = 'gone'")  # fmt: skip
    beat("idle", 5)
    mine = beat("me", 3)
    assert mine.alive
    assert mine.wakeable == ("idle",)  # not itself, not full, not some queues, not dead, not new
    assert scalar(conn, "SELECT free_slots FROM notifyworker.workers WHERE id = 'me'") == 3
    assert scalar(conn, "SELECT queues FROM notifyworker.workers WHERE id = 'email'") == ["email"]
    conn.execute("DELETE FROM notifyworker.workers WHERE id = 'me'")
    assert not beat("me", 3).alive


async def test_a_full_worker_passes_the_wake_on_through_the_database(database_url: str) -> None:
    me = FLEET[0]
    inflight = InFlight(1)
    demand = Demand(inflight, me)
    demand.fleet_seen(FLEET[1:], published=1)
    fill(demand, inflight)
    database = Database(database_url, size=1)
    await database.open()
    with psycopg.connect(database_url, autocommit=True) as listening:
        listening.execute("LISTEN notifyworker_jobs")
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(pass_wakes_on, database, demand)
                demand.job_inserted(token_for(me, FLEET))
                heard = await anyio.to_thread.run_sync(
                    lambda: [n.payload for n in listening.notifies(timeout=10, stop_after=1)]
                )
                tasks.cancel_scope.cancel()
        finally:
            await database.close()
    assert heard == ["wake"]  # not a token: it wakes every worker


# -- a fleet of processes -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def claims(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        int(float(line.split()[1]))
        for line in text.splitlines()
        if line.startswith("notifyworker_claims_total ")
    )


@pytest.fixture
def fleet(database_url: str) -> Iterator[list[tuple[subprocess.Popen[str], int]]]:
    """Three idle `notifyworker run` processes whose polls never come during the test."""
    processes = []
    try:
        for _ in range(3):
            port = free_port()
            env = {
                **os.environ,
                "DATABASE_URL": database_url,
                "NOTIFYWORKER_LOG_LEVEL": "WARNING",
                "NOTIFYWORKER_HEALTH_HOST": "127.0.0.1",
                "NOTIFYWORKER_HEALTH_PORT": str(port),
                "NOTIFYWORKER_POLL_INTERVAL": "600",
            }
            command = [sys.executable, "-m", "notifyworker", "run", "--tasks", "tests.ledger_tasks"]
            pipe = subprocess.PIPE
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True
            )
            processes.append((process, port))
        yield processes
    finally:
        results = [stop(process) for process, _ in processes]
        assert [code for code, _ in results] == [0, 0, 0], [err for _, err in results]


@pytest.mark.backends("trio")  # the workers are processes: the test's own loop does not matter
async def test_with_three_idle_workers_one_job_wakes_one_claim(
    ledger: psycopg.Connection[Any], fleet: list[tuple[subprocess.Popen[str], int]]
) -> None:
    conn = ledger
    workers = "SELECT count(*) FROM notifyworker.workers WHERE free_slots > 0"
    await eventually(lambda: scalar(conn, workers) == 3, within=60)
    # Two more beats each: every worker has read the others as free.
    for _ in range(2):
        since = scalar(conn, "SELECT max(heartbeat_at) FROM notifyworker.workers")
        beaten = "SELECT min(heartbeat_at) > %s FROM notifyworker.workers"
        await eventually(lambda: scalar(conn, beaten, since) is True)  # noqa: B023
    before = sum(claims(port) for _, port in fleet)
    jobs = 12
    for n in range(1, jobs + 1):
        # One per transaction, each once the last is done: every worker is idle each time.
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, payload) VALUES ('ledger', %s)",
            (f'{{"n": {n}}}',),
        )
        # Polls are 10 minutes apart: only a wake-up can start it this soon.
        await eventually(lambda: scalar(conn, "SELECT count(*) FROM ledger") == n)  # noqa: B023
    ran = sum(claims(port) for _, port in fleet) - before
    assert scalar(conn, "SELECT count(DISTINCT n) FROM ledger") == jobs
    # Waking all three would be 3 claims a job (36); the token wakes one. Allowed
    # besides: the reconciliation's claims (one per worker per 2 s heartbeat).
    assert jobs <= ran <= jobs + 6, ran
    assert scalar(conn, "SELECT count(DISTINCT pid) FROM ledger") >= 2  # the jobs spread
