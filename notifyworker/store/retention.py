"""The pruner's units of work: finished jobs past their retention, a batch at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from notifyworker.db import Session
from notifyworker.errors import DatabaseError
from notifyworker.models import (
    PruneReport,
    Retention,
    WorkerId,
)

# After a full batch (more jobs are due), the fleet's next batch waits at least
# this long, and at least as long as the batch took: deleting takes at most
# half of one connection's time, however large the backlog.
PRUNE_MIN_PAUSE = 0.05


def prune(s: Session, retention: Retention, limit: int) -> PruneReport:
    """Delete one batch of at most `limit` finished jobs past their retention period.

    No lease: `notifyworker prune` sends it as it is; the worker's pruner
    through `prune_round`. Either may run beside the other: a row one holds
    the other skips.
    """
    rules = retention.rules()
    if not rules:
        return PruneReport({}, full=False)
    rows = s.rows(
        "prune_finished",
        statuses=[status for status, _ in rules],
        older_than=[seconds for _, seconds in rules],
        limit=limit,
    )
    deleted = {row["status"]: row["jobs"] for row in rows}
    return PruneReport(deleted, full=sum(deleted.values()) >= limit)


@dataclass(frozen=True)
class PruneRound:
    report: PruneReport | None  # None: not this replica's turn (leased elsewhere, or not due)
    next_in: float  # seconds until this replica should look again


def prune_round(
    s: Session, worker_id: WorkerId, retention: Retention, limit: int, interval: float
) -> PruneRound:
    """One batch of the fleet's pruner, if its lease is free and the batch is due.

    A full batch makes the next one due after a short pause (as long as this
    one took, at least PRUNE_MIN_PAUSE); a partial one, after `interval`.
    """
    with s.transaction():
        lease = s.one("prune_lease")
        if lease is None:
            raise DatabaseError("notifyworker.pruner has no row: run `notifyworker migrate`")
        if not lease["acquired"]:
            return PruneRound(None, min(max(lease["due_in"], PRUNE_MIN_PAUSE), interval))
        began = time.monotonic()
        report = prune(s, retention, limit)
        s.execute("prune_queue_keys")
        pause = max(time.monotonic() - began, PRUNE_MIN_PAUSE) if report.full else interval
        s.execute("prune_done", worker_id=worker_id, pause=pause)
    return PruneRound(report, pause)
