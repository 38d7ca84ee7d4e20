"""The fixed-interval limiter, on trio's virtual clock (autojump: no real sleeps)."""

from __future__ import annotations

import itertools
import math

import anyio
import anyio.abc
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifyworker.limiter import NO_TICKET, WINDOW, FixedIntervalLimiter
from notifyworker.models import MAX_RATE, MIN_RATE


async def _starts(limiter: FixedIntervalLimiter, callers: int, each: int) -> list[float]:
    times: list[float] = []

    async def consumer() -> None:
        for _ in range(each):
            await limiter.wait()
            times.append(anyio.current_time())

    async with anyio.create_task_group() as nursery:
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
    await anyio.sleep(60)  # a long idle period must not bank any credit
    resumed = anyio.current_time()
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
    # Re-planned at once: the first fast start is one new interval after the last slow one.
    assert [round(b - a, 6) for a, b in itertools.pairwise([slow[-1], *fast])] == [0.01] * 10


async def _waiters(
    limiter: FixedIntervalLimiter, count: int, nursery: anyio.abc.TaskGroup
) -> list[float]:
    """`count` tickets drawn now, each waited for in its own task; their start times."""
    times: list[float] = []

    async def start(ticket: int) -> None:
        await limiter.wait(ticket)
        times.append(anyio.current_time())

    for _ in range(count):
        nursery.start_soon(start, limiter.ticket())
    return times


async def test_a_faster_rate_releases_waiting_tickets_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(0.001)
    await limiter.wait()  # the slot after this one is 1,000 s away
    with anyio.fail_after(10):  # not the 1,000 s the old rate planned
        async with anyio.create_task_group() as nursery:
            times = await _waiters(limiter, 3, nursery)
            await anyio.sleep(5)
            assert times == []
            changed = anyio.current_time()
            limiter.rate = 50
    assert times[0] - changed <= 1 / 50
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [0.02, 0.02]


async def test_a_slower_rate_moves_the_next_grant_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(50)
    times: list[float] = []
    two_started = anyio.Event()

    async def start(ticket: int) -> None:
        await limiter.wait(ticket)
        times.append(anyio.current_time())
        if len(times) == 2:
            two_started.set()

    async with anyio.create_task_group() as nursery:
        for _ in range(4):
            nursery.start_soon(start, limiter.ticket())
        await two_started.wait()
        limiter.rate = 0.001  # the third ticket's head sleeps until the old slot, 20 ms away
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [0.02, 1000.0, 1000.0]


async def test_rate_zero_releases_every_waiter_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(0.001)
    await limiter.wait()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            times = await _waiters(limiter, 20, nursery)
            await anyio.sleep(1)
            changed = anyio.current_time()
            limiter.rate = 0
    assert times == [changed] * 20
    assert limiter.ticket() == NO_TICKET


async def test_zero_means_unlimited(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FixedIntervalLimiter(0)
    before = anyio.current_time()
    times = await _starts(limiter, callers=4, each=25)
    assert times == [before] * 100


async def test_cancelled_waiter_neither_blocks_nor_bursts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(10)
    await limiter.wait()
    first = anyio.current_time()
    with anyio.move_on_after(0.01):
        await limiter.wait()  # gives its ticket up before its slot
    await limiter.wait()
    assert anyio.current_time() - first == pytest.approx(0.1)


async def test_starts_follow_ticket_order_not_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = FixedIntervalLimiter(10)
    tickets = [limiter.ticket() for _ in range(5)]
    order: list[int] = []

    async def start(ticket: int) -> None:
        await limiter.wait(ticket)
        order.append(ticket)

    async with anyio.create_task_group() as nursery:
        for ticket in reversed(tickets):  # the youngest job's consumer asks first
            nursery.start_soon(start, ticket)
    assert order == tickets


async def test_abandoned_tickets_are_skipped(autojump_clock: trio.testing.MockClock) -> None:
    limiter = FixedIntervalLimiter(10)
    first, second, third = limiter.ticket(), limiter.ticket(), limiter.ticket()
    limiter.abandon(second)  # say, an unknown task: it never starts
    with anyio.fail_after(1):
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


# A scenario: tickets arriving, the rate changing, virtual time passing.
_STEP = st.one_of(
    st.tuples(st.just("arrive"), st.integers(min_value=1, max_value=25)),
    st.tuples(
        st.just("rate"),
        st.sampled_from([0, MIN_RATE, 0.5, 9, 10, 15, 50, 999, 2_000])
        | st.floats(min_value=MIN_RATE, max_value=5_000),
    ),
    st.tuples(
        st.just("sleep"),
        st.sampled_from([0.0005, 0.01, 0.02, 0.1]) | st.floats(min_value=0, max_value=0.3),
    ),
)


def _cap(rate: float) -> float:
    return math.floor(rate * WINDOW) + 1 if rate else math.inf


@settings(max_examples=200, deadline=None)
# Unpaced starts, then a rate: they count in the window the first paced start sees.
@example(first=0, steps=[("arrive", 25), ("rate", 50), ("sleep", 0.01), ("arrive", 5)])
# A rate that flaps must not restart the schedule at now on every change.
@example(first=10, steps=[("arrive", 20), *[("rate", 9), ("rate", 10)] * 5, ("sleep", 0.05)])
@given(first=st.sampled_from([0, 10, 50, 2_000]), steps=st.lists(_STEP, max_size=25))
def test_no_start_precedes_its_slot_and_no_window_overflows_across_rate_changes(
    first: float, steps: list[tuple[str, float]]
) -> None:
    history: list[tuple[float, float]] = []  # (when, rate) for every change
    paced: list[tuple[int, float, float]] = []  # (ticket, slot, start)
    starts: list[float] = []

    async def scenario() -> None:
        limiter = FixedIntervalLimiter(first)
        history.append((anyio.current_time(), first))

        async def start(ticket: int) -> None:
            slot = await limiter.wait(ticket)
            starts.append(anyio.current_time())
            if ticket != NO_TICKET:
                paced.append((ticket, slot, anyio.current_time()))

        async with anyio.create_task_group() as nursery:
            for kind, value in steps:
                if kind == "arrive":
                    for _ in range(int(value)):
                        nursery.start_soon(start, limiter.ticket())
                elif kind == "rate":
                    limiter.rate = value
                    history.append((anyio.current_time(), value))
                else:
                    await anyio.sleep(value)

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))

    def rates_during(begin: float, end: float) -> list[float]:
        """Every rate in force at some moment of [begin, end] (both sides of a change)."""
        before = [rate for when, rate in history if when < begin][-1:]
        return before + [rate for when, rate in history if begin <= when <= end]

    paced.sort()
    assert [ticket for ticket, _, _ in paced] == list(range(1, len(paced) + 1))
    assert all(start >= slot for _, slot, start in paced)  # no start precedes its slot
    for (_, slot_before, start_before), (_, slot, start) in itertools.pairwise(paced):
        # Slots are one interval apart, at the fastest rate in force in between.
        interval = min(1 / rate if rate else 0 for rate in rates_during(start_before, start))
        assert slot >= slot_before + interval - 1e-9
    for start in starts:
        in_window = sum(1 for other in starts if start - WINDOW + 1e-9 < other <= start)
        assert in_window <= max(_cap(rate) for rate in rates_during(start, start))
