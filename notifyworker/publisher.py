"""Publishers: the listener wakes on NOTIFY, the claimer takes jobs for the consumers.

The table is the truth and notifications are only hints: the claimer also
claims every `poll_interval`, after every (re)connect, and whenever a
consumer frees a slot while a backlog may exist, so a lost notification
delays a job by one poll interval at most and never loses it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import NoReturn

import trio

from notifyworker import store
from notifyworker.backoff import Backoff
from notifyworker.coordination import Demand
from notifyworker.db import DirectStatement, ListenConnection
from notifyworker.errors import ConnectionLost
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import Handover, JobId, WorkerId
from notifyworker.recorder import Recorder

log = logging.getLogger(__name__)

JOBS_CHANNEL = "notifyworker_jobs"
CANCEL_CHANNEL = "notifyworker_cancel"
LISTEN_QUERIES = ("listen_jobs", "listen_cancel", "listen_ping")
# How long the listener's self-check may take before the connection is
# declared dead; a healthy round trip takes about a millisecond.
SELF_CHECK_TIMEOUT = 2.0


async def listen(
    conn: ListenConnection,
    demand: Demand,
    on_cancel: Callable[[JobId], None],
    check_interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """LISTEN, report started only then, and turn notifications into wake-ups.

    A failure to connect the first time surfaces from `nursery.start`; later
    drops reconnect with backoff, and every reconnect counts as work arrived,
    since notifications sent while disconnected are gone. A listener that has
    heard nothing for `check_interval` NOTIFYs itself: a connection whose peer
    vanished without a FIN (a half-open one) would otherwise wait forever.
    """
    await conn.connect(LISTEN_QUERIES)
    task_status.started()
    backoff = Backoff()
    checks = itertools.count()
    while True:
        try:
            if backoff.attempt:
                await conn.connect(LISTEN_QUERIES)
                log.info("listener reconnected after %d attempt(s)", backoff.attempt)
                backoff.reset()
            demand.work_arrived()
            while True:
                with trio.move_on_after(check_interval) as quiet:
                    while True:
                        for channel, payload in await conn.wait():
                            _dispatch(channel, payload, demand, on_cancel)
                        # Heard something: the connection is alive, restart the clock.
                        quiet.deadline = trio.current_time() + check_interval
                if quiet.cancelled_caught:
                    token = f"{id(conn):x}-{next(checks)}"
                    for channel, payload in await conn.self_check(token, SELF_CHECK_TIMEOUT):
                        _dispatch(channel, payload, demand, on_cancel)
        except ConnectionLost as exc:
            conn.close()
            delay = backoff.next_delay()
            log.warning("listener connection lost (%s); reconnecting in %.2fs", exc, delay)
            await trio.sleep(delay)


def _dispatch(
    channel: str, payload: str, demand: Demand, on_cancel: Callable[[JobId], None]
) -> None:
    if channel == JOBS_CHANNEL:
        demand.work_arrived()
    elif channel == CANCEL_CHANNEL and payload.isdigit():
        on_cancel(JobId(int(payload)))


async def claim_forever(
    claim: DirectStatement,
    worker_id: WorkerId,
    demand: Demand,
    recorder: Recorder,
    limiter: FixedIntervalLimiter,
    send: trio.MemorySendChannel[Handover],
    poll_interval: float,
) -> NoReturn:
    """Claim whenever there is both room and maybe work; hand jobs to consumers.

    Owns `send`: when this task is cancelled the channel closes, which is how
    the consumers learn that no more jobs will come. The claim runs on the
    event loop (no thread hop) on its own connection. A claim that failed may
    still have committed with its answer lost: before claiming again, jobs the
    table says this worker holds but no consumer has go back to the queue.
    """
    backoff = Backoff()
    uncertain = False
    async with send:
        try:
            while True:
                if uncertain:
                    uncertain = not await _release_lost_claims(recorder, demand, backoff)
                    continue
                with trio.move_on_at(min(trio.current_time() + poll_interval, demand.due)) as poll:
                    await demand.wait()
                if demand.retries_due(trio.current_time()):
                    demand.work_arrived(wake=False)  # a retry fell due: claim it now
                elif poll.cancelled_caught:
                    demand.work_arrived(wake=False)  # the claim follows right here
                while demand.free > 0 and demand.more_waiting:
                    await recorder.below_limit()
                    asked, generation = demand.free, demand.generation
                    try:
                        rows = await claim.run(worker_id=worker_id, limit=asked)
                    except ConnectionLost as exc:
                        uncertain = True
                        delay = backoff.next_delay()
                        log.warning("claim failed (%s); retrying in %.2fs", exc, delay)
                        await trio.sleep(delay)
                        break
                    backoff.reset()
                    jobs = store.claimed_jobs(rows)
                    demand.claimed(asked, [job.id for job in jobs], generation)
                    for job in jobs:
                        # Start tickets are drawn here, in claim order, so the oldest
                        # job starts first whichever consumer trio happens to run first.
                        # The channel is never full: claims fit the free slots.
                        send.send_nowait(Handover(job, limiter.ticket()))
                    await trio.lowlevel.checkpoint()
        finally:
            claim.close()


async def _release_lost_claims(recorder: Recorder, demand: Demand, backoff: Backoff) -> bool:
    """Requeue jobs of a claim whose answer was lost; False while the database is away."""
    try:
        released = await recorder.release_lost_claims(demand.held)
    except ConnectionLost as exc:
        delay = backoff.next_delay()
        log.warning("checking for lost claims failed (%s); retrying in %.2fs", exc, delay)
        await trio.sleep(delay)
        return False
    if released:
        log.warning("%d job(s) of a claim whose answer was lost went back to the queue", released)
    demand.work_arrived()  # claim again at once
    return True
