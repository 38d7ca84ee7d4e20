"""The SQL of notifyworker, read from the `sql/` files once per process.

Statements live in files so they can be read, reviewed and EXPLAINed as SQL;
code names them and passes parameters, and never builds SQL from strings.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString

from notifyworker.errors import NotifyWorkerError

_BLOCK = re.compile(r"^-- ([a-z0-9_]+) --\n", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: LiteralString


def sql_dir() -> Path:
    """The packaged copy in a wheel, or the checkout's `sql/` in development."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise NotifyWorkerError(f"notifyworker's sql/ folder is missing next to {here}")


def parse_queries(text: str) -> dict[str, LiteralString]:
    """Split a file of `-- name --` blocks into named statements."""
    parts = _BLOCK.split(text)
    queries: dict[str, LiteralString] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise NotifyWorkerError(f"query {name!r} is defined twice")
        statement = "\n".join(
            line for line in body.strip().splitlines() if not line.startswith("-- ")
        )
        # The files are ours, shipped with the package: we vouch for them as literal SQL.
        queries[name] = statement.strip()
    return queries


@functools.cache
def queries() -> dict[str, LiteralString]:
    return parse_queries((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


def query(name: str) -> LiteralString:
    try:
        return queries()[name]
    except KeyError:
        raise NotifyWorkerError(f"no query named {name!r} in sql/queries.sql") from None


@functools.cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for path in sorted((sql_dir() / "migrations").glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise NotifyWorkerError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise NotifyWorkerError(f"migration versions must run 1, 2, 3…; found {versions}")
    return tuple(found)
