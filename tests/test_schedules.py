"""Cron schedules against a real PostgreSQL: one job per tick across worker processes and a
rolling restart, catch-up after downtime, pause, rows stored by hand, code declarations, the CLI."""

from __future__ import annotations

import itertools
import logging
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from notifyworker import admin, db
from notifyworker.tasks import Registry
from tests.chaos.harness import Fleet, db_now, until_workers
from tests.helpers import Calls, Nothing, eventually, fast_settings, running_worker, scalar
from tests.test_cli import cli, one_line_error

SECOND = timedelta(seconds=1)


def add(conn: psycopg.Connection[Any], name: str, cron: str, **columns: Any) -> None:
    """A schedule inserted as an application would, with the `record` task by default."""
    values = {"name": name, "cron": cron, "task": "record", "payload": '{"n": 1}', **columns}
    conn.execute(
        f"INSERT INTO notifyworker.schedules ({', '.join(values)})"
        f" VALUES ({', '.join(['%s'] * len(values))})".encode(),
        list(values.values()),
    )


def jobs_per_tick(conn: psycopg.Connection[Any], name: str) -> dict[datetime, int]:
    """The jobs of a schedule by tick, read from each job's object_id."""
    rows = conn.execute(
        "SELECT object_id, count(*) FROM notifyworker.jobs WHERE object_id LIKE %s GROUP BY 1",
        (f"schedule:{name}@%",),
    ).fetchall()
    return {datetime.fromisoformat(ref.rpartition("@")[2]): count for ref, count in rows}


def jobs_of(conn: psycopg.Connection[Any], name: str) -> int:
    return sum(jobs_per_tick(conn, name).values())


def column(conn: psycopg.Connection[Any], name: str, what: str) -> Any:
    return scalar(conn, f"SELECT {what} FROM notifyworker.schedules WHERE name = %s", name)


async def test_worker_processes_make_exactly_one_job_per_tick_through_a_rolling_restart(
    database_url: str, conn: psycopg.Connection[Any], anyio_backend_name: str
) -> None:
    conn.execute("CREATE TABLE ledger (n integer NOT NULL, pid integer NOT NULL)")
    # Three replicas on the test's event loop, as deployed; a schedule every second.
    fleet = Fleet(database_url, backend=anyio_backend_name)
    fleet.start(3)
    try:
        await until_workers(conn, 3)
        add(conn, "every-second", "* * * * * *", task="ledger", payload='{"n": 0}')
        await eventually(lambda: jobs_of(conn, "every-second") >= 3, within=30)
        # A rolling update's step: one replica stops, a new one starts.
        fleet.workers[0].process.send_signal(signal.SIGTERM)
        fleet.start(1)
        await eventually(lambda: fleet.workers[0].process.poll() is not None, within=30)
        await until_workers(conn, 3)
        await eventually(lambda: jobs_of(conn, "every-second") >= 8, within=30)
    finally:
        logs = [worker.stderr() for worker in fleet.workers]
        codes = fleet.stop_all()
    assert codes == [0, 0, 0, 0], logs
    assert not any("Traceback" in log for log in logs), logs
    per_tick = jobs_per_tick(conn, "every-second")
    assert set(per_tick.values()) == {1}, per_tick
    ticks = sorted(per_tick)
    # No tick was skipped either: one job for every second from the first to the last.
    assert [b - a for a, b in itertools.pairwise(ticks)] == [SECOND] * (len(ticks) - 1)
    assert column(conn, "every-second", "last_tick") == ticks[-1]


def past_minute(conn: psycopg.Connection[Any]) -> tuple[str, datetime]:
    """An hourly expression whose latest tick was about 30 minutes ago, and that tick."""
    now = db_now(conn).astimezone(UTC)
    minute = (now.minute + 30) % 60
    tick = now.replace(minute=minute, second=0, microsecond=0)
    return f"{minute} * * * *", tick if tick <= now else tick - timedelta(hours=1)


async def test_after_downtime_catch_up_one_fires_one_job_and_none_fires_none(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    cron, latest = past_minute(conn)
    for name, policy in (("catch-one", "one"), ("catch-none", "none")):
        add(conn, name, cron, tz="Europe/Paris", catch_up=policy)
        # It last fired a day ago, and no worker has run since.
        conn.execute(
            "UPDATE notifyworker.schedules SET last_tick = now() - interval '1 day',"
            " created_at = now() - interval '1 day', updated_at = now() - interval '1 day'"
            " WHERE name = %s",
            (name,),
        )
    add(conn, "control", "* * * * * *")
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        # Three seconds of ticks: the scheduler has read and acted on every row, more than once.
        await eventually(lambda: jobs_of(conn, "control") >= 3, within=20)
    assert jobs_per_tick(conn, "catch-one") == {latest: 1}  # 23 missed ticks, one job
    assert jobs_per_tick(conn, "catch-none") == {}
    assert column(conn, "catch-one", "last_tick") == latest
    assert column(conn, "catch-none", "last_tick") == latest  # moved on past what it missed


async def test_a_paused_schedule_fires_nothing_and_resumed_starts_from_its_next_tick(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    add(conn, "paused", "* * * * * *", paused=True)
    add(conn, "control", "* * * * * *")
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        await eventually(lambda: jobs_of(conn, "control") >= 3, within=20)
        assert jobs_of(conn, "paused") == 0
        assert column(conn, "paused", "last_tick") is None
        assert db.run_once(database_url, admin.pause_schedule, "paused", False)
        await eventually(lambda: jobs_of(conn, "paused") >= 2, within=20)
    resumed_at = column(conn, "paused", "updated_at")
    assert min(jobs_per_tick(conn, "paused")) > resumed_at


async def test_a_row_stored_by_hand_that_does_not_parse_is_skipped_with_one_warning(
    database_url: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="notifyworker.scheduler")
    add(conn, "bad-cron", "61 * * * *")  # the shape the table accepts, not a cron
    add(conn, "bad-zone", "* * * * * *", tz="Mars/Olympus_Mons")
    add(conn, "control", "* * * * * *")
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        await eventually(lambda: jobs_of(conn, "control") >= 3, within=20)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert [w for w in warnings if "'bad-cron'" in w] == [
            "schedule 'bad-cron' skipped: invalid cron expression '61 * * * *': bad minute"
        ]
        assert [w for w in warnings if "'bad-zone'" in w] == [
            "schedule 'bad-zone' skipped: unknown time zone 'Mars/Olympus_Mons'"
            " (an IANA name, e.g. Europe/Paris)"
        ]
        # Mended from SQL, it fires within a reading or two.
        conn.execute(
            "UPDATE notifyworker.schedules SET cron = '* * * * * *' WHERE name = 'bad-cron'"
        )
        await eventually(lambda: jobs_of(conn, "bad-cron") >= 1, within=20)
    assert jobs_of(conn, "bad-zone") == 0


async def test_schedules_declared_in_code_are_written_at_start_keeping_a_pause(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    add(conn, "nightly", "0 3 * * *", paused=True)
    calls = Calls()
    registry: Registry = calls.registry
    registry.schedule("nightly", "0 4 * * *", task="record", tz="Europe/Paris", payload={"n": 4})
    registry.schedule("often", "* * * * * *", task="record", payload={"n": 5}, catch_up="none")

    @registry.task("tick", schedule="*/2 * * * * *")
    async def tick(payload: Nothing) -> None: ...

    async with running_worker(fast_settings(database_url), registry):
        await eventually(lambda: jobs_of(conn, "often") >= 2, within=20)
    assert conn.execute(
        "SELECT cron, tz, payload, paused FROM notifyworker.schedules WHERE name = 'nightly'"
    ).fetchone() == ("0 4 * * *", "Europe/Paris", {"n": 4}, True)
    assert conn.execute(
        "SELECT task, payload FROM notifyworker.jobs WHERE object_id LIKE 'schedule:often@%'"
        " LIMIT 1"
    ).fetchone() == ("record", {"n": 5})
    assert column(conn, "often", "catch_up") == "none"
    assert column(conn, "tick", "cron") == "*/2 * * * * *"
    assert 5 in calls.started  # the scheduled jobs ran


@pytest.mark.parametrize(
    ("columns", "constraint"),
    [
        ({"name": "has space"}, "name_is_a_name"),
        ({"name": "vertical\vtab"}, "name_is_a_name"),
        ({"task": ""}, "task_is_a_name"),
        ({"cron": "* * * * *; DROP TABLE x"}, "cron_is_cron_shaped"),
        ({"cron": "* * * *"}, "cron_is_cron_shaped"),
        ({"tz": "../../etc/passwd"}, "tz_is_zone_shaped"),
        ({"catch_up": "all"}, "catch_up_is_known"),
        ({"payload": "[1]"}, "payload_is_an_object"),
        ({"last_tick": "infinity"}, "last_tick_is_finite"),
    ],
)
def test_a_row_that_cannot_be_a_schedule_is_refused_by_name(
    conn: psycopg.Connection[Any], columns: dict[str, str], constraint: str
) -> None:
    values = {"name": "s", "cron": "* * * * *", **columns}
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        add(conn, values.pop("name"), values.pop("cron"), **values)


def test_a_name_may_hold_any_letter(conn: psycopg.Connection[Any]) -> None:
    add(conn, "every-vowel-above", "* * * * *", task="recv-v")  # E'\\v' is no vertical tab
    assert column(conn, "every-vowel-above", "task") == "recv-v"


def test_updated_at_moves_with_the_definition_not_with_the_ticks(
    conn: psycopg.Connection[Any],
) -> None:
    add(conn, "s", "* * * * *")
    first = column(conn, "s", "updated_at")
    conn.execute("UPDATE notifyworker.schedules SET last_tick = now()")
    assert column(conn, "s", "updated_at") == first
    conn.execute("UPDATE notifyworker.schedules SET cron = '* * * * *', paused = false")
    assert column(conn, "s", "updated_at") == first  # the same definition
    conn.execute("UPDATE notifyworker.schedules SET paused = true")
    assert column(conn, "s", "updated_at") > first


def test_the_cli_adds_lists_pauses_resumes_and_removes(database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    added = cli("schedules", "add", "report", "--cron", "0 8 * * MON-FRI", "--task", "sleep",
                "--tz", "Europe/Paris", "--payload", '{"seconds": 1}', env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added schedule report; next tick ")
    assert " 08:00:00+0" in added.stdout  # in Paris, winter (+01:00) or summer
    again = cli("schedules", "add", "report", "--cron", "0 8 * * MON-FRI", "--task", "sleep",
                "--tz", "Europe/Paris", "--payload", '{"seconds": 1}', env=env)  # fmt: skip
    assert again.stdout.startswith("unchanged schedule report")
    changed = cli("schedules", "add", "report", "--cron", "0 9 * * MON-FRI", "--task", "sleep",
                  "--tz", "Europe/Paris", "--catch-up", "none", env=env)  # fmt: skip
    assert changed.stdout.startswith("updated schedule report")

    listed = cli("schedules", env=env)
    assert listed.returncode == 0, listed.stderr
    line = listed.stdout.strip()
    assert line.startswith(
        "name=report cron=0 9 * * MON-FRI tz=Europe/Paris task=sleep catch-up=none state=active"
    )
    assert "next run=" in line
    assert " 09:00:00+0" in line

    assert cli("schedules", "pause", "report", env=env).stdout == "paused schedule report\n"
    assert "state=paused" in cli("schedules", env=env).stdout
    assert cli("schedules", "resume", "report", env=env).stdout == "resumed schedule report\n"
    assert cli("schedules", "remove", "report", env=env).stdout == "removed schedule report\n"
    assert cli("schedules", env=env).stdout == ""
    gone = cli("schedules", "remove", "report", env=env)
    assert gone.returncode == 2
    assert one_line_error(gone) == "notifyworker: error: there is no schedule 'report'"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--cron", "0 8 * * FUNDAY"], "invalid cron expression '0 8 * * FUNDAY'"),
        (["--cron", "*/0 * * * *"], "invalid cron expression '*/0 * * * *': bad minute"),
        (["--cron", "@daily", "--tz", "Europe/Pariss"], "unknown time zone 'Europe/Pariss'"),
        (["--cron", "@daily", "--catch-up", "all"], "--catch-up must be 'one' or 'none'"),
        (["--cron", "@daily", "--payload", "[1]"], "--payload must be a JSON object"),
    ],
)
def test_the_cli_refuses_a_malformed_schedule_in_one_line(
    database_url: str, flags: list[str], says: str
) -> None:
    result = cli("schedules", "add", "bad", "--task", "sleep", *flags,
                 env={"DATABASE_URL": database_url})  # fmt: skip
    assert result.returncode == 2
    assert says in one_line_error(result)
    with psycopg.connect(database_url) as conn:
        assert scalar(conn, "SELECT count(*) FROM notifyworker.schedules") == 0
