"""Ownership: which of the attempts this worker holds are still its own, per the table.

The table decides whether a job is cancelled, retried or rescued; a worker
only hears about it, through a NOTIFY that any role may send, a refused mark,
or by finding itself declared dead. None of those is taken on trust: each is
a reason to ask the table about the attempts concerned, and an attempt is
stopped here only when the table says it is no longer this worker's (its
claim stamp moved on, or it left `queued`/`running`). The heartbeat asks
about every held attempt each beat, so a lost notification costs one beat.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import anyio

from notifyworker import store
from notifyworker.backoff import Retrying
from notifyworker.db import Database
from notifyworker.inflight import Held, InFlight
from notifyworker.models import JobId, WorkerId

log = logging.getLogger(__name__)


class Ownership:
    def __init__(self, db: Database, worker_id: WorkerId, inflight: InFlight) -> None:
        self._db = db
        self._worker_id = worker_id
        self._inflight = inflight
        self._asked: set[JobId] = set()
        self._everything = False
        self._wake = anyio.Event()
        self.retrying = Retrying("checking held jobs against the table")

    def ask(self, job_id: JobId) -> None:
        """A cancel was announced for this job: check it, if this worker holds it."""
        if job_id in self._inflight:
            self._asked.add(job_id)
            self._wake.set()

    def ask_all(self) -> None:
        """Check every attempt held (notifications may have been lost)."""
        if len(self._inflight):
            self._everything = True
            self._wake.set()

    async def check_forever(self) -> NoReturn:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.check()

    async def check(self, *, everything: bool = False) -> list[Held]:
        """Ask the table once; stop and return the attempts that are no longer ours."""
        if everything or self._everything:
            attempts = list(self._inflight)
        else:
            attempts = [held for job_id in self._asked for held in self._inflight.attempts(job_id)]
        asked, self._asked, self._everything = self._asked, set(), False
        if not attempts:
            return []
        try:
            verdicts = await self._db.run(
                store.attempts_not_ours,
                self._worker_id,
                [(held.job.id, held.job.claimed_at) for held in attempts],
            )
        except Exception as exc:  # noqa: BLE001 - asked again after a pause
            self._asked |= asked
            self._everything = self._everything or everything
            self._wake.set()
            await self.retrying.failed(exc)
            return []
        self.retrying.succeeded()
        by_attempt = {(held.job.id, held.job.claimed_at): held for held in attempts}
        stopped = []
        for verdict in verdicts:
            held = by_attempt.get((verdict.job_id, verdict.claimed_at))
            if held is not None:
                log.info("job %s stopped here: %s", verdict.job_id, verdict.reason)
                held.cancel(verdict.reason)
                stopped.append(held)
        return stopped

    async def stop_stale(self, limit: float) -> int:
        """After being declared dead: stop what is no longer ours, and wait (up to
        `limit`) for those handlers to end, so they never overlap a new claim."""
        stale = await self.check(everything=True)
        with anyio.move_on_after(limit):
            await self._inflight.wait_released(stale)
        return len(stale)
