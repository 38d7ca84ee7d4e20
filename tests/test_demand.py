"""Demand's retry schedule: every retry a worker schedules gets its own wake-up."""

from __future__ import annotations

import math

import anyio

from notifyworker.demand import Demand
from notifyworker.inflight import InFlight
from tests.test_inflight import job


async def test_each_scheduled_retry_keeps_its_own_due_time() -> None:
    demand = Demand(InFlight(2))
    start = anyio.current_time()
    demand.due_in(2.0)
    demand.due_in(1.0)  # scheduled later, due sooner
    assert math.isclose(demand.due, start + 1.005, abs_tol=0.001)
    assert not demand.retries_due(start + 0.5)
    assert demand.retries_due(start + 1.5)
    # The later retry is not forgotten once the first has been claimed.
    assert math.isclose(demand.due, start + 2.005, abs_tol=0.001)
    assert demand.retries_due(start + 2.5)
    assert demand.due == math.inf


async def test_free_slots_follow_the_jobs_held() -> None:
    inflight = InFlight(3)
    demand = Demand(inflight)
    demand.claimed(3, 0, demand.generation)
    assert (demand.free, demand.more_waiting) == (3, False)  # a short claim: the table is empty
    demand.work_arrived()
    first, _ = inflight.claimed(job(1), 0), inflight.claimed(job(2), 0)
    demand.claimed(3, 2, demand.generation)
    assert demand.free == 1
    inflight.release(first)
    demand.released()
    assert (demand.free, inflight.job_ids()) == (2, {2})


async def test_a_claim_held_back_by_a_limit_claims_again_once_outcomes_are_written() -> None:
    demand = Demand(InFlight(10))
    demand.claimed(asked=10, got=2, generation=demand.generation)
    demand.held_back(60.0)
    assert not demand.more_waiting
    demand.released()  # the table still counts the job: no claim yet
    assert not demand.more_waiting
    demand.outcomes_recorded()
    assert demand.more_waiting
    with anyio.fail_after(1):
        await demand.wait()
    demand.claimed(asked=10, got=0, generation=demand.generation)  # the table is empty now
    demand.outcomes_recorded()  # once: no claim per flush while nothing is held back
    assert not demand.more_waiting
