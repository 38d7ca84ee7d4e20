"""The Containerfile: hadolint finds nothing, its stages install the lock then the project,
the build context holds what it copies, and its entrypoint is the manifests' command."""

from __future__ import annotations

import json
import re

import typer

from notifyworker.cli import app
from tests.deploy.containerfile import (
    CONTAINERFILE,
    copy_sources,
    global_args,
    image_uid,
    in_build_context,
    runtime_stage,
    stages,
)
from tests.deploy.tools import PYPROJECT, run_tool, tool
from tests.manifests import container, deployment, migrate_job


def test_containerfile_lints_clean() -> None:
    result = run_tool(tool("hadolint"), "--format", "json", CONTAINERFILE)
    findings = json.loads(result.stdout or "null")
    assert findings == [], f"hadolint:\n{json.dumps(findings, indent=2)}\n{result.stderr}"
    assert result.returncode == 0
    lines = CONTAINERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            why = f"line {number + 1}: say why on the comment line above `# hadolint ignore=`"
            assert above.startswith("#"), why
            assert "hadolint" not in above, why


def test_containerfile_stages() -> None:
    assert global_args()["PYTHON"] == "python:3.12-slim"
    builder, runtime = stages().values()
    assert builder.base == runtime.base == "${PYTHON}"
    # The locked dependencies first, from a COPY of the lock alone, so code changes reuse
    # that layer; then the project itself, without dependencies.
    first_copy = builder.all("COPY")[0]
    lock_sources, lock_copy = copy_sources(first_copy)
    assert lock_sources == ["requirements/runtime.lock"]
    runs = builder.all("RUN")
    installs = [run for run in runs if "pip install" in run.args]
    assert len(installs) == 2, installs
    dependencies, project = installs
    assert dependencies.line < builder.all("COPY")[1].line
    assert {"--require-hashes", "--no-deps", "-r", lock_copy} <= set(dependencies.words())
    assert "--no-deps" in project.words()
    assert "." in project.words()
    # The runtime stage gets the venv and nothing that compiles or installs.
    (venv_copy,) = runtime.all("COPY")
    assert venv_copy.words() == ["--from=builder", "/opt/venv", "/opt/venv"]
    for run in runtime.all("RUN"):
        assert not re.search(r"pip|apt|apk|gcc|make", run.args), run.args
    env = dict(word.split("=", 1) for ins in runtime.all("ENV") for word in ins.words())
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert image_uid() == 10001
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"


def test_build_context_holds_what_the_containerfile_copies() -> None:
    for stage in stages().values():
        for ins in stage.all("COPY"):
            if "--from=" in ins.args:
                continue
            for source in copy_sources(ins)[0]:
                assert in_build_context(source), f".dockerignore leaves out {source}"
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".notifyworker/pg"):
        assert not in_build_context(left_out), f"the build context should not hold {left_out}"
    assert not in_build_context("notifyworker/__pycache__/cli.cpython-312.pyc")
    assert in_build_context("notifyworker/cli/__init__.py")


def test_entrypoint_and_command_match_the_manifests() -> None:
    runtime = runtime_stage()
    entrypoint = runtime.last("ENTRYPOINT").exec_form()
    command = runtime.last("CMD").exec_form()
    assert entrypoint == ["notifyworker"]
    assert entrypoint[0] in PYPROJECT["project"]["scripts"]
    commands = typer.main.get_group(app).commands
    worker, job = container(deployment()), container(migrate_job())
    # Both keep the image's ENTRYPOINT and give the subcommand as args.
    assert "command" not in worker
    assert "command" not in job
    assert worker["args"] == command == ["run"]
    assert job["args"] == ["migrate"]
    assert {worker["args"][0], job["args"][0]} <= set(commands)
