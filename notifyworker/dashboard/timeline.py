"""A job's story as a timeline, from the columns its row keeps.

The row keeps the latest time of each step (the last claim, the last start)
and counts of the rest (attempts, lost claims, retries), so the timeline
shows each dated step once, in order, and the counted ones as notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notifyworker.db import Row


@dataclass(frozen=True, slots=True)
class Step:
    at: datetime | None  # None: counted, not dated
    what: str
    detail: str = ""


def timeline(job: Row) -> list[Step]:
    dated: list[Step] = [Step(job["created_at"], "created", f"in queue {job['queue']}")]
    if job["run_at"] > job["created_at"]:
        dated.append(Step(job["run_at"], "due", "not to start before this time"))
    if job["retried_at"] is not None:
        detail = f"sent back to new after {job['attempts_before_retry']} start(s)"
        if job["error_before_retry"]:
            detail += f"; its error then: {job['error_before_retry']}"
        dated.append(Step(job["retried_at"], f"retried (retry {job['retries']})", detail))
    if job["queued_at"] is not None:
        dated.append(Step(job["queued_at"], "claimed", f"by worker {job['worker_id'] or '?'}"))
    if job["started_at"] is not None:
        pickup = (job["started_at"] - job["created_at"]).total_seconds() * 1000
        dated.append(
            Step(
                job["started_at"],
                f"started (attempt {job['attempts']} of {job['max_attempts']})",
                f"pickup {pickup:.1f} ms after it was created",
            )
        )
    if job["cancelled_at"] is not None:
        dated.append(Step(job["cancelled_at"], "cancel asked"))
    if job["finished_at"] is not None:
        dated.append(Step(job["finished_at"], job["status"], _ending(job)))
    dated.sort(key=lambda step: step.at or job["created_at"])
    notes: list[Step] = []
    if job["attempts"] > 1:
        notes.append(Step(None, f"{job['attempts']} attempts", "the earlier ones failed or hung"))
    if job["lost_claims"]:
        notes.append(
            Step(
                None,
                f"{job['lost_claims']} lost claim(s)",
                "taken back before it started: its worker died or the claim's answer was lost",
            )
        )
    return dated + notes


def _ending(job: Row) -> str:
    error: Any = job["error"]
    if job["status"] == "done":
        return "finished"
    return str(error) if error else ""
