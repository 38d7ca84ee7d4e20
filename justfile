# notifyworker's tasks. `just up` to watch it work, `just test` to prove it, `just check` = CI.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv / "bin"

# Start everything: embedded PostgreSQL (unless DATABASE_URL is set), worker, demo, live table.
up *args: setup
    {{bin}}/notifyworker up {{args}}

# The test suite, against DATABASE_URL if set, else an embedded PostgreSQL.
test *args: setup
    {{bin}}/pytest {{args}}

# Lint, formatting, import layers, types and tests: exactly what CI runs.
check: setup lint typecheck test

lint: setup
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/lint-imports

typecheck: setup
    {{bin}}/mypy

fmt: setup
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# Any notifyworker command: `just nw jobs`, `just nw enqueue sleep --payload '{"seconds": 2}'`.
nw *args: setup
    {{bin}}/notifyworker {{args}}

# Re-pin the runtime dependencies (not the extras) with hashes, for the image: requirements/runtime.lock.
# Universal (every OS, Python 3.11 up) so the image's 3.12 and a 3.11 dev machine install the same pins.
# `just lock --upgrade` moves every pin to the newest allowed; `--upgrade-package NAME` just one.
lock *args: setup
    {{bin}}/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command 'just lock' --quiet --output-file requirements/runtime.lock {{args}}

# The deployment files alone (also part of `just test`): the lock, the Containerfile (hadolint, and its
# install replayed into a venv) and manifests/ (Kubernetes' schemas, as files and as kustomize renders them).
deploy-check *args: setup
    {{bin}}/pytest tests/deploy {{args}}

# The virtual environment with the project and its dev tools; reinstalled when pyproject changes.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{bin}}/python ]; then python3 -m venv {{venv}}; fi
    if [ ! -f {{venv}}/.installed ] || [ pyproject.toml -nt {{venv}}/.installed ]; then
        {{bin}}/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
        touch {{venv}}/.installed
    fi

# notifyworker vs PgQueuer vs Procrastinate in one run; `just bench --quick` for a 2-minute pass.
# `just bench --soak` runs the churn soak instead (retention under 1,000 jobs/s, about 21 minutes).
bench *args: setup
    {{bin}}/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
    {{bin}}/python -m benchmarks.run {{args}}
