"""The SQL of notifyworker, read from the `sql/` files once per process.

Statements live in files so they can be read, reviewed and EXPLAINed as SQL;
code names them and passes parameters, and never builds SQL from strings.
`sql/queries/` holds one file per sender (service, sweeper, admin, producer),
so the roles test can hold each role to its file; a name is defined in one
file only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
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
        if (candidate / "queries").is_dir():
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


def merge_queries(files: Mapping[str, Mapping[str, LiteralString]]) -> dict[str, LiteralString]:
    """One namespace of statements from several files; a name in two files is refused."""
    merged: dict[str, LiteralString] = {}
    found_in: dict[str, str] = {}
    for file, named in files.items():
        for name, statement in named.items():
            if name in found_in:
                raise NotifyWorkerError(
                    f"query {name!r} is defined in both {found_in[name]} and {file}"
                )
            found_in[name] = file
            merged[name] = statement
    return merged


@functools.cache
def query_files() -> dict[str, dict[str, LiteralString]]:
    """Each file of `sql/queries/` (service, sweeper, admin, producer) with its statements."""
    return {
        path.name: parse_queries(path.read_text(encoding="utf-8"))
        for path in sorted((sql_dir() / "queries").glob("*.sql"))
    }


@functools.cache
def queries() -> dict[str, LiteralString]:
    return merge_queries(query_files())


def query(name: str) -> LiteralString:
    try:
        return queries()[name]
    except KeyError:
        raise NotifyWorkerError(f"no query named {name!r} in sql/queries/") from None


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
