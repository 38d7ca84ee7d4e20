"""Publishers: the listener wakes on NOTIFY, the claimer takes jobs for the consumers.

The table is the truth and notifications are only hints: the claimer also
claims every `poll_interval`, after every (re)connect, and whenever a
consumer frees a slot while a backlog may exist, so a lost notification
delays a job by one poll interval at most and never loses it.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import trio

from notifyworker import store
from notifyworker.backoff import Backoff
from notifyworker.coordination import Demand, RunningJobs
from notifyworker.db import DirectStatement, ListenConnection
from notifyworker.errors import ConnectionLost
from notifyworker.limiter import FixedIntervalLimiter
from notifyworker.models import Handover, JobId, WorkerId
from notifyworker.recorder import Recorder

log = logging.getLogger(__name__)

JOBS_CHANNEL = "notifyworker_jobs"
CANCEL_CHANNEL = "notifyworker_cancel"
LISTEN_QUERIES = ("listen_jobs", "listen_cancel")


async def listen(
    conn: ListenConnection,
    demand: Demand,
    running: RunningJobs,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """LISTEN, report started only then, and turn notifications into wake-ups.

    A failure to connect the first time surfaces from `nursery.start`; later
    drops reconnect with backoff, and every reconnect counts as work arrived,
    since notifications sent while disconnected are gone.
    """
    await conn.connect(LISTEN_QUERIES)
    task_status.started()
    backoff = Backoff()
    while True:
        try:
            if backoff.attempt:
                await conn.connect(LISTEN_QUERIES)
                log.info("listener reconnected after %d attempt(s)", backoff.attempt)
                backoff.reset()
            demand.work_arrived()
            while True:
                for channel, payload in await conn.wait():
                    _dispatch(channel, payload, demand, running)
        except ConnectionLost as exc:
            conn.close()
            delay = backoff.next_delay()
            log.warning("listener connection lost (%s); reconnecting in %.2fs", exc, delay)
            await trio.sleep(delay)


def _dispatch(channel: str, payload: str, demand: Demand, running: RunningJobs) -> None:
    if channel == JOBS_CHANNEL:
        demand.work_arrived()
    elif (
        channel == CANCEL_CHANNEL
        and payload.isdigit()
        and running.cancel(JobId(int(payload)), "cancelled by the sweeper")
    ):
        log.info("job %s cancelled by the sweeper while running here", payload)


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
    event loop (no thread hop) on its own connection.
    """
    backoff = Backoff()
    async with send:
        try:
            while True:
                with trio.move_on_after(poll_interval) as poll:
                    await demand.wait()
                if poll.cancelled_caught:
                    demand.work_arrived(wake=False)  # the claim follows right here
                while demand.free > 0 and demand.more_waiting:
                    await recorder.below_limit()
                    asked, generation = demand.free, demand.generation
                    try:
                        rows = await claim.run(worker_id=worker_id, limit=asked)
                    except ConnectionLost as exc:
                        delay = backoff.next_delay()
                        log.warning("claim failed (%s); retrying in %.2fs", exc, delay)
                        await trio.sleep(delay)
                        continue
                    backoff.reset()
                    jobs = store.claimed_jobs(rows)
                    demand.claimed(asked, len(jobs), generation)
                    for job in jobs:
                        # Start tickets are drawn here, in claim order, so the oldest
                        # job starts first whichever consumer trio happens to run first.
                        # The channel is never full: claims fit the free slots.
                        send.send_nowait(Handover(job, limiter.ticket()))
                    await trio.lowlevel.checkpoint()
        finally:
            claim.close()
