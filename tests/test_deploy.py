"""The deployment files: the runtime lock, the Containerfile and the Kubernetes manifests.

No container engine or cluster is needed. The manifests are checked against Kubernetes'
own schemas (kubernetes-validate) as files and as kustomize renders them, and read the way
`kubectl apply -f` and `-k` read them (kubectl's `--local` mode). The Containerfile is
linted (hadolint) and its builder stage replayed into a plain virtual environment, whose
`notifyworker` then migrates a fresh database and drains on the image's STOPSIGNAL. All the
tools come from the dev extra and are taken from this interpreter's environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from notifyworker.cli import app
from notifyworker.config import Settings
from tests.manifests import (
    MANIFESTS,
    Doc,
    applied,
    applied_files,
    container,
    deployment,
    load,
    load_text,
    migrate_job,
    one,
    settings_data,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = MANIFESTS / "examples"
DEV_OVERLAY = ROOT / "manifests-dev"
CONTAINERFILE = ROOT / "Containerfile"
LOCK = ROOT / "requirements" / "runtime.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# The newest Kubernetes that kubernetes-validate (pinned 1.37.x in the dev extra) ships.
KUBERNETES_VERSION = "1.37.0"
# Settings another branch is adding; until it lands, the worker ignores them.
# The image's WORKDIR, its one writable place (an emptyDir in the pods).
SCRATCH = "/tmp"  # noqa: S108 - a path inside the image, not a temporary file here
# What the worker needs after its grace for cancelling, handing jobs back and final writes.
FINAL_WRITES_SECONDS = 10


def tool(name: str) -> Path:
    """A command of the dev extra, from the environment running the tests."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(
            f"`{name}` is not in {path.parent}: it comes with the dev extra, "
            "install it with `pip install -e '.[dev]'` (or `just setup`)",
            pytrace=False,
        )
    return path


def run_tool(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )


def kustomization(folder: Path) -> Doc:
    docs = load(folder / "Kustomization")
    assert len(docs) == 1
    return docs[0]


# --- the Containerfile ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.args)

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"line {self.line}: {self.keyword} is not in exec form"
        return [str(part) for part in value]


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_containerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined and comment lines dropped."""
    lines = text.splitlines()
    result: list[Instruction] = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        start, parts = index, []
        while stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            index += 1
            while index < len(lines) and (
                not lines[index].strip() or lines[index].strip().startswith("#")
            ):
                index += 1
            stripped = lines[index].strip() if index < len(lines) else ""
        parts.append(stripped)
        index += 1
        keyword, _, args = " ".join(part for part in parts if part).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start + 1))
    return result


def global_args() -> dict[str, str]:
    found: dict[str, str] = {}
    for ins in parse_containerfile(CONTAINERFILE.read_text()):
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            found[name] = default
    return found


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in parse_containerfile(CONTAINERFILE.read_text()):
        if ins.keyword == "FROM":
            words = ins.words()
            assert len(words) == 3, f"line {ins.line}: name every stage (FROM image AS name)"
            assert words[1].upper() == "AS", f"line {ins.line}: FROM image AS name"
            current = Stage(words[2], words[0], [])
            found[current.name] = current
        elif current is not None:
            current.instructions.append(ins)
    return found


def runtime_stage() -> Stage:
    return list(stages().values())[-1]


def copy_sources(ins: Instruction) -> tuple[list[str], str]:
    words = [word for word in ins.words() if not word.startswith("--")]
    return words[:-1], words[-1]


def image_uid() -> int:
    user = runtime_stage().last("USER").args
    uid = user.partition(":")[0]
    assert uid.isdigit(), f"USER {user}: a numeric UID lets Kubernetes verify runAsNonRoot"
    return int(uid)


# --- .dockerignore, as Docker and podman read it -----------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
    return re.compile(out)


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def in_build_context(relative: str) -> bool:
    """Whether the build context holds this path: the last matching pattern decides, and a
    pattern matches a path or any of its parent folders."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for raw in ignore_patterns():
        negated = raw.startswith("!")
        regex = _glob_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


# === the lock ==================================================================================


def locked() -> dict[str, tuple[Version, int]]:
    """Each pinned package: its version and how many hashes it carries."""
    pins: dict[str, tuple[Version, int]] = {}
    for entry in re.split(r"\n(?=\S)", LOCK.read_text()):
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", entry)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (Version(match.group(2)), entry.count("--hash=sha256:"))
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pins = locked()
    assert pins, f"{LOCK} pins nothing"
    for name, (_, hashes) in pins.items():
        assert hashes, f"{name} has no --hash in {LOCK.name}: pip --require-hashes refuses it"
    image = {name: str(value) for name, value in default_environment().items()}
    image |= {"python_version": image_python(), "sys_platform": "linux"}
    for spec in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{spec} is not in {LOCK.name}: run `just lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} pins {name}=={version}, outside {spec}: run `just lock`"
        )
        # An extra's packages (psycopg[binary] -> psycopg-binary) are pinned too.
        for extra in requirement.extras:
            for needed in metadata.requires(requirement.name) or []:
                dependency = Requirement(needed)
                if dependency.marker and dependency.marker.evaluate({**image, "extra": extra}):
                    assert canonicalize_name(dependency.name) in pins, (
                        f"{dependency.name} ({spec}) is not in {LOCK.name}: run `just lock`"
                    )


def test_lock_leaves_the_extras_out() -> None:
    pins = locked()
    for extra, specs in PYPROJECT["project"]["optional-dependencies"].items():
        for spec in specs:
            name = canonicalize_name(Requirement(spec).name)
            if name != "notifyworker" and name not in runtime_names():
                assert name not in pins, f"{name} (extra {extra}) does not belong in the image"


def runtime_names() -> set[str]:
    return {canonicalize_name(Requirement(s).name) for s in PYPROJECT["project"]["dependencies"]}


def image_python() -> str:
    base = global_args()["PYTHON"]
    match = re.fullmatch(r"python:(3\.\d+)-slim\S*", base)
    assert match, f"ARG PYTHON={base}: expected python:3.X-slim"
    return match.group(1)


def test_lock_is_valid_for_the_image_python_and_older_machines() -> None:
    recipe = (ROOT / "justfile").read_text().partition("\nlock ")[2].partition("\n\n")[0]
    assert "--universal" in recipe, "the lock must hold every wheel's hash, not one platform's"
    floor = re.search(r"--python-version (3\.\d+)", recipe)
    assert floor, "`just lock` must name its lowest Python"
    assert PYPROJECT["project"]["requires-python"] == f">={floor.group(1)}"
    assert Version(floor.group(1)) <= Version(image_python())
    assert LOCK.read_text().splitlines()[1].strip() == "#    just lock"


# === the Containerfile =========================================================================


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
    assert in_build_context("notifyworker/cli.py")


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


# === the manifests =============================================================================


def test_manifests_validate_against_kubernetes() -> None:
    files = [
        *applied_files(),
        *sorted(EXAMPLES.glob("*.yaml")),
        *sorted(DEV_OVERLAY.glob("*.yaml")),
    ]
    result = run_tool(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == sum(len(load(path)) for path in files), result.stdout
    assert "WARN" not in result.stdout + result.stderr


@pytest.mark.parametrize("folder", [MANIFESTS, DEV_OVERLAY], ids=lambda p: p.name)
def test_kustomize_renders_valid_objects(folder: Path) -> None:
    rendered = run_tool(tool("kubectl"), "kustomize", folder)
    assert rendered.returncode == 0, rendered.stderr
    docs = load_text(rendered.stdout)
    expected = {(d["kind"], d["metadata"]["name"]) for d in applied()}
    if folder == DEV_OVERLAY:
        expected |= {
            (d["kind"], d["metadata"]["name"]) for p in folder.glob("*.yaml") for d in load(p)
        }
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == expected
    result = run_tool(
        tool("kubernetes-validate"),
        "--strict",
        "-k",
        KUBERNETES_VERSION,
        "-",
        stdin=rendered.stdout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(docs), result.stdout


def test_apply_f_and_apply_k_read_the_same_objects() -> None:
    """kubectl's --local mode reads files exactly as `apply` does, without a server."""
    kubectl = tool("kubectl")
    by_file = run_tool(kubectl, "label", "--local", "-o", "name", "-f", MANIFESTS, "probe=1")
    by_kustomize = run_tool(kubectl, "label", "--local", "-o", "name", "-k", MANIFESTS, "probe=1")
    assert by_file.returncode == 0, by_file.stderr
    assert by_kustomize.returncode == 0, by_kustomize.stderr
    names = set(by_file.stdout.split())
    assert names == set(by_kustomize.stdout.split())
    assert len(names) == len(applied())
    assert not any(name.startswith("kustomization.") for name in names)


def test_kustomizations_list_every_file() -> None:
    # Named `Kustomization`, which kustomize reads and `kubectl apply -f` skips; a
    # kustomization.yaml would be read by -f too, and fail as an object of no known kind.
    assert not list(MANIFESTS.glob("kustomization.*"))
    assert kustomization(MANIFESTS)["resources"] == [p.name for p in applied_files()]
    # An overlay cannot live inside its base (kustomize refuses the cycle).
    assert kustomization(DEV_OVERLAY)["resources"] == [
        "../manifests",
        *sorted(p.name for p in DEV_OVERLAY.glob("*.yaml")),
    ]
    for path in [*applied_files(), *DEV_OVERLAY.glob("*.yaml"), *EXAMPLES.glob("*.yaml")]:
        assert path.read_text().startswith("#"), f"{path.name}: start with what it is, what to edit"


def test_everything_is_in_the_namespace() -> None:
    docs = applied()
    namespace = one(docs, "Namespace")["metadata"]["name"]
    for doc in [*docs, *(d for p in EXAMPLES.glob("*.yaml") for d in load(p))]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]
    # Pod Security Admission holds every pod to what the next test checks.
    assert (
        one(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )


def test_the_database_secret_is_referenced_and_only_an_example() -> None:
    # Re-applying the folder must never reset a real Secret to a placeholder.
    assert not [doc for doc in applied() if doc["kind"] == "Secret"]
    references = set()
    for workload in (deployment(), migrate_job()):
        (variable,) = [e for e in container(workload)["env"] if e["name"] == "DATABASE_URL"]
        ref = variable["valueFrom"]["secretKeyRef"]
        references.add((ref["name"], ref["key"]))
    assert references == {("notifyworker-database", "DATABASE_URL")}
    example = one(load(EXAMPLES / "database-secret.yaml"), "Secret", "notifyworker-database")
    assert "CHANGE-ME" in example["stringData"]["DATABASE_URL"]
    dev = one(load(DEV_OVERLAY / "secrets.yaml"), "Secret", "notifyworker-database")
    assert set(dev["stringData"]) == set(example["stringData"]) == {"DATABASE_URL"}


def pod_specs() -> Iterator[tuple[str, Doc]]:
    for doc in applied():
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def test_pods_run_locked_down_as_the_image_user() -> None:
    uid = image_uid()
    for name, pod in pod_specs():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == uid, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        for box in pod["containers"]:
            sc = box["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["runAsUser"] == uid, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert not sc.get("privileged"), name
            limits, requests = box["resources"]["limits"], box["resources"]["requests"]
            assert {"cpu", "memory"} <= set(limits) & set(requests), name
            tmp = [m for m in box["volumeMounts"] if m["mountPath"] == SCRATCH]
            assert len(tmp) == 1, name
            (volume,) = [v for v in pod["volumes"] if v["name"] == tmp[0]["name"]]
            assert "emptyDir" in volume, name
    assert runtime_stage().last("WORKDIR").args == SCRATCH


def test_worker_deployment_rolls_and_probes() -> None:
    workers = deployment()
    spec = workers["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    worker = container(workers)
    assert [e["configMapRef"]["name"] for e in worker["envFrom"]] == ["notifyworker"]
    (port,) = worker["ports"]
    health_port = int(settings_data()["NOTIFYWORKER_HEALTH_PORT"])
    assert port == {"name": "http", "containerPort": health_port, "protocol": "TCP"}
    assert runtime_stage().last("EXPOSE").args == str(health_port)
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
    ):
        assert worker[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(health_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_outlasts_the_shutdown_grace() -> None:
    grace = float(settings_data()["NOTIFYWORKER_SHUTDOWN_GRACE"])
    termination = deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert termination >= grace + FINAL_WRITES_SECONDS, (
        f"SIGKILL after {termination}s would cut a {grace}s shutdown grace and its final writes"
    )


def test_disruption_budget_covers_the_workers_only() -> None:
    budget = one(applied(), "PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector == deployment()["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["minAvailable"] == 1 < deployment()["spec"]["replicas"]
    job_labels = migrate_job()["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()


def test_migration_job_is_bounded() -> None:
    spec = migrate_job()["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert container(migrate_job())["envFrom"] == container(deployment())["envFrom"]


def test_configmap_holds_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    data = settings_data()
    known = {f"NOTIFYWORKER_{name.upper()}" for name in Settings.model_fields}
    unknown = set(data) - known
    assert not unknown, f"no such settings: {sorted(unknown)}"
    assert "NOTIFYWORKER_DATABASE_URL" not in data
    assert data["NOTIFYWORKER_LOG_FORMAT"] in {"auto", "json", "text"}
    for name in os.environ:
        if name.startswith("NOTIFYWORKER_"):
            monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.shutdown_grace == float(data["NOTIFYWORKER_SHUTDOWN_GRACE"])


# === the image's install, replayed ========================================================


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
                f"programs, not {program!r}; teach test_deploy.Replay about it"
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
