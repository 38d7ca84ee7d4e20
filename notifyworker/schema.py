"""The schema's units of work: apply the migrations, and say which are pending.

`notifyworker migrate` applies them; a worker starting up, and `notifyworker
check`, only ask what is pending (the worker role may read the record).
"""

from __future__ import annotations

from notifyworker.db import Session
from notifyworker.sqlfiles import migrations


def migrate(s: Session) -> list[str]:
    """Apply the migrations not yet applied, in one transaction; names applied.

    Safe to run from several processes at once: the advisory lock makes the
    second wait for the first, then find nothing left to do.
    """
    applied_now = []
    with s.transaction():
        s.rows("migrate_lock")
        s.execute("migrate_bookkeeping")
        done = {row["version"] for row in s.rows("applied_migrations")}
        for migration in migrations():
            if migration.version in done:
                continue
            s.script(migration.sql)
            s.execute("record_migration", version=migration.version, name=migration.name)
            applied_now.append(f"{migration.version:04d}_{migration.name}")
    return applied_now


def pending_migrations(s: Session) -> list[int]:
    done = {row["version"] for row in s.rows("applied_migrations")}
    return [m.version for m in migrations() if m.version not in done]
