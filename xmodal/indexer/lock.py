"""One indexing run per collection at a time: an exclusive ``flock`` on a file in the data dir.

The kernel drops the lock when the process ends, however it ends (SIGKILL included), so a crashed
run never leaves a stale lock behind. It guards runs that share the data dir's filesystem; runs on
other machines against one PostgreSQL catalog need a database lock as well (not done yet).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from xmodal.errors import UserError
from xmodal.storage.catalog import check_collection_name


class CollectionBusy(UserError):
    """Another run holds the collection's lock."""


@contextlib.contextmanager
def collection_lock(home: Path, collection: str) -> Iterator[None]:
    check_collection_name(collection)  # it becomes a file name: check before any path is made
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{collection}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise CollectionBusy(
                f"another `xmodal index` run on collection {collection!r} is in progress (pid {holder}); "
                "nothing was changed"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
