"""The wake-up token: which one worker a new job's notification wakes.

The insert trigger names its transaction (`inserted:<xid>`, migration
0014); every worker hashes that token with each worker id it knows as
free, and the highest hash wins (rendezvous hashing). Workers that know the
same fleet agree without talking; when their views differ, the cost is an
extra claim or, at worst, a wait for the next poll. The hash is blake2b,
never Python's `hash()`, which differs from process to process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

INSERTED = "inserted:"
# A transaction id (xid8) as the trigger prints it: ASCII digits, no sign,
# no leading zero, at most 2**64 - 1. Anything else is not a token.
_XID = re.compile(r"[1-9][0-9]{0,19}", re.ASCII)
_MAX_XID = 2**64 - 1


def parse_token(payload: str) -> str | None:
    """The token of an insert notification (its xid, canonical), or None for anything else."""
    if not payload.startswith(INSERTED):
        return None
    xid = payload[len(INSERTED) :]
    if _XID.fullmatch(xid) is None or int(xid) > _MAX_XID:
        return None
    return xid


def weight(token: str, worker_id: str) -> bytes:
    """The worker's draw for this token: the same in every process, on every machine."""
    return hashlib.blake2b(f"{token}\x00{worker_id}".encode(), digest_size=16).digest()


def designated(token: str, workers: Iterable[str]) -> str | None:
    """The worker this token wakes among `workers` (None when there is none)."""
    best: tuple[bytes, str] | None = None
    for worker in workers:
        draw = (weight(token, worker), worker)
        if best is None or draw > best:
            best = draw
    return None if best is None else best[1]
