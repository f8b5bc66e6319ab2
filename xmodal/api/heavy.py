"""Queries by uploaded media: bounded in number, abandoned when their client leaves, memory given back.

Decoding an uploaded image or sound and running it through a model costs far more than a text query
(hundreds of MB and seconds of CPU at the limits). :class:`HeavyWork` lets ``query_concurrency`` of
them run at once and refuses more at once (503, Retry-After) instead of queueing them; each runs in a
worker thread while :func:`until_disconnect` watches the connection and sets a cancel flag that the
decoders check between blocks, so a client that gives up stops the work. When the last one ends, the
C heap's free pages go back to the OS (glibc keeps them otherwise, and a burst's peak would stay).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

from xmodal.errors import BusyError, Cancelled

log = logging.getLogger(__name__)
T = TypeVar("T")


class HeavyWork:
    """At most ``limit`` uploaded-media queries at once; the next one is refused, not queued. Slots are
    taken and given back on the event loop (one thread: a plain count is enough)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            raise BusyError(f"busy: {self.limit} uploaded-media queries are running; try again shortly "
                            "(text queries are not limited)", retry_after=1)
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                await anyio.to_thread.run_sync(release_memory)


async def until_disconnect(request: Request, work: Callable[[threading.Event], T]) -> T:
    """Run ``work(cancel)`` in a worker thread; ``cancel`` is set if the client disconnects meanwhile,
    and then :class:`Cancelled` is raised here whatever ``work`` returned."""
    cancel = threading.Event()
    outcome: list[Any] = []
    failed: list[BaseException] = []

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                cancel.set()
                return

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch)
        try:
            outcome.append(await anyio.to_thread.run_sync(work, cancel))
        except Exception as exc:  # raised below as itself, not inside an exception group
            failed.append(exc)
        finally:
            tasks.cancel_scope.cancel()
    if cancel.is_set():
        raise Cancelled("the client disconnected: the query was abandoned")
    if failed:
        raise failed[0]
    return outcome[0]  # type: ignore[no-any-return]


_libc: Any = None


def release_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is not None:
        trim(0)
