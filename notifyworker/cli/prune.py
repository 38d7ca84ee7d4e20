"""`notifyworker prune`: retention by hand, in the same bounded batches as the workers'."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from notifyworker import db, store
from notifyworker.cli.options import DatabaseUrl, DatabaseUrlFile, settings_from
from notifyworker.db import Session
from notifyworker.errors import ConfigError
from notifyworker.models import DURATION_FORMAT, FINAL_STATUSES, Retention, parse_duration


def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help=f"Delete every finished job (done, failed or cancelled) that finished longer "
            f"ago than this: {DURATION_FORMAT}. Default: each status's retention setting.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
    database_url_file: DatabaseUrlFile = None,
) -> None:
    """Delete finished jobs past their retention now, in batches, and say how many."""
    retention = None
    if older_than is not None:
        try:
            retention = Retention.everything_older_than(parse_duration(older_than))
        except ValueError as exc:
            raise ConfigError(f"--older-than: {exc}") from None
    settings = settings_from(
        database_url=database_url, database_url_file=database_url_file, log_level="WARNING"
    )
    retention = retention or settings.retention()
    if not retention.rules():
        print("nothing to prune: every status is kept forever (NOTIFYWORKER_RETENTION_*)")
        return
    deleted = db.run_once(settings.url(), prune_all, retention, settings.prune_batch)
    total = sum(deleted.values())
    parts = ", ".join(f"{deleted[s]} {s}" for s in FINAL_STATUSES if deleted.get(s))
    print(f"removed {total} finished job(s)" + (f" ({parts})" if parts else ""))


def prune_all(s: Session, retention: Retention, batch: int) -> dict[str, int]:
    """Batches until one is not full, each its own transaction, with the workers' pauses."""
    deleted: dict[str, int] = {}
    while True:
        began = time.monotonic()
        report = store.prune(s, retention, batch)
        for status, jobs in report.deleted.items():
            deleted[status] = deleted.get(status, 0) + jobs
        if not report.full:
            return deleted
        time.sleep(max(time.monotonic() - began, store.PRUNE_MIN_PAUSE))
