"""The CLI as a user meets it: one-line errors, `jobs`, `check`, and `up --duration`."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import psycopg
import pytest

from notifyworker import config
from notifyworker.errors import ConfigError
from tests.helpers import scalar

ROOT = Path(__file__).resolve().parent.parent


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")}
    base.pop("DATABASE_URL", None)
    base["NOTIFYWORKER_HEALTH_PORT"] = "0"  # any free port: 8080 may be taken here
    return subprocess.run(
        [sys.executable, "-m", "notifyworker", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_on_terminal(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The CLI with stdout on a pseudo-terminal: (exit code, what the terminal got, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 400, 0, 0))
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")}
    for name in ("DATABASE_URL", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE"):
        base.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "notifyworker", *args],
        cwd=ROOT,
        env={**base, "TERM": "xterm-256color", **env},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while data := os.read(master, 65536):
            chunks.append(data)
    except OSError:  # EIO: the child closed the terminal's last end
        pass
    finally:
        os.close(master)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, b"".join(chunks).decode(), err.decode()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("notifyworker: error: ")
    return lines[0]


def test_unreachable_database_is_one_line() -> None:
    result = cli("jobs", env={"DATABASE_URL": "postgresql://nobody:s3cret@127.0.0.1:1/none"})
    assert result.returncode == 1
    line = one_line_error(result)
    assert "127.0.0.1" in line
    assert "s3cret" not in line


def test_malformed_database_url_is_one_line() -> None:
    result = cli("migrate", env={"DATABASE_URL": "postgresql://[::1"})
    assert result.returncode == 1
    one_line_error(result)


def test_invalid_setting_is_one_line() -> None:
    result = cli(
        "run",
        env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "NOTIFYWORKER_CONCURRENCY": "many"},
    )
    assert result.returncode == 2
    assert "concurrency" in one_line_error(result)


def test_settings_that_contradict_each_other_are_refused() -> None:
    result = cli("run", "--rate", "-5", env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    assert result.returncode == 2
    assert "rate" in one_line_error(result)


def test_unknown_tasks_module_is_one_line(database_url: str) -> None:
    result = cli("run", "--tasks", "no_such_module", env={"DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "no_such_module" in one_line_error(result)


def test_run_before_migrate_waits_then_says_so(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url, "NOTIFYWORKER_STARTUP_TIMEOUT": "1"}
    result = cli("run", env=env)
    assert result.returncode == 1
    # One warning a retry while it waited, then the one-line error.
    assert result.stderr.count("waiting for `notifyworker migrate`") >= 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("notifyworker: error: ")
    assert "after 1s: run `notifyworker migrate`" in last


def test_enqueue_and_jobs(database_url: str, conn: psycopg.Connection[Any]) -> None:
    env = {"DATABASE_URL": database_url}
    made = cli(
        "enqueue",
        "sleep",
        "--payload",
        '{"seconds": 1}',
        "--object-id",
        "42",
        "--timeout",
        "3",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    job_id = int(made.stdout)
    row = conn.execute(
        "SELECT task, payload, object_id, timeout, status FROM notifyworker.jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    assert row[:3] == ("sleep", {"seconds": 1}, "42")
    assert row[3].total_seconds() == 3
    assert row[4] == "new"
    listed = cli("jobs", env=env)
    assert listed.returncode == 0
    assert f"id={job_id} object_id=42 task=sleep sleep=1s status=new" in listed.stdout


def test_enqueue_with_a_held_unique_key_prints_the_holders_id(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    env = {"DATABASE_URL": database_url}
    made = [cli("enqueue", "sleep", "--unique-key", "nightly", env=env) for _ in range(2)]
    assert [r.returncode for r in made] == [0, 0], made[0].stderr
    assert made[0].stdout == made[1].stdout
    assert scalar(conn, "SELECT unique_key FROM notifyworker.jobs") == "nightly"


def test_enqueue_with_bad_payload_loses_nothing(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    env = {"DATABASE_URL": database_url}
    not_json = cli("enqueue", "sleep", "--payload", "{seconds: 1}", env=env)
    not_object = cli("enqueue", "sleep", "--payload", "[1]", env=env)
    bad_name = cli("enqueue", "no good", env=env)
    assert [r.returncode for r in (not_json, not_object, bad_name)] == [2, 2, 1]
    assert "not valid JSON" in one_line_error(not_json)
    assert "JSON object" in one_line_error(not_object)
    assert "task_is_a_name" in one_line_error(bad_name)
    assert scalar(conn, "SELECT count(*) FROM notifyworker.jobs") == 0


def test_up_with_a_database_url_runs_the_demo_and_summarises(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    result = cli(
        "up",
        "--duration",
        "3",
        "--demo-rate",
        "5",
        "--shutdown-grace",
        "0.5",
        env={"DATABASE_URL": database_url},
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("in 3")
    assert "pickup latency p50" in summary
    done = scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'done'")
    assert f"{done} done" in summary
    assert done >= 3
    # Every third demo job is stuck: the short grace cancels those still running.
    stuck = scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE NOT payload ? 'seconds'")
    assert stuck >= 3
    assert (
        scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status IN ('queued', 'running')")
        == 0
    )
    assert "status=done" in result.stdout  # plain lines when output is not a terminal


def test_up_with_no_database_url_starts_an_embedded_postgres(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    os.chmod(tmp_path, 0o755)

    def up(seconds: str) -> subprocess.CompletedProcess[str]:
        return cli(
            "up", "--duration", seconds, "--demo-rate", "5", "--shutdown-grace", "0.2",
            "--data-dir", str(data), timeout=120,
        )  # fmt: skip

    result = up("2")
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout.strip().splitlines()[-1]
    assert (data / "PG_VERSION").is_file()
    # The data folder persists: a second run keeps the first run's jobs.
    again = up("1")
    assert again.returncode == 0, again.stderr
    first_ids, later_ids = _ids(result.stdout), _ids(again.stdout)
    assert first_ids
    assert later_ids
    assert min(later_ids) > max(first_ids)  # ids go on: the table was kept


def _ids(output: str) -> list[int]:
    return [
        int(line.split()[0].removeprefix("id="))
        for line in output.splitlines()
        if line.startswith("id=")
    ]


OWN_RATE = "each worker's own rate (queue default)"
FLEET_RATE_20 = "20 jobs/s for the whole fleet (queue default)"
DEFAULT_QUEUE_ROW = "SELECT rate, paused FROM notifyworker.queues WHERE name = 'default'"


def test_rate_command_sets_shows_and_resets_the_default_queues_fleet_rate(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    env = {"DATABASE_URL": database_url}
    assert cli("rate", env=env).stdout.strip() == OWN_RATE
    assert conn.execute(DEFAULT_QUEUE_ROW).fetchone() is None
    assert cli("rate", "20", env=env).stdout.strip() == FLEET_RATE_20
    assert cli("rate", env=env).stdout.strip() == FLEET_RATE_20
    assert conn.execute(DEFAULT_QUEUE_ROW).fetchone() == (20, False)
    assert scalar(conn, "SELECT count(*) FROM notifyworker.settings WHERE name = 'rate'") == 0
    unlimited = cli("rate", "0", env=env).stdout.strip()
    assert unlimited == "unlimited for the whole fleet (queue default)"
    # The rate is one setting of the queue's row: a pause stays through it.
    assert cli("queue", "default", "--pause", env=env).returncode == 0
    assert cli("rate", "--reset", env=env).stdout.strip() == OWN_RATE
    assert conn.execute(DEFAULT_QUEUE_ROW).fetchone() == (None, True)
    assert cli("rate", "7", env=env).returncode == 0
    assert conn.execute(DEFAULT_QUEUE_ROW).fetchone() == (7, True)
    # The same row as `queue default`'s.
    assert cli("queue", "default", "--rate", "none", env=env).returncode == 0
    assert cli("rate", env=env).stdout.strip() == OWN_RATE
    refused = cli("rate", "-3", env=env)
    assert refused.returncode == 2
    assert "rate must be" in one_line_error(refused)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e-320", "-1", "0.0009", "100001"])
def test_rate_command_refuses_what_the_rule_refuses_in_one_line(
    database_url: str, value: str
) -> None:
    env = {"DATABASE_URL": database_url}
    assert cli("rate", "20", env=env).returncode == 0
    refused = cli("rate", value, env=env)
    assert refused.returncode == 2
    assert "rate must be 0 (unlimited) or between 0.001 and 100000" in one_line_error(refused)
    assert cli("rate", env=env).stdout.strip() == FLEET_RATE_20  # left as it was


@pytest.mark.parametrize("value", ["inf", "nan", "1e-320", "-1", "100001"])
def test_rate_setting_follows_the_same_rule(value: str) -> None:
    refused = cli("run", "--rate", value, env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
    assert refused.returncode == 2
    assert "rate must be" in one_line_error(refused)
    with pytest.raises(ConfigError, match="rate must be"):
        config.load(rate=float(value))


@pytest.mark.parametrize("value", ["0", "0.001", "100000"])
def test_rate_setting_takes_the_bounds(value: str) -> None:
    assert config.load(database_url="postgresql://x@/x", rate=float(value)).rate == float(value)


def test_cancel_command(database_url: str, conn: psycopg.Connection[Any]) -> None:
    job = scalar(conn, "INSERT INTO notifyworker.jobs (task) VALUES ('sleep') RETURNING id")
    env = {"DATABASE_URL": database_url}
    result = cli("cancel", str(job), env=env)
    assert (result.returncode, result.stdout.strip()) == (0, "cancelled"), result.stderr
    assert scalar(conn, "SELECT status FROM notifyworker.jobs WHERE id = %s", job) == "cancelled"
    missing = cli("cancel", "999999", env=env)
    assert missing.returncode == 2
    assert "there is no job 999999" in one_line_error(missing)


def test_check_passes_on_a_current_schema(database_url: str) -> None:
    result = cli("check", env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "ok: the database answers and the schema is current"
    ]


def test_check_fails_in_one_line_when_migrations_are_pending(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("DELETE FROM notifyworker.migrations WHERE version = 3")
    result = cli("check", env={"DATABASE_URL": database_url})
    assert result.returncode == 1
    assert "1 migration(s) pending" in one_line_error(result)


def test_check_fails_in_one_line_without_a_schema_or_a_database(empty_database_url: str) -> None:
    no_schema = cli("check", env={"DATABASE_URL": empty_database_url})
    unreachable = cli("check", env={"DATABASE_URL": "postgresql://x:s3cret@127.0.0.1:1/none"})
    assert [no_schema.returncode, unreachable.returncode] == [1, 1]
    assert "notifyworker migrate" in one_line_error(no_schema)
    assert "s3cret" not in one_line_error(unreachable)


def test_jobs_on_a_terminal_shows_row_text_as_inert_text(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, object_id) VALUES ('sleep', '[/oops]'),"
        " ('plain', '[link=https://evil.example]x[/link]'), ('red\x1b[31m', NULL),"
        " ('link\x1b]8;;http://x\x1b\\', 'ok')"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, status, finished_at, error)"
        " VALUES ('bidi', 'failed', now(), 'abc\u202edef')"
    )
    code, shown, err = cli_on_terminal("jobs", env={"DATABASE_URL": database_url})
    assert code == 0, err
    assert "Traceback" not in err
    # Styling is rich's own SGR; with it removed, no ESC is left: none came from a row.
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "\x1b" not in text
    assert "\x1b]8;" not in shown  # no hyperlink
    assert "\u202e" not in shown
    assert "\x1b[31mfailed" in shown  # status styles still work
    for literal in (
        "[/oops]",
        "[link=https://evil.example]x[/link]",
        "red\\x1b[31m",
        "link\\x1b]8;;http://x\\x1b\\",
        "abc\\u202edef",
    ):
        assert literal in text, literal


def flat(text: str) -> str:
    """Help text without rich's box and wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_database_url_file_serves_migrate_and_check(
    empty_database_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "DATABASE_URL"
    secret.write_text(empty_database_url + "\n")  # as a mounted Secret often ends
    migrated = cli("migrate", "--database-url-file", str(secret))
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied ")
    checked = cli("check", "--database-url-file", str(secret))
    assert checked.returncode == 0, checked.stderr
    from_env = cli("check", env={"NOTIFYWORKER_DATABASE_URL_FILE": str(secret)})
    assert from_env.returncode == 0, from_env.stderr
    # The flag wins over the environment's URL.
    over_env = cli("check", "--database-url-file", str(secret), env={"DATABASE_URL": "nope"})
    assert over_env.returncode == 0, over_env.stderr


def test_help_says_the_url_flag_shows_in_ps_and_offers_a_file() -> None:
    commands = (
        "run",
        "migrate",
        "check",
        "up",
        "enqueue",
        "jobs",
        "job",
        "rate",
        "queue",
        "queues",
        "cancel",
        "retry",
    )
    for command in commands:
        shown = flat(cli(command, "--help", env={"COLUMNS": "200"}).stdout)
        assert "visible to every local user in `ps`" in shown, command
        assert "--database-url-file" in shown, command
        assert "NOTIFYWORKER_DATABASE_URL_FILE" in shown, command


def test_a_url_file_that_cannot_serve_is_one_line_naming_it(tmp_path: Path) -> None:
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.write_text("\n")
    for path in (missing, empty, tmp_path):
        result = cli("check", "--database-url-file", str(path))
        assert result.returncode == 2
        assert str(path) in one_line_error(result)
    both = cli("check", "--database-url-file", str(empty), "--database-url", "postgresql://x@y/z")
    assert both.returncode == 2
    assert "not both" in one_line_error(both)
    both_env = cli(
        "check",
        env={"DATABASE_URL": "postgresql://x@y/z", "NOTIFYWORKER_DATABASE_URL_FILE": str(empty)},
    )
    assert both_env.returncode == 2
    assert "both set" in one_line_error(both_env)


def test_a_password_that_needs_percent_encoding_is_refused_before_connecting() -> None:
    password = "p@ss/w?rd#1"  # noqa: S105 - a test password
    for args, env in (
        ((), {"DATABASE_URL": f"postgresql://app:{password}@127.0.0.1:1/db"}),
        (("--database-url", f"postgresql://app:{password}@127.0.0.1:1/db"), {}),
    ):
        result = cli("check", *args, env=env)
        assert result.returncode == 2
        line = one_line_error(result)
        assert "must be percent-encoded (e.g. @ as %40" in line
        for piece in (password, "p@ss", "ss/w", "w?rd", "rd#1"):
            assert piece not in result.stdout + result.stderr
    encoded = cli(
        "check", env={"DATABASE_URL": "postgresql://app:p%40ss%2Fw%3Frd%231@127.0.0.1:1/db"}
    )
    assert encoded.returncode == 1  # accepted, then the connection fails
    assert "127.0.0.1" in one_line_error(encoded)
    assert "ss%2Fw" not in encoded.stderr
    assert "p@ss" not in encoded.stderr


def test_a_password_on_the_command_line_is_warned_about_not_shown() -> None:
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/db"
    result = cli("check", "--database-url", url)
    assert result.returncode == 1
    warnings = [line for line in result.stderr.splitlines() if "--database-url" in line]
    assert len(warnings) == 1
    assert "ps" in warnings[0]
    assert "s3cret" not in result.stderr
    no_password = cli("check", "--database-url", "postgresql://app@127.0.0.1:1/db")
    assert "--database-url" not in no_password.stderr


# === Queues (`queue`, `queues`, `jobs --queue`, `enqueue --queue`) ===

QUEUE_ROW = (
    "SELECT rate, concurrency, key_rate, key_concurrency, paused FROM notifyworker.queues"
    " WHERE name = %s"
)


def queue_lines(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    """`queues` (plain): each queue's fields by name; a field's value may hold spaces."""
    assert result.returncode == 0, result.stderr
    found = {}
    for line in result.stdout.strip().splitlines():
        fields = dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", line))
        found[fields["queue"]] = fields
    return found


def test_queue_command_sets_shows_pauses_resumes_and_clears(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    env = {"DATABASE_URL": database_url}
    # A queue without a row: shown with each worker's own settings, nothing written.
    shown = queue_lines(cli("queue", "email", env=env))["email"]
    assert shown["rate"] == "worker's own"
    assert (shown["concurrency"], shown["state"], shown["waiting"]) == ("-", "active", "0")
    assert conn.execute(QUEUE_ROW, ("email",)).fetchone() is None
    made = cli(
        "queue",
        "email",
        "--rate",
        "20",
        "--concurrency",
        "5",
        "--key-rate",
        "0.5",
        "--key-concurrency",
        "2",
        "--pause",
        env=env,
    )
    shown = queue_lines(made)["email"]
    assert conn.execute(QUEUE_ROW, ("email",)).fetchone() == (20, 5, 0.5, 2, True)
    assert (shown["rate"], shown["concurrency"], shown["key_rate"]) == ("20/s", "5", "0.5/s")
    assert (shown["key_concurrency"], shown["state"]) == ("2", "paused")
    # Only the options given change.
    assert cli("queue", "email", "--resume", env=env).returncode == 0
    assert conn.execute(QUEUE_ROW, ("email",)).fetchone() == (20, 5, 0.5, 2, False)
    assert cli("queue", "email", "--rate", "0", "--key-rate", "NONE", env=env).returncode == 0
    assert conn.execute(QUEUE_ROW, ("email",)).fetchone() == (0, 5, None, 2, False)
    assert queue_lines(cli("queue", "email", env=env))["email"]["rate"] == "unpaced"
    cleared = cli("queue", "email", "--concurrency", "none", "--key-concurrency", "none", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert conn.execute(QUEUE_ROW, ("email",)).fetchone() == (0, None, None, None, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--rate", "-1"), "--rate: rate must be 0 (unlimited) or between 0.001 and 100000"),
        (("--rate", "nan"), "--rate: rate must be 0"),
        (("--rate", "0.0001"), "--rate: rate must be 0"),
        (("--rate", "fast"), "--rate must be a number or none, not 'fast'"),
        (("--key-rate", "0"), "--key-rate: key rate must be between 0.001 and 100000"),
        (("--key-rate", "100001"), "--key-rate: key rate must be between"),
        (("--concurrency", "0"), "--concurrency must be between 1 and 100,000 jobs, not 0"),
        (("--concurrency", "-5"), "--concurrency must be between 1 and 100,000"),
        (("--concurrency", "2.5"), "--concurrency must be a whole number or none"),
        (("--key-concurrency", "100001"), "--key-concurrency must be between 1 and 100,000"),
    ],
)
def test_queue_command_refuses_a_value_out_of_range_in_one_line(
    database_url: str, conn: psycopg.Connection[Any], args: tuple[str, ...], message: str
) -> None:
    env = {"DATABASE_URL": database_url}
    assert cli("queue", "email", "--rate", "20", "--concurrency", "5", env=env).returncode == 0
    refused = cli("queue", "email", *args, "--pause", env=env)
    assert refused.returncode == 2
    assert message in one_line_error(refused)
    assert conn.execute(QUEUE_ROW, ("email",)).fetchone() == (20, 5, None, None, False)


@pytest.mark.parametrize("name", ["two words", "tab\tin", "q" * 101])
def test_queue_command_refuses_a_name_the_table_refuses(
    database_url: str, conn: psycopg.Connection[Any], name: str
) -> None:
    refused = cli("queue", name, "--rate", "1", env={"DATABASE_URL": database_url})
    assert refused.returncode == 2
    assert "a queue's name must be 1 to 100 characters without whitespace" in one_line_error(
        refused
    )
    assert scalar(conn, "SELECT count(*) FROM notifyworker.queues") == 0


def test_queues_lists_waiting_running_paused_and_recent_pickup(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    env = {"DATABASE_URL": database_url}
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue) SELECT 'sleep', 'email'"
        " FROM generate_series(1, 3)"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue) SELECT 'sleep', 'bulk'"
        " FROM generate_series(1, 10001)"
    )
    conn.execute(
        "INSERT INTO notifyworker.jobs (task, queue, status, worker_id, queued_at, started_at)"
        " SELECT 'sleep', 'reports', s, 'w', now(), now()"
        " FROM unnest(ARRAY['queued', 'running', 'running']) AS s"
    )
    # Finished a minute ago, each picked up 1 s or 3 s after its INSERT; and one long ago.
    conn.execute(
        "INSERT INTO notifyworker.jobs"
        " (task, queue, status, worker_id, created_at, started_at, finished_at)"
        " SELECT 'sleep', 'reports', 'done', 'w', now() - interval '2 minutes',"
        " now() - interval '2 minutes' + p * interval '1 second', now() - interval '1 minute'"
        " FROM unnest(ARRAY[1, 1, 3]) AS p"
        " UNION ALL SELECT 'sleep', 'reports', 'done', 'w', now() - interval '2 hours',"
        " now() - interval '1 hour', now() - interval '1 hour'"
    )
    assert cli("queue", "email", "--pause", "--rate", "3", env=env).returncode == 0
    assert cli("queue", "idle", "--concurrency", "4", env=env).returncode == 0
    listed = queue_lines(cli("queues", env=env))
    assert sorted(listed) == ["bulk", "email", "idle", "reports"]
    assert listed["email"]["state"] == "paused, 3 waiting"
    assert (listed["email"]["waiting"], listed["email"]["rate"]) == ("3", "3/s")
    assert listed["bulk"]["waiting"] == "10,000+"
    assert (listed["bulk"]["state"], listed["bulk"]["rate"]) == ("active", "worker's own")
    assert (listed["reports"]["running"], listed["reports"]["waiting"]) == ("3", "0")
    assert listed["reports"]["pickup_p50"] == "1,000 ms"
    assert (listed["idle"]["concurrency"], listed["idle"]["waiting"]) == ("4", "0")
    assert listed["idle"]["pickup_p50"] == "-"
    # On a terminal: rich's table, the paused backlog in plain sight.
    code, shown, err = cli_on_terminal("queues", env=env)
    assert code == 0, err
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "paused, 3 waiting" in text
    assert "10,000+" in text


def test_enqueue_and_jobs_with_a_queue(database_url: str, conn: psycopg.Connection[Any]) -> None:
    env = {"DATABASE_URL": database_url}
    made = cli(
        "enqueue", "sleep", "--queue", "email", "--priority", "-5", "--limit-key", "t1", env=env
    )
    assert made.returncode == 0, made.stderr
    job = int(made.stdout)
    other = int(cli("enqueue", "sleep", env=env).stdout)
    placed = "SELECT queue, priority, limit_key FROM notifyworker.jobs WHERE id = %s"
    assert conn.execute(placed, (job,)).fetchone() == ("email", -5, "t1")
    assert conn.execute(placed, (other,)).fetchone() == ("default", 0, None)
    in_email = cli("jobs", "--queue", "email", env=env)
    assert in_email.returncode == 0, in_email.stderr
    assert f"id={job} " in in_email.stdout
    assert f"id={other} " not in in_email.stdout
    waiting_in_default = cli("jobs", "--queue", "default", "--status", "new", env=env).stdout
    assert f"id={other} " in waiting_in_default
    assert f"id={job} " not in waiting_in_default
    for args, message in (
        (("--queue", "a b"), "a queue's name must be 1 to 100 characters"),
        (("--priority", "1000001"), "priority must be between -1,000,000 and 1,000,000"),
        (("--limit-key", "k" * 201), "limit_key must be 1 to 200 characters"),
    ):
        refused = cli("enqueue", "sleep", *args, env=env)
        assert refused.returncode == 2, args
        assert message in one_line_error(refused)
    assert scalar(conn, "SELECT count(*) FROM notifyworker.jobs") == 2
