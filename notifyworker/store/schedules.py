"""The scheduler's units of work (sql/queries/scheduler.sql): declare, load, fire, skip."""

from __future__ import annotations

from datetime import datetime

from notifyworker.cron import Schedule, ScheduleRow, schedule_rows, tick_reference
from notifyworker.db import Session, json_param
from notifyworker.models import (
    JobId,
)


def declare_schedule(s: Session, schedule: Schedule) -> bool | None:
    """Create or update a declared schedule: True created, False updated, None as it was."""
    row = s.one(
        "declare_schedule",
        name=schedule.name,
        cron=schedule.cron,
        tz=schedule.tz,
        task=schedule.task,
        payload=json_param(schedule.payload),
        catch_up=schedule.catch_up,
    )
    return None if row is None else bool(row["created"])


def load_schedules(s: Session) -> tuple[list[ScheduleRow], datetime | None]:
    """Every schedule, and PostgreSQL's clock when they were read (None: no schedule)."""
    return schedule_rows(s.rows("load_schedules"))


def fire_tick(s: Session, schedule: ScheduleRow, tick: datetime) -> JobId | None:
    """Fire one tick: its job's id, or None when another replica fired it (or it moved on)."""
    with s.transaction():
        claimed = s.one(
            "fire_tick", name=schedule.name, cron=schedule.cron, tz=schedule.tz, tick=tick
        )
        if claimed is None:
            return None
        job = s.one(
            "enqueue_tick", name=schedule.name, object_id=tick_reference(schedule.name, tick)
        )
        assert job is not None
        return JobId(job["id"])


def skip_ticks(s: Session, schedule: ScheduleRow, tick: datetime) -> bool:
    """Move last_tick past missed ticks with no job (catch-up 'none'); False if already past."""
    row = s.one("skip_ticks", name=schedule.name, cron=schedule.cron, tz=schedule.tz, tick=tick)
    return row is not None
