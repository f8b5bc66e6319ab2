"""One indexing run per collection at a time: an exclusive ``flock`` on a file in the data dir and,
when the catalog is PostgreSQL, a session advisory lock in the database too.

The kernel drops the file lock when the process ends, however it ends (SIGKILL included), and
PostgreSQL drops a session lock when its connection closes (which the kernel does for a killed
process), so a crashed run never leaves a stale lock behind. The file lock guards runs that share
the data dir's filesystem; the advisory lock guards runs on other machines against one catalog.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.pool import NullPool

from xmodal.errors import UserError
from xmodal.storage.catalog import check_collection_name


class CollectionBusy(UserError):
    """Another run holds the collection's lock."""


def _advisory_key(schema: str, collection: str) -> int:
    """A stable signed 64-bit key for the collection's advisory lock (advisory locks are per database:
    the schema keeps catalogs in different schemas of one database apart)."""
    digest = hashlib.sha256(f"xmodal-index:{schema}:{collection}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _database_lock(database_url: str | None, collection: str) -> Iterator[None]:
    if not database_url or not database_url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            key = _advisory_key(str(conn.execute(text("SELECT current_schema()")).scalar()), collection)
            if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                raise CollectionBusy(
                    f"another `xmodal index` run on collection {collection!r} is in progress against this "
                    "catalog (it may be on another machine); nothing was changed"
                )
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def collection_lock(home: Path, collection: str, database_url: str | None = None) -> Iterator[None]:
    """Hold the collection's locks for a block: the data dir's file lock, then (PostgreSQL) the
    catalog's advisory lock. ``CollectionBusy`` when either is held elsewhere."""
    with _file_lock(home, collection), _database_lock(database_url, collection):
        yield


@contextlib.contextmanager
def _file_lock(home: Path, collection: str) -> Iterator[None]:
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
