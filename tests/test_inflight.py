"""The ledger of held attempts and the consumer, in process: no server, trio's virtual clock.

The recorder here is real but never flushed (its database is never opened),
so the marks a consumer leaves can be read straight from its buffers.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import anyio
import trio
import trio.testing
from pydantic import BaseModel

from notifyworker.consumer import ConsumerContext, consume, watch_deadlines
from notifyworker.db import Database
from notifyworker.demand import Demand
from notifyworker.handover import Receiver, Sender, open_handover
from notifyworker.inflight import Held, InFlight, Stage
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import ClaimedJob, JobId, RetryPolicy, WorkerId
from notifyworker.recorder import Recorder
from notifyworker.tasks import Registry

EPOCH = datetime(2026, 11, 30, tzinfo=UTC)


def job(n: int, *, claim: int = 0, task: str = "wait", timeout: float = 60.0) -> ClaimedJob:
    """Job n's attempt as claimed at EPOCH + `claim` seconds."""
    return ClaimedJob(
        id=JobId(n),
        task=task,
        payload="{}",
        timeout=timeout,
        claimed_at=EPOCH + timedelta(seconds=claim),
        attempt=claim + 1,
        max_attempts=3,
        created_at=EPOCH,
        stored_bytes=2,
    )


class Empty(BaseModel):
    pass


class Handlers:
    """Test tasks: `wait` runs until cancelled, `exit` calls sys.exit()."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled = 0
        self.registry = Registry()
        self.registry.add("wait", self.wait)
        self.registry.add("exit", self.exit)

    async def wait(self, payload: Empty) -> None:
        self.started.append(len(self.started))
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise

    async def exit(self, payload: Empty) -> None:
        sys.exit(3)


def context(handlers: Handlers, slots: int) -> tuple[ConsumerContext, Recorder]:
    inflight = InFlight(slots)
    demand = Demand(inflight)
    # Never opened: the consumer only leaves marks in the recorder's buffers.
    recorder = Recorder(
        Database("postgresql://unused", size=1),
        WorkerId("w"),
        inflight,
        RetryPolicy(1.0, 60.0),
        demand,
    )
    ctx = ConsumerContext(
        registry=handlers.registry,
        recorder=recorder,
        limiter=FixedIntervalLimiter(0),
        demand=demand,
        inflight=inflight,
        max_payload_bytes=1000,
        backstop_grace=1.0,
    )
    return ctx, recorder


def outcomes(recorder: Recorder) -> list[tuple[int, str, str | None]]:
    return [(mark.job_id, mark.outcome.status, mark.outcome.error) for mark in recorder._finishes]


async def test_two_attempts_of_one_job_keep_their_own_entries() -> None:
    inflight = InFlight(4)
    stale, fresh = inflight.claimed(job(1, claim=0), 0), inflight.claimed(job(1, claim=30), 0)
    stale_scope, fresh_scope = anyio.CancelScope(), anyio.CancelScope()
    stale.stage, stale.scope = Stage.RUNNING, stale_scope
    fresh.stage, fresh.scope = Stage.RUNNING, fresh_scope
    assert inflight.find(JobId(1), EPOCH) is stale
    assert inflight.find(JobId(1), EPOCH + timedelta(seconds=30)) is fresh
    stale.cancel("stale")
    assert (stale_scope.cancel_called, fresh_scope.cancel_called) == (True, False)
    assert inflight.release(stale) == "stale"
    assert (len(inflight), inflight.attempts(JobId(1))) == (1, [fresh])


async def test_a_released_entry_can_no_longer_cancel_its_consumers_next_job() -> None:
    inflight = InFlight(1)
    held = inflight.claimed(job(1), 0)
    consumer_scope = anyio.CancelScope()  # one scope serves job after job
    held.stage, held.scope = Stage.RUNNING, consumer_scope
    inflight.release(held)
    held.cancel("a verdict that came back after the job ended")
    assert not consumer_scope.cancel_called


async def test_watchdog_cancels_a_job_past_its_local_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inflight = InFlight(2)
    late, fine = inflight.claimed(job(1), 0), inflight.claimed(job(2), 0)
    for held, deadline in ((late, 2), (fine, 60)):
        held.stage, held.scope = Stage.RUNNING, anyio.CancelScope()
        held.deadline = anyio.current_time() + deadline
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(watch_deadlines, inflight, 0.5)
        await anyio.sleep(3)
        nursery.cancel_scope.cancel()
    assert late.scope is not None
    assert late.scope.cancel_called
    assert "timed out" in (inflight.release(late) or "")
    assert inflight.release(fine) is None


async def run_consumers(ctx: ConsumerContext, helds: list[Held], consumers: int) -> None:
    send: Sender[Held]
    recv: Receiver[Held]
    send, recv = open_handover(len(helds))
    async with anyio.create_task_group() as nursery:
        async with recv:
            for _ in range(consumers):
                nursery.start_soon(consume, recv.clone(), ctx)
        async with send:
            for held in helds:
                send.send_nowait(held)


async def test_a_handler_that_calls_sys_exit_fails_its_job_and_nothing_else(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handlers = Handlers()
    ctx, recorder = context(handlers, 2)
    helds = [ctx.inflight.claimed(job(1, task="exit"), 0), ctx.inflight.claimed(job(2), 0)]
    with anyio.move_on_after(5):
        await run_consumers(ctx, helds, consumers=1)  # one consumer: job 2 runs after job 1
    assert outcomes(recorder)[0] == (1, "failed", "handler raised SystemExit: 3")
    assert handlers.started == [0]  # the same consumer went on to job 2


async def test_an_attempt_cancelled_while_claimed_never_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handlers = Handlers()
    ctx, recorder = context(handlers, 2)
    held = ctx.inflight.claimed(job(1), 0)
    held.cancel("the table says it is not ours")
    await run_consumers(ctx, [held], consumers=1)
    assert handlers.started == []
    assert outcomes(recorder) == []  # the table already says so: nothing to record
    assert len(ctx.inflight) == 0


async def test_cancelling_the_stale_attempt_leaves_the_new_one_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handlers = Handlers()
    ctx, recorder = context(handlers, 2)
    stale, fresh = (
        ctx.inflight.claimed(job(1, claim=0), 0),
        ctx.inflight.claimed(job(1, claim=30), 0),
    )
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(run_consumers, ctx, [stale, fresh], 2)
        await anyio.sleep(1)
        assert handlers.started == [0, 1]
        stale.cancel("no longer this worker's")
        await anyio.sleep(1)
        assert (handlers.cancelled, fresh.stage) == (1, Stage.RUNNING)
        fresh.cancel("cancelled in the table")
    assert outcomes(recorder) == [
        (1, "cancelled", "no longer this worker's"),
        (1, "cancelled", "cancelled in the table"),
    ]
    assert [mark.claimed_at for mark in recorder._finishes] == [
        EPOCH,
        EPOCH + timedelta(seconds=30),
    ]
