"""The Containerfile's builder stage replayed into a plain virtual environment, whose
`notifyworker` then migrates a fresh database and drains on the image's STOPSIGNAL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.deploy.containerfile import (
    Instruction,
    Stage,
    copy_sources,
    in_build_context,
    runtime_stage,
    stages,
)
from tests.deploy.tools import ROOT
from tests.manifests import container, deployment, migrate_job, settings_data


class Replay:
    """The Containerfile's stages run into a folder standing for the image's filesystem.

    COPY copies from the repository what the build context holds; RUN runs in `sh` with
    the image's absolute paths (WORKDIRs, COPY destinations, the venv) moved under the
    folder, and `python` being this interpreter. `--no-cache-dir` is dropped, so pip may
    reuse the machine's cache: the lock's hashes are checked all the same.

    Only the builder stages' RUN steps are replayed (they write under the folder alone); the
    runtime stage's set up the operating system (its user), which must not happen here, and
    test_containerfile_stages keeps them free of installs. Its ENV, WORKDIR and
    COPY --from=builder (the same folder) apply as they are.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        shim = root / "shim"
        shim.mkdir(parents=True)
        for name in ("python", "python3"):
            (shim / name).symlink_to(sys.executable)
        outside = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NOTIFYWORKER_", "VIRTUAL_ENV")) and k != "DATABASE_URL"
        }
        self._base_env = {**outside, "PATH": f"{shim}{os.pathsep}{outside['PATH']}"}
        self.env = dict(self._base_env)
        self.workdir = "/"
        owned = {"/opt/venv"}
        for stage in stages().values():
            workdir = "/"
            for ins in stage.instructions:
                if ins.keyword == "WORKDIR":
                    workdir = os.path.join(workdir, ins.args)
                    owned.add(workdir)
                elif ins.keyword == "COPY":
                    owned.add(os.path.normpath(os.path.join(workdir, copy_sources(ins)[1])))
        alternatives = "|".join(re.escape(p) for p in sorted(owned, key=len, reverse=True))
        self._owned = re.compile(rf"(?<![\w./-])({alternatives})(?=$|[\s/'\":])")

    def path(self, text: str) -> str:
        return self._owned.sub(lambda m: str(self.root) + m.group(1), text)

    def inside(self, image_path: str) -> Path:
        return self.root / os.path.normpath(image_path).lstrip("/")

    def here(self) -> Path:
        return self.inside(self.workdir)

    def stage(self, stage: Stage, *, run: bool) -> None:
        # Each stage starts from its base image's environment and folder.
        self.env, self.workdir = dict(self._base_env), "/"
        for ins in stage.instructions:
            if ins.keyword == "ENV":
                for word in ins.words():
                    name, _, value = word.partition("=")
                    expanded = re.sub(
                        r"\$\{?(\w+)\}?", lambda m: self.env.get(m.group(1), ""), value
                    )
                    self.env[name] = self.path(expanded)
            elif ins.keyword == "WORKDIR":
                self.workdir = os.path.join(self.workdir, ins.args)
                self.here().mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY" and "--from=" not in ins.args:
                self.copy(*copy_sources(ins))
            elif ins.keyword == "RUN" and run:
                self.refuse_outside_steps(ins)
                command = re.sub(r"\s--no-cache-dir\b", "", self.path(ins.args))
                result = subprocess.run(
                    ["sh", "-c", command],
                    cwd=self.here(),
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=240,
                    check=False,
                )
                assert result.returncode == 0, (
                    f"Containerfile line {ins.line}: {ins.args}\n"
                    f"replayed as: {command}\n{result.stdout}\n{result.stderr}"
                )

    def refuse_outside_steps(self, ins: Instruction) -> None:
        """Every command of a replayed RUN is Python or a program of the image's venv: this
        runs on the test machine, where `apt-get` or `useradd` must not."""
        for command in re.split(r"&&|\|\||;|\|", ins.args):
            program = command.split()[0]
            assert program in {"python", "python3"} or self._owned.fullmatch(
                os.path.dirname(os.path.dirname(program))
            ), (
                f"Containerfile line {ins.line}: the replay runs only python and the venv's "
                f"programs, not {program!r}; teach tests.deploy.test_image_replay.Replay about it"
            )

    def copy(self, sources: list[str], destination: str) -> None:
        target = self.inside(os.path.join(self.workdir, destination))
        into_folder = destination.endswith("/") or len(sources) > 1
        for source in sources:
            origin = ROOT / source
            place = target / origin.name if into_folder else target
            if origin.is_dir():
                for file in sorted(origin.rglob("*")):
                    relative = file.relative_to(ROOT).as_posix()
                    if file.is_file() and in_build_context(relative):
                        copied = place / file.relative_to(origin)
                        copied.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, copied)
            else:
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, place)


def image_run(
    replay: Replay, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*entrypoint(replay), *args],
        cwd=replay.here(),
        env={**replay.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def entrypoint(replay: Replay) -> list[str]:
    first, *rest = runtime_stage().last("ENTRYPOINT").exec_form()
    found = shutil.which(first, path=replay.env["PATH"])
    assert found, f"ENTRYPOINT {first} is not on the image's PATH"
    assert Path(found).is_relative_to(replay.root / "opt" / "venv"), found
    return [found, *rest]


def listed_commands(help_text: str) -> set[str]:
    commands = help_text.partition("Commands")[2]
    return set(re.findall(r"^\W*([a-z][a-z-]*)\s{2,}", commands, re.MULTILINE))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_image_install_replay(tmp_path: Path, empty_database_url: str) -> None:
    """The image's builder stage installs, and its venv migrates and runs a worker.

    Takes 10-20 s with a warm pip cache: a fresh venv, the locked wheels and a wheel build
    of notifyworker (it needs the package index, or pip's cache, like the image build does).
    """
    replay = Replay(tmp_path / "image")
    *builders, runtime = stages().values()
    for stage in builders:
        replay.stage(stage, run=True)
    replay.stage(runtime, run=False)
    venv_python = replay.root / "opt" / "venv" / "bin" / "python"
    check = subprocess.run(
        [venv_python, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    where = subprocess.run(
        [venv_python, "-c", "import notifyworker; print(notifyworker.__file__)"],
        cwd=replay.here(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(replay.root), "not the image's copy"

    helped = image_run(replay, ["--help"], {"COLUMNS": "200"})
    assert helped.returncode == 0, helped.stderr
    commands = listed_commands(helped.stdout)
    assert {"run", "migrate"} <= commands, helped.stdout

    # As the pods get it: the ConfigMap (health on a free port here) and the Secret's URL.
    pod_env = {
        **settings_data(),
        "NOTIFYWORKER_HEALTH_PORT": str(free_port()),
        "DATABASE_URL": empty_database_url,
    }
    job_args = container(migrate_job())["args"]
    first = image_run(replay, job_args, pod_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied 0001_"), first.stdout
    again = image_run(replay, job_args, pod_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "schema is up to date"
    if "check" in commands:  # `notifyworker check`, from another branch
        checked = image_run(replay, ["check"], pod_env)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    drains_on_stopsignal(replay, pod_env, empty_database_url)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def drains_on_stopsignal(replay: Replay, env: dict[str, str], url: str) -> None:
    """The Deployment's args start a worker; the image's STOPSIGNAL stops it cleanly."""
    stop = signal.Signals[runtime_stage().last("STOPSIGNAL").args]
    worker = subprocess.Popen(
        [*entrypoint(replay), *container(deployment())["args"]],
        cwd=replay.here(),
        env={**replay.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while not registered(conn):
                assert worker.poll() is None, worker.communicate()[1]
                assert time.monotonic() < deadline, "the worker never registered"
                time.sleep(0.1)
            worker.send_signal(stop)
            _, stderr = worker.communicate(timeout=float(env["NOTIFYWORKER_SHUTDOWN_GRACE"]) + 10)
            assert worker.returncode == 0, stderr
            assert not registered(conn), "the worker left its registration behind"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def registered(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
    row = conn.execute("SELECT count(*) FROM notifyworker.workers").fetchone()
    return bool(row and row[0])
