"""Retention: finished jobs past their period go, in bounded batches; nothing else ever does."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from notifyworker import config, db, store
from notifyworker.errors import ConfigError
from notifyworker.models import Retention, WorkerId
from tests.helpers import Calls, eventually, fast_settings, running_worker, scalar
from tests.test_cli import cli, one_line_error

DAY = 86_400.0
# The defaults: a day for done, a week for failed and cancelled.
DEFAULTS = Retention(DAY, 7 * DAY, 7 * DAY)


def finished(conn: psycopg.Connection[Any], status: str, ago: str, count: int = 1) -> list[int]:
    """`count` jobs that ended `status` `ago` (an interval) ago."""
    rows = conn.execute(
        "INSERT INTO notifyworker.jobs"
        " (task, status, worker_id, attempts, started_at, finished_at, cancelled_at)"
        " SELECT 'sleep', %(status)s, 'w', 1, now() - %(ago)s::interval,"
        "        now() - %(ago)s::interval,"
        "        CASE WHEN %(status)s = 'cancelled' THEN now() - %(ago)s::interval END"
        " FROM generate_series(1, %(count)s) RETURNING id",
        {"status": status, "ago": ago, "count": count},
    ).fetchall()
    return [row[0] for row in rows]


def unfinished(conn: psycopg.Connection[Any]) -> list[int]:
    """A job of each active status, all created (and, oddly, stamped finished) long ago."""
    ids = []
    for status, started in (("new", None), ("queued", None), ("running", "now()")):
        ids.append(
            scalar(
                conn,
                "INSERT INTO notifyworker.jobs"
                " (task, status, worker_id, created_at, started_at, finished_at)"
                f" VALUES ('sleep', %s, CASE WHEN %s <> 'new' THEN 'w' END,"
                f"         now() - interval '1 year', {started or 'NULL'},"
                "         now() - interval '1 year')"
                " RETURNING id",
                status,
                status,
            )
        )
    return ids


def remaining(conn: psycopg.Connection[Any]) -> set[int]:
    return {row[0] for row in conn.execute("SELECT id FROM notifyworker.jobs").fetchall()}


def test_old_finished_jobs_go_and_young_or_unfinished_ones_stay(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    expired = [
        *finished(conn, "done", "25 hours", 3),
        *finished(conn, "failed", "8 days", 2),
        *finished(conn, "cancelled", "8 days", 2),
    ]
    kept = [
        *finished(conn, "done", "23 hours", 2),
        *finished(conn, "failed", "6 days"),  # older than a day: a done job's age, not a failed's
        *finished(conn, "cancelled", "2 days"),
        *unfinished(conn),
    ]
    report = db.run_once(database_url, store.prune, DEFAULTS, 1000)
    assert report.deleted == {"done": 3, "failed": 2, "cancelled": 2}
    assert not report.full
    assert remaining(conn) == set(kept)
    assert not set(expired) & remaining(conn)


def test_a_status_kept_forever_is_never_pruned(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    done = finished(conn, "done", "10 years")
    failed = finished(conn, "failed", "2 hours")
    report = db.run_once(database_url, store.prune, Retention(None, 3600.0, None), 1000)
    assert report.deleted == {"failed": 1}
    assert remaining(conn) == set(done)
    assert failed
    nothing = db.run_once(database_url, store.prune, Retention(None, None, None), 1000)
    assert nothing.total == 0


def test_a_batch_is_bounded_across_statuses_and_oldest_first(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    oldest = finished(conn, "done", "30 days", 4)
    finished(conn, "done", "20 days", 8)
    finished(conn, "failed", "20 days", 8)
    totals = []
    while True:
        report = db.run_once(database_url, store.prune, DEFAULTS, 7)
        totals.append(report.total)
        assert report.full == (report.total == 7)
        if len(totals) == 1:
            assert not set(oldest) & remaining(conn)  # the oldest go first
        if not report.full:
            break
    assert totals == [7, 7, 6]
    assert remaining(conn) == set()


def test_a_job_locked_elsewhere_is_skipped_not_waited_for(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    held, free = finished(conn, "done", "2 days", 2)
    with psycopg.connect(database_url) as other:
        other.execute("SELECT FROM notifyworker.jobs WHERE id = %s FOR UPDATE", (held,))
        report = db.run_once(database_url, store.prune, DEFAULTS, 1000)
        other.rollback()
    assert report.deleted == {"done": 1}
    assert remaining(conn) == {held}
    assert free not in remaining(conn)


def test_one_replica_prunes_at_a_time_and_only_when_the_fleet_is_due(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    finished(conn, "done", "2 days", 5)
    me = WorkerId("me")
    with psycopg.connect(database_url) as other:
        other.execute("SELECT FROM notifyworker.pruner FOR UPDATE")
        leased = db.run_once(database_url, store.prune_round, me, DEFAULTS, 1000, 30.0)
        other.rollback()
    assert leased.report is None  # another replica's turn: skipped, not waited for
    assert remaining(conn)
    # A full batch: the next one is due after a short pause.
    full = db.run_once(database_url, store.prune_round, me, DEFAULTS, 3, 30.0)
    assert full.report is not None
    assert (full.report.total, full.report.full) == (3, True)
    assert store.PRUNE_MIN_PAUSE <= full.next_in < 30.0
    due = scalar(conn, "SELECT due_at - clock_timestamp() FROM notifyworker.pruner")
    assert due.total_seconds() <= full.next_in
    conn.execute("UPDATE notifyworker.pruner SET due_at = clock_timestamp()")
    # A partial batch: the fleet's next one waits the whole interval, whoever asks.
    rest = db.run_once(database_url, store.prune_round, me, DEFAULTS, 3, 30.0)
    assert rest.report is not None
    assert (rest.report.total, rest.report.full) == (2, False)
    assert rest.next_in == 30.0
    early = db.run_once(database_url, store.prune_round, WorkerId("other"), DEFAULTS, 3, 30.0)
    assert early.report is None
    assert 25.0 < early.next_in <= 30.0
    assert scalar(conn, "SELECT pruned_by FROM notifyworker.pruner") == "me"


async def test_a_worker_prunes_expired_jobs_in_batches_by_itself(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    expired = finished(conn, "done", "2 hours", 35)
    young = finished(conn, "done", "10 minutes")
    active = unfinished(conn)
    settings = fast_settings(database_url, retention_done=3600, prune_batch=10, prune_interval=0.2)
    async with running_worker(settings, Calls().registry) as worker:
        await eventually(lambda: not set(expired) & remaining(conn))
        assert scalar(conn, "SELECT pruned_by FROM notifyworker.pruner") == worker.worker_id
    assert remaining(conn) == {*young, *active}


async def test_the_pruner_outlives_a_failure_and_never_holds_up_the_sweeper(
    database_url: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="notifyworker")
    conn.execute("DELETE FROM notifyworker.pruner")  # a broken schema: every batch fails
    old = finished(conn, "failed", "30 days", 3)
    settings = fast_settings(database_url, prune_interval=0.1)
    async with running_worker(settings, Calls().registry):
        await eventually(
            lambda: any("prune failed" in r.getMessage() for r in caplog.records), within=5
        )
        swept = scalar(conn, "SELECT swept_at FROM notifyworker.sweeper")
        await eventually(lambda: scalar(conn, "SELECT swept_at FROM notifyworker.sweeper") > swept)
        conn.execute("INSERT INTO notifyworker.pruner DEFAULT VALUES")  # repaired
        await eventually(lambda: not set(old) & remaining(conn), within=15)


def test_prune_command_removes_what_it_says(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    finished(conn, "done", "3 hours", 5)
    finished(conn, "failed", "2 hours", 2)
    young = [*finished(conn, "done", "30 minutes", 2), *finished(conn, "cancelled", "5 minutes")]
    active = unfinished(conn)
    env = {"DATABASE_URL": database_url, "NOTIFYWORKER_PRUNE_BATCH": "3"}
    result = cli("prune", "--older-than", "1h", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "removed 7 finished job(s) (5 done, 2 failed)"
    assert remaining(conn) == {*young, *active}
    # Without --older-than: each status's own retention setting.
    env["NOTIFYWORKER_RETENTION_DONE"] = "10m"
    result = cli("prune", env=env)
    assert result.stdout.strip() == "removed 2 finished job(s) (2 done)", result.stderr
    result = cli("prune", env=env)
    assert result.stdout.strip() == "removed 0 finished job(s)"
    assert remaining(conn) == {young[-1], *active}
    forever = {f"NOTIFYWORKER_RETENTION_{s}": "forever" for s in ("DONE", "FAILED", "CANCELLED")}
    result = cli("prune", env={**env, **forever})
    assert result.stdout.strip().startswith("nothing to prune: every status is kept forever")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("soon", "is not a duration"),
        ("1y", "is not a duration"),
        ("12 hours", "is not a duration"),
        ("", "is not a duration"),
        ("0", "must be more than 0"),
        ("-5m", "must be more than 0"),
        ("40000d", "must be at most 36500d"),
    ],
)
def test_prune_refuses_a_bad_duration_in_one_line(value: str, says: str) -> None:
    # Refused before any connection: the URL leads nowhere.
    result = cli(
        "prune", f"--older-than={value}", env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"}
    )
    assert result.returncode == 2
    line = one_line_error(result)
    assert "--older-than" in line
    assert says in line


@pytest.mark.parametrize("name", ["retention_done", "retention_failed", "retention_cancelled"])
@pytest.mark.parametrize("value", [0, -1, "0", "-3d", "0s", "nan", "whenever"])
def test_retention_settings_refuse_zero_negative_and_nonsense(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"invalid settings: {name}: "):
        config.load(**{name: value})


def test_retention_settings_take_durations_and_forever() -> None:
    settings = config.load(retention_done="12h", retention_failed="forever", retention_cancelled=90)
    assert settings.retention() == Retention(43_200.0, None, 90.0)
    assert config.load().retention() == DEFAULTS


def test_a_bad_retention_in_the_environment_stops_run_in_one_line() -> None:
    result = cli(
        "run",
        env={
            "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
            "NOTIFYWORKER_RETENTION_FAILED": "-1d",
        },
    )
    assert result.returncode == 2
    assert "retention_failed: Value error, must be more than 0" in one_line_error(result)


def test_the_pruner_forgets_per_key_start_slots_long_past(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO notifyworker.queue_keys (queue, key, next_start_at) VALUES"
        " ('q', 'old', now() - interval '2 minutes'), ('q', 'recent', now())"
    )
    db.run_once(database_url, store.prune_round, WorkerId("me"), DEFAULTS, 10, 30.0)
    assert scalar(conn, "SELECT array_agg(key) FROM notifyworker.queue_keys") == ["recent"]
