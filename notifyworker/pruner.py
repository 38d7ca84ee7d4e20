"""The pruner: retention, for the whole fleet, one bounded batch at a time.

Finished jobs (`done`, `failed`, `cancelled`) older than their status's
retention period are deleted in batches of `prune_batch`, by one replica at a
time under a lease of its own (notifyworker.pruner), never the sweeper's: a
batch never delays a sweep, here or elsewhere. The lease row also says when
the fleet's next batch is due, so a backlog is worked off in batches with
pauses between them (deleting takes at most half of one connection's time),
and an idle table costs one index probe per `prune_interval`, however many
replicas run. A failure only skips batches: the loop never dies of one.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import anyio

from notifyworker import store
from notifyworker.backoff import Retrying
from notifyworker.db import Database
from notifyworker.metrics import Metrics
from notifyworker.models import Retention, WorkerId

log = logging.getLogger(__name__)


class Pruner:
    def __init__(
        self,
        db: Database,
        worker_id: WorkerId,
        retention: Retention,
        batch: int,
        interval: float,
        metrics: Metrics,
    ) -> None:
        self._db = db
        self._worker_id = worker_id
        self._retention = retention
        self._batch = batch
        self._interval = interval
        self._metrics = metrics
        self.retrying = Retrying("prune")

    async def prune_forever(self) -> NoReturn:
        """A batch whenever the fleet's next one is due and this replica gets the lease."""
        while True:
            try:
                turn = await self._db.run(
                    store.prune_round,
                    self._worker_id,
                    self._retention,
                    self._batch,
                    self._interval,
                )
            except Exception as exc:  # noqa: BLE001 - the next batch tries again
                await self.retrying.failed(exc)
                continue
            self.retrying.succeeded()
            if turn.report is not None and turn.report.total:
                self._metrics.pruned(turn.report)
                log.debug(
                    "pruner: deleted %d finished job(s) %s",
                    turn.report.total,
                    turn.report.deleted,
                )
            await anyio.sleep(turn.next_in)
