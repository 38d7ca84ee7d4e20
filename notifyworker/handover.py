"""The bounded channel from the claimer to the consumers: the cheapest one on each loop.

anyio's memory object stream makes an Event and takes a checkpoint for every
receive that has to wait; with a consumer waiting once per job, that cost a
sixth of a drain on trio (docs/benchmarks.md, issue 10). trio's own channel
parks the waiting task directly, so on trio the worker hands jobs over
through it; on asyncio anyio's stream is the native choice. Both have the
same shape (`send_nowait`, `receive_nowait`, `receive`, `clone`, `async
with`); what differs, their exceptions, is named here once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, TypeVar

import anyio
import sniffio
import trio

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


class Sender(Protocol[T_contra]):
    def send_nowait(self, item: T_contra, /) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None, /
    ) -> bool | None: ...


class Receiver(Protocol[T_co]):
    def receive_nowait(self) -> T_co: ...
    async def receive(self) -> T_co: ...
    def clone(self) -> Receiver[T_co]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None, /
    ) -> bool | None: ...


# Nothing to take now (the channel is open), on either loop.
EMPTY = (trio.WouldBlock, anyio.WouldBlock)
# The sender closed and every item was taken, on either loop.
CLOSED = (trio.EndOfChannel, anyio.EndOfStream)


def open_handover(size: int) -> tuple[Sender[T], Receiver[T]]:
    """A channel holding up to `size` items, for the event loop that is running."""
    if sniffio.current_async_library() == "trio":
        trio_send, trio_receive = trio.open_memory_channel[T](size)
        return trio_send, trio_receive
    send, receive = anyio.create_memory_object_stream[T](size)
    return send, receive
