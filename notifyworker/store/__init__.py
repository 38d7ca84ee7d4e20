"""The worker's units of work, each one thread hop: `store.fn` at every call site.

What a running worker sends, by the part that sends it: its jobs (`jobs`:
registry, marks, ownership, the sweep, counts), retention (`retention`) and
schedules (`schedules`). The operator's are in `admin`, migrations in `schema`.
Each function is sync and takes a `Session`; the service runs it through
`Database.run`.
"""

from __future__ import annotations

from notifyworker.store.jobs import (
    COUNT_CAP,
    LOST_CLAIMS_LIMIT,
    SWEEP_BATCH,
    Beat,
    attempts_not_ours,
    heartbeat,
    job_counts,
    record_marks,
    register_worker,
    release_lost_claims,
    requeue_unstarted,
    sweep,
    unregister_worker,
    wake_fleet,
)
from notifyworker.store.retention import PRUNE_MIN_PAUSE, PruneRound, prune, prune_round
from notifyworker.store.schedules import (
    declare_schedule,
    fire_tick,
    load_schedules,
    skip_ticks,
)

__all__ = [
    "COUNT_CAP",
    "LOST_CLAIMS_LIMIT",
    "PRUNE_MIN_PAUSE",
    "SWEEP_BATCH",
    "Beat",
    "PruneRound",
    "attempts_not_ours",
    "declare_schedule",
    "fire_tick",
    "heartbeat",
    "job_counts",
    "load_schedules",
    "prune",
    "prune_round",
    "record_marks",
    "register_worker",
    "release_lost_claims",
    "requeue_unstarted",
    "skip_ticks",
    "sweep",
    "unregister_worker",
    "wake_fleet",
]
