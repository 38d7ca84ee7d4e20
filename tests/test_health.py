"""Readiness on its own: the order of reasons, without a worker or a database."""

from __future__ import annotations

import math
from dataclasses import dataclass

import anyio
import trio
import trio.testing

from notifyworker.health import Readiness, silent


@dataclass
class FakeDatabase:
    last_success: float = -math.inf


async def test_stopping_wins_then_the_phase_then_the_first_part_with_a_reason() -> None:
    readiness = Readiness(within=1.0)
    db = FakeDatabase()
    readiness.watch(silent(db), lambda now, within: "the recorder is stuck")
    assert readiness() == "starting"
    readiness.phase = None
    assert (readiness() or "").startswith("the database has not answered")
    db.last_success = anyio.current_time()
    assert readiness() == "the recorder is stuck"
    readiness.stopping = True
    assert readiness() == "stopping"


async def test_a_database_silent_for_longer_than_allowed_is_not_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    readiness = Readiness(within=3.0)
    readiness.phase = None
    db = FakeDatabase(last_success=anyio.current_time())
    readiness.watch(silent(db))
    await anyio.sleep(2.9)
    assert readiness() is None
    await anyio.sleep(0.2)
    assert readiness() == "the database has not answered for 3.1s"
