"""The worker Deployment replayed without a cluster, as the kubelet would run it.

Two worker processes start with exactly the Deployment's command, arguments and
environment (the ConfigMap's values through envFrom, DATABASE_URL as the
Secret would give it) against one PostgreSQL. Two things differ from a pod,
and only because both processes share this machine's network and Python: each
gets its own probe port (pods each have their own network namespace), and the
task module the test's image would be built with is named in NOTIFYWORKER_TASKS.
The probes are polled on their own periods until both workers are ready, a
few thousand jobs run through them, /metrics must add up to the jobs done, and
SIGTERM (the image's STOPSIGNAL) must drain each worker within
terminationGracePeriodSeconds with nothing left `queued` or `running`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import eventually, scalar
from tests.manifests import Doc, container, deployment, settings_data

ROOT = Path(__file__).resolve().parent.parent
JOBS = 2000


@dataclass
class Pod:
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pod_environment(spec: Doc, database_url: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env."""
    worker = container(spec)
    env: dict[str, str] = {}
    for source in worker.get("envFrom", []):
        assert source["configMapRef"]["name"] == "notifyworker"
        env.update(settings_data())
    for variable in worker.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            secret = variable["valueFrom"]["secretKeyRef"]
            assert (secret["name"], secret["key"]) == ("notifyworker-database", "DATABASE_URL")
            env[variable["name"]] = database_url
    return env


def command_line(spec: Doc) -> list[str]:
    """The image's ENTRYPOINT (`notifyworker`) unless overridden, then the Deployment's args."""
    worker = container(spec)
    entrypoint = worker.get("command", ["notifyworker"])
    program = shutil.which(entrypoint[0], path=str(Path(sys.executable).parent))
    assert program, f"{entrypoint[0]} is not installed next to {sys.executable}"
    return [program, *entrypoint[1:], *worker["args"]]


def probe(worker: Doc, kind: str) -> tuple[str, float]:
    """A probe's path and period; it must reach the container's named port."""
    spec = worker[kind]
    port_names = {port["name"] for port in worker["ports"]}
    assert spec["httpGet"]["port"] in port_names
    return spec["httpGet"]["path"], float(spec.get("periodSeconds", 10))


@pytest.fixture
def pods(database_url: str) -> Iterator[list[Pod]]:
    spec = deployment()
    replicas = spec["spec"]["replicas"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFYWORKER_")}
    base.pop("DATABASE_URL", None)
    started: list[Pod] = []
    for _ in range(replicas):
        port = free_port()
        env = {
            **base,
            **pod_environment(spec, database_url),
            "NOTIFYWORKER_HEALTH_PORT": str(port),
            "NOTIFYWORKER_TASKS": "tests.ledger_tasks",
        }
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        process = subprocess.Popen(command_line(spec), cwd=ROOT, env=env, stdout=log, stderr=log)
        started.append(Pod(process, port, log))
    yield started
    for pod in started:
        if pod.process.poll() is None:
            pod.process.kill()
            pod.process.wait()
        pod.log.close()


async def until_ready(http: httpx.AsyncClient, pod: Pod, worker: Doc) -> None:
    """Poll the startupProbe, then the readinessProbe, on their periods, as the kubelet does."""
    for kind in ("startupProbe", "readinessProbe"):
        path, period = probe(worker, kind)
        threshold = worker[kind].get("failureThreshold", 3)
        for _ in range(threshold):
            try:
                answer = await http.get(pod.url(path))
            except httpx.TransportError:
                answer = None  # not listening yet: a failed probe
            if answer is not None and answer.status_code == 200:
                break
            await anyio.sleep(period)
        else:
            pytest.fail(f"{kind} {path} never passed")


async def metric_total(http: httpx.AsyncClient, pods: list[Pod], name: str, **labels: str) -> float:
    total = 0.0
    for pod in pods:
        response = await http.get(pod.url("/metrics"))
        assert response.status_code == 200
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
    return total


async def test_the_deployment_runs_drains_and_stops_as_on_a_cluster(
    pods: list[Pod], conn: psycopg.Connection[Any]
) -> None:
    spec = deployment()
    worker = container(spec)
    conn.execute("CREATE TABLE ledger (n integer NOT NULL, pid integer NOT NULL)")
    async with httpx.AsyncClient(timeout=2) as http:
        for pod in pods:
            await until_ready(http, pod, worker)
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, payload)"
            " SELECT 'ledger', jsonb_build_object('n', n) FROM generate_series(1, %s::int) AS n",
            (JOBS,),
        )
        await eventually(
            lambda: (
                scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'done'") == JOBS
            ),
            within=120,
        )
        # Counters are bumped as outcomes are handed to the recorder, so they are
        # complete once the table says done.
        done = await metric_total(
            http, pods, "notifyworker_jobs_finished_total", task="ledger", status="done"
        )
        started = await metric_total(http, pods, "notifyworker_jobs_started_total")
        claimed = await metric_total(http, pods, "notifyworker_jobs_claimed_total")
        picked_up = await metric_total(http, pods, "notifyworker_job_pickup_seconds_count")
        # Something to drain when the kubelet stops the pods: jobs running for a while.
        conn.execute(
            "INSERT INTO notifyworker.jobs (task, payload)"
            " SELECT 'ledger', jsonb_build_object('n', n, 'seconds', 2.0)"
            " FROM generate_series(%s::int, %s::int) AS n",
            (JOBS + 1, JOBS + 20),
        )
        await eventually(
            lambda: (
                scalar(conn, "SELECT count(*) FROM notifyworker.jobs WHERE status = 'running'") > 0
            )
        )
    assert (done, started, claimed, picked_up) == (JOBS, JOBS, JOBS, JOBS)

    grace = spec["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    stopped_at = time.monotonic()
    for pod in pods:
        pod.process.send_signal(signal.SIGTERM)
    codes = [pod.process.wait(timeout=grace) for pod in pods]
    took = time.monotonic() - stopped_at
    logs = []
    for pod in pods:
        pod.log.seek(0)
        logs.append(pod.log.read().decode(errors="replace"))
    assert codes == [0, 0], logs
    assert took < grace
    left = scalar(
        conn, "SELECT count(*) FROM notifyworker.jobs WHERE status IN ('queued', 'running')"
    )
    assert left == 0
    assert scalar(conn, "SELECT count(*) FROM notifyworker.workers") == 0
    runs, distinct = conn.execute("SELECT count(*), count(DISTINCT n) FROM ledger").fetchone() or (
        0,
        0,
    )
    assert runs == distinct  # no job ran twice
    assert scalar(conn, "SELECT count(*) FROM ledger WHERE n <= %s", JOBS) == JOBS
    assert not any("Traceback" in log for log in logs)
