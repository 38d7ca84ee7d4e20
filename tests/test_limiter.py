"""The fixed-interval limiter, on trio's virtual clock (autojump: no real sleeps)."""

from __future__ import annotations

import itertools
import math

import pytest
import trio
import trio.testing

from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import MAX_RATE, MIN_RATE


async def _starts(limiter: FixedIntervalLimiter, callers: int, each: int) -> list[float]:
    times: list[float] = []

    async def consumer() -> None:
        for _ in range(each):
            await limiter.wait()
            times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(consumer)
    return sorted(times)


async def test_starts_are_spaced_at_the_rate_across_consumers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(50)
    times = await _starts(limiter, callers=10, each=10)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 100
    assert min(gaps) == pytest.approx(0.02)
    # Absolute deadlines: 100 starts take exactly 99 intervals, no drift.
    assert times[-1] - times[0] == pytest.approx(99 * 0.02)


async def test_no_burst_after_idle(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FixedIntervalLimiter(10)
    await _starts(limiter, callers=1, each=3)
    await trio.sleep(60)  # a long idle period must not bank any credit
    resumed = trio.current_time()
    times = await _starts(limiter, callers=5, each=4)
    assert times[0] == pytest.approx(resumed)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(0.1)
    # In any 100 ms window after the idle, at most one start.
    assert all(sum(1 for t in times if start <= t < start + 0.1 - 1e-9) <= 1 for start in times)


async def test_rate_changes_while_running(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FixedIntervalLimiter(10)
    slow = await _starts(limiter, callers=2, each=5)
    limiter.rate = 100
    fast = await _starts(limiter, callers=2, each=5)
    assert [round(b - a, 6) for a, b in itertools.pairwise(slow)] == [0.1] * 9
    # The first fast start still honours the slot reserved at the old rate.
    assert [round(b - a, 6) for a, b in itertools.pairwise(fast[1:])] == [0.01] * 8


async def test_zero_means_unlimited(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FixedIntervalLimiter(0)
    before = trio.current_time()
    times = await _starts(limiter, callers=4, each=25)
    assert times == [before] * 100


async def test_cancelled_waiter_neither_blocks_nor_bursts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(10)
    await limiter.wait()
    first = trio.current_time()
    with trio.move_on_after(0.01):
        await limiter.wait()  # gives its ticket up before its slot
    await limiter.wait()
    assert trio.current_time() - first == pytest.approx(0.1)


async def test_starts_follow_ticket_order_not_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(10)
    tickets = [limiter.ticket() for _ in range(5)]
    order: list[int] = []

    async def start(ticket: int) -> None:
        await limiter.wait(ticket)
        order.append(ticket)

    async with trio.open_nursery() as nursery:
        for ticket in reversed(tickets):  # the youngest job's consumer asks first
            nursery.start_soon(start, ticket)
    assert order == tickets


async def test_abandoned_tickets_are_skipped(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FixedIntervalLimiter(10)
    first, second, third = limiter.ticket(), limiter.ticket(), limiter.ticket()
    limiter.abandon(second)  # say, an unknown task: it never starts
    with trio.fail_after(1):
        await limiter.wait(first)
        await limiter.wait(third)
    assert limiter.ticket() == 4


@pytest.mark.parametrize("rate", [-1, math.nan, math.inf, -math.inf, 1e-320, 0.0009, 100_001])
def test_a_rate_the_rule_refuses_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        FixedIntervalLimiter(rate)
    limiter = FixedIntervalLimiter(50)
    with pytest.raises(ValueError, match="rate must be"):
        limiter.rate = rate
    assert limiter.rate == 50


@pytest.mark.parametrize("rate", [0, MIN_RATE, 0.5, 2_000, MAX_RATE])
def test_every_rate_the_rule_accepts_is_taken(rate: float) -> None:
    limiter = FixedIntervalLimiter(50)
    limiter.rate = rate
    assert limiter.rate == rate
    assert FixedIntervalLimiter(rate).rate == rate


async def test_watchdog_cancels_a_job_past_its_local_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from notifyworker.consumer import watch_deadlines
    from notifyworker.coordination import RunningJobs
    from notifyworker.models import JobId

    running = RunningJobs()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_deadlines, running, 0.5)
        late, fine = trio.CancelScope(), trio.CancelScope()
        running.add(JobId(1), late, deadline=trio.current_time() + 2)
        running.add(JobId(2), fine, deadline=trio.current_time() + 60)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert late.cancel_called
    assert not fine.cancel_called
    assert "timed out" in (running.remove(JobId(1)) or "")
    assert running.remove(JobId(2)) is None
