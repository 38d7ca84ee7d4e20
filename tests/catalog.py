"""The schema's catalog as lines of text, to compare two databases (tests/catalog.sql)."""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from notifyworker.sqlfiles import parse_queries

# Control characters but the newline (a CHECK on whitespace holds \r, \v, \f) shown as escapes.
_VISIBLE = {code: f"\\x{code:02x}" for code in range(32) if code != ord("\n")}


@functools.cache
def _queries() -> dict[str, LiteralString]:
    return parse_queries((Path(__file__).parent / "catalog.sql").read_text(encoding="utf-8"))


def describe(conn: psycopg.Connection[Any]) -> list[str]:
    """Every object of the schema, its definition and its grants, one line each."""
    lines: list[str] = []
    for statement in _queries().values():
        for obj, detail in conn.execute(statement).fetchall():
            lines.extend(f"{obj}: {line}" for line in str(detail).translate(_VISIBLE).split("\n"))
    return lines


def difference(left: list[str], right: list[str], left_name: str, right_name: str) -> str:
    """A unified diff of two descriptions; empty when they are the same."""
    return "\n".join(difflib.unified_diff(left, right, left_name, right_name, lineterm="", n=2))
