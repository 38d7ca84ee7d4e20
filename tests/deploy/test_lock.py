"""requirements/runtime.lock: every runtime dependency pinned with hashes, for the image's
Python and the oldest one the project supports, and nothing of the extras."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.containerfile import global_args
from tests.deploy.tools import PYPROJECT, ROOT

LOCK = ROOT / "requirements" / "runtime.lock"


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
