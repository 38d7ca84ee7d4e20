"""What operators see: probes, metrics, one log line per job, and no password anywhere."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from notifyworker import logs
from notifyworker.service import Worker
from tests.helpers import Calls, eventually, fast_settings, running_worker, scalar
from tests.test_worker import finished, insert, listener_backend

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"  # noqa: S105 - the password that must never be logged


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def base(worker: Worker) -> str:
    assert worker.health_port
    return f"http://127.0.0.1:{worker.health_port}"


async def samples(
    http: httpx.AsyncClient, worker: Worker
) -> dict[tuple[str, frozenset[Any]], float]:
    """Every sample /metrics serves, keyed by name and labels."""
    response = await http.get(f"{base(worker)}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(found: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


class Door:
    """Opens and shuts the test's database to new connections (those made stay)."""

    def __init__(self, server_url: str, database_url: str) -> None:
        self._admin = psycopg.connect(server_url, autocommit=True)
        self._name = conninfo_to_dict(database_url)["dbname"]

    def allow(self, allowed: bool) -> None:
        self._admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(str(self._name)), sql.Literal(allowed)
            )
        )

    def close(self) -> None:
        self.allow(True)
        self._admin.close()


@pytest.fixture
def door(server_url: str, database_url: str) -> Iterator[Door]:
    opened = Door(server_url, database_url)
    yield opened
    opened.close()


async def test_probes_and_metrics_of_a_running_worker(
    database_url: str, conn: psycopg.Connection[Any], http: httpx.AsyncClient
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry) as worker:
        url = base(worker)
        live = await http.get(f"{url}/livez")
        ready = await http.get(f"{url}/readyz")
        lost = await http.get(f"{url}/nowhere")
        jobs = [insert(conn, "record", f'{{"n": {n}}}') for n in range(5)]
        jobs.append(insert(conn, "boom"))
        jobs.append(insert(conn, "no_such_task"))
        for job in jobs:
            await finished(conn, job)
        found = await samples(http, worker)
    assert (live.status_code, live.text) == (200, "alive\n")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert lost.status_code == 404
    assert sample(found, "notifyworker_jobs_claimed_total", task="record") == 5
    assert sample(found, "notifyworker_jobs_started_total", task="record") == 5
    finished_total = "notifyworker_jobs_finished_total"
    assert sample(found, finished_total, task="record", status="done") == 5
    assert sample(found, finished_total, task="boom", status="failed") == 1
    assert sample(found, finished_total, task="no_such_task", status="failed") == 1
    # The unknown task never started: no pickup, no run time.
    assert sample(found, "notifyworker_job_pickup_seconds_count") == 6
    assert sample(found, "notifyworker_job_run_seconds_count", task="record") == 5
    assert sample(found, "notifyworker_job_run_seconds_count", task="boom") == 1
    assert sample(found, "notifyworker_listener_connected") == 1
    assert sample(found, "notifyworker_rate") == 0


async def test_limiter_waits_are_observed(
    database_url: str, conn: psycopg.Connection[Any], http: httpx.AsyncClient
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url, rate=20), calls.registry) as worker:
        # One statement: the three jobs are claimed together, so their start slots
        # are 0, 1/20 and 2/20 s after the claim.
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, payload)"
            " SELECT 'record', jsonb_build_object('n', n) FROM generate_series(1, 3) AS n"
        )
        await eventually(lambda: len(calls.started) == 3)
        found = await samples(http, worker)
    assert sample(found, "notifyworker_limiter_wait_seconds_count") == 3
    # The limiter never starts a job early: together they waited at least 0.05 + 0.1 s,
    # less the moments between the claim and each consumer's turn.
    assert sample(found, "notifyworker_limiter_wait_seconds_sum") >= 0.1


async def test_not_ready_while_the_listener_is_down_and_alive_throughout(
    database_url: str,
    conn: psycopg.Connection[Any],
    door: Door,
    http: httpx.AsyncClient,
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry) as worker:
        url = base(worker)
        assert (await http.get(f"{url}/readyz")).status_code == 200
        # The listener loses its backend and cannot come back while the door is shut.
        door.allow(False)
        assert scalar(conn, "SELECT pg_terminate_backend(%s)", listener_backend(conn))
        await eventually(lambda: worker.readiness() is not None)
        down = await http.get(f"{url}/readyz")
        live = await http.get(f"{url}/livez")
        door.allow(True)
        await eventually(lambda: worker.readiness() is None)
        up = await http.get(f"{url}/readyz")
        found = await samples(http, worker)
    assert down.status_code == 503
    assert "listener" in down.text
    assert len(down.text.splitlines()) == 1
    assert live.status_code == 200
    assert up.text == "ready\n"
    assert sample(found, "notifyworker_listener_reconnects_total") == 1
    assert sample(found, "notifyworker_listener_connected") == 1


async def test_a_stopping_worker_is_alive_but_not_ready_then_closes_its_port(
    database_url: str, conn: psycopg.Connection[Any], http: httpx.AsyncClient
) -> None:
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry) as worker:
        url = base(worker)
        insert(conn, "hang", '{"n": 1}')
        with anyio.fail_after(5):
            await calls.ran.wait()
        worker.stop()  # the hanging job now has its grace period: the worker drains
        draining = await http.get(f"{url}/readyz")
        live = await http.get(f"{url}/livez")
        worker.stop()  # a second stop ends the grace at once
    assert (draining.status_code, draining.text) == (503, "stopping\n")
    assert live.status_code == 200
    with pytest.raises(httpx.ConnectError):
        await http.get(f"{url}/livez")


async def test_jobs_by_status_gauge(
    database_url: str, conn: psycopg.Connection[Any], http: httpx.AsyncClient
) -> None:
    calls = Calls()
    settings = fast_settings(database_url, concurrency=1)
    async with running_worker(settings, calls.registry) as worker:
        done = [insert(conn, "record", f'{{"n": {n}}}') for n in range(4)]
        for job in done:
            await finished(conn, job)
        insert(conn, "hang", '{"n": 9}')
        with anyio.fail_after(5):
            await calls.ran.wait()
        insert(conn, "record", '{"n": 10}')
        insert(conn, "record", '{"n": 11}')
        # This session's inserts reach the statistics before ANALYZE samples the
        # table, or they would be added to its row count a second time later.
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("ANALYZE notifyworker.jobs")

        async def counts() -> dict[str, float]:
            found = await samples(http, worker)
            return {
                status: sample(found, "notifyworker_jobs", status=status)
                for status in ("new", "queued", "running", "done", "failed", "cancelled")
            }

        # The one consumer holds the hanging job; the other two wait.
        expected = {"new": 2, "queued": 0, "running": 1, "done": 4, "failed": 0, "cancelled": 0}
        with anyio.fail_after(10):
            while (seen := await counts()) != expected:
                await anyio.sleep(0.05)
        worker.stop()
        worker.stop()  # no grace for the hanging job
    assert seen == expected


async def test_a_finished_job_is_one_json_line_with_its_facts(
    database_url: str, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="notifyworker")
    calls = Calls()
    async with running_worker(fast_settings(database_url), calls.registry):
        fine = insert(conn, "record", '{"n": 1}')
        broken = insert(conn, "boom")
        await finished(conn, fine)
        await finished(conn, broken)
    formatter = logs.json_formatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    by_job = {line["job_id"]: line for line in lines if "job_id" in line}
    assert set(by_job) == {fine, broken}
    done, failed = by_job[fine], by_job[broken]
    assert {"time", "level", "logger", "message"} <= set(done)
    assert done["level"] == "INFO"
    assert done["logger"] == "notifyworker.consumer"
    assert (done["task"], done["status"], done["attempts"], done["error"]) == (
        "record", "done", 1, None,
    )  # fmt: skip
    assert done["pickup_ms"] >= 0
    assert done["run_ms"] >= 0
    assert f"job {fine} record done" in done["message"]
    assert (failed["task"], failed["status"], failed["level"]) == ("boom", "failed", "WARNING")
    assert failed["error"] == "RuntimeError: the handler broke"
    assert failed["error"] in failed["message"]


def with_password(database_url: str) -> str:
    """The test database's URL with a password (trust authentication ignores it)."""
    parts = conninfo_to_dict(database_url)
    user, host = parts.get("user") or "postgres", str(parts.get("host") or "127.0.0.1")
    port = parts.get("port") or 5432
    if host.startswith("/"):  # a socket folder (the embedded server) goes in the query
        where = f"?host={quote(host, safe='')}&port={port}"
        return f"postgresql://{user}:{SECRET}@/{parts['dbname']}{where}"
    return f"postgresql://{user}:{SECRET}@{host}:{port}/{parts['dbname']}"


async def test_the_password_is_never_logged_even_when_connections_fail(
    database_url: str,
    conn: psycopg.Connection[Any],
    door: Door,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    calls = Calls()
    settings = fast_settings(with_password(database_url))
    async with running_worker(settings, calls.registry) as worker:
        job = insert(conn, "record", '{"n": 1}')
        await finished(conn, job)
        door.allow(False)
        scalar(conn, "SELECT pg_terminate_backend(%s)", listener_backend(conn))
        await eventually(lambda: worker.readiness() is not None)
        # A reconnect fails and says why.
        await eventually(lambda: "not currently accepting connections" in caplog.text)
        door.allow(True)
        await eventually(lambda: worker.readiness() is None)
    assert "connected to" in caplog.text
    for formatter in (logs.json_formatter(), logs.text_formatter()):
        for record in caplog.records:
            assert SECRET not in formatter.format(record)


def spawn_worker(url: str, **env: str) -> subprocess.Popen[str]:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "notifyworker", "run"],
        cwd=ROOT,
        env={**base_env, "DATABASE_URL": url, "NOTIFYWORKER_HEALTH_PORT": "0", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_worker_process_logs_json_lines_off_a_terminal_and_no_password(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    worker = spawn_worker(with_password(database_url))  # log format: auto
    try:
        await eventually(
            lambda: scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 1, within=30
        )
        job = insert(conn, "sleep", '{"seconds": 0}')
        await finished(conn, job)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert SECRET not in err
    lines = [json.loads(line) for line in err.splitlines()]
    messages = [line["message"] for line in lines]
    assert any("connected to" in message for message in messages)
    assert any(message.startswith("health and metrics on http://0.0.0.0:") for message in messages)
    assert any(line.get("job_id") == job and line["status"] == "done" for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_text_log_format_and_a_failed_connection_keep_the_password_out() -> None:
    url = f"postgresql://nobody:{SECRET}@127.0.0.1:1/none"
    result = subprocess.run(
        [sys.executable, "-m", "notifyworker", "run"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": url,
            "NOTIFYWORKER_LOG_FORMAT": "text",
            "NOTIFYWORKER_STARTUP_TIMEOUT": "1",
            "NOTIFYWORKER_HEALTH_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "127.0.0.1" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_a_busy_health_port_is_one_line(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "notifyworker", "run"],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "NOTIFYWORKER_HEALTH_HOST": "127.0.0.1",
                "NOTIFYWORKER_HEALTH_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("notifyworker: error: the health endpoints cannot listen on")
    assert "Traceback" not in result.stderr
