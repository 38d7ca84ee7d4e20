"""The repository's root and the dev extra's commands, for the deployment tests.

No container engine or cluster is needed: every tool (hadolint, kubernetes-validate, kubectl)
comes from the dev extra and is taken from this interpreter's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


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
