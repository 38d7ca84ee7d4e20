"""The listener: LISTEN on a dedicated connection and turn notifications into hints.

The table is the truth and notifications are only hints: the claimer also
claims every `poll_interval`, after every (re)connect, and whenever a
consumer frees a slot while a backlog may exist, so a lost notification
delays a job by one poll interval at most and never loses it.

NOTIFY needs no privilege: any role that can connect may send anything on
these channels. So every payload is parsed strictly, nothing a notification
carries can stop the listener, and a cancel is only a reason to ask the
table (see `ownership`), never an order. An insert's wake-up token only
chooses which worker claims first (see `rendezvous`): a forged one costs a
claim, never a job.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from typing import NoReturn

import anyio
import anyio.abc

from notifyworker.backoff import Retrying
from notifyworker.db import ListenConnection
from notifyworker.demand import Demand
from notifyworker.models import JobId
from notifyworker.rendezvous import parse_token

log = logging.getLogger(__name__)

JOBS_CHANNEL = "notifyworker_jobs"
CANCEL_CHANNEL = "notifyworker_cancel"
LISTEN_QUERIES = ("listen_jobs", "listen_cancel", "listen_ping")
# How long the listener's self-check may take before the connection is
# declared dead; a healthy round trip takes about a millisecond.
SELF_CHECK_TIMEOUT = 2.0
# A job id as notifyworker.cancel() and the sweeper send it: ASCII digits
# only (str.isdigit() would take '①', which int() refuses), no sign, no
# leading zero, at most a bigint.
_JOB_ID = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
_MAX_JOB_ID = 2**63 - 1


def parse_job_id(payload: str) -> JobId | None:
    """The job id a cancel notification names, or None for anything else."""
    if _JOB_ID.fullmatch(payload) is None:
        return None
    value = int(payload)
    return JobId(value) if value <= _MAX_JOB_ID else None


def deaf(conn: ListenConnection) -> Callable[[float, float], str | None]:
    """The listener's readiness check: a worker that cannot hear is not ready."""

    def check(now: float, within: float) -> str | None:
        return None if conn.listening else "not listening: the listener connection is down"

    return check


async def listen(
    conn: ListenConnection,
    demand: Demand,
    on_cancel: Callable[[JobId], None],
    on_reconnect: Callable[[], None],
    check_interval: float,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """LISTEN, report started only then, and turn notifications into wake-ups.

    A failure to connect the first time surfaces from `TaskGroup.start`; later
    drops reconnect with backoff, and every reconnect counts as work arrived
    and calls `on_reconnect`, since notifications sent while disconnected
    (cancels too) are gone. A listener that has heard nothing for
    `check_interval` NOTIFYs itself: a connection whose peer vanished without
    a FIN (a half-open one) would otherwise wait forever.
    """
    await conn.connect(LISTEN_QUERIES)
    task_status.started()
    retrying = Retrying("listener")
    checks = itertools.count()
    while True:
        try:
            if retrying.attempt:
                await conn.connect(LISTEN_QUERIES)
                log.info("listener reconnected after %d attempt(s)", retrying.attempt)
                retrying.succeeded()
                on_reconnect()
            demand.work_arrived()
            while True:
                with anyio.move_on_after(check_interval) as quiet:
                    while True:
                        for channel, payload in await conn.wait():
                            _dispatch(channel, payload, demand, on_cancel)
                        # Heard something: the connection is alive, restart the clock.
                        quiet.deadline = anyio.current_time() + check_interval
                if quiet.cancelled_caught:
                    token = f"{id(conn):x}-{next(checks)}"
                    for channel, payload in await conn.self_check(token, SELF_CHECK_TIMEOUT):
                        _dispatch(channel, payload, demand, on_cancel)
        except Exception as exc:  # noqa: BLE001 - the listener outlives every failure
            conn.close()
            await retrying.failed(exc)


def _dispatch(
    channel: str, payload: str, demand: Demand, on_cancel: Callable[[JobId], None]
) -> None:
    try:
        if channel == JOBS_CHANNEL:
            # An insert's token wakes the one worker it designates; any other
            # payload (a retry, a requeue, a queue's change, a stranger's) wakes all.
            token = parse_token(payload)
            if token is None:
                demand.work_arrived()
            else:
                demand.job_inserted(token)
        elif channel == CANCEL_CHANNEL:
            job_id = parse_job_id(payload)
            if job_id is not None:
                on_cancel(job_id)
    except Exception:  # a bug, never the notification's doing: the listener stays
        log.exception("notification on %s not handled", channel)
