"""Serving an item's original file: only what was indexed, only from where it was indexed.

An item's recorded path is resolved (symlinks included) and must lie under one of the collection's
source roots (``Catalog.source_roots``: the real folders it was indexed from, the folders of files a
manifest named, the targets of links it was allowed to follow); nothing outside them is opened. The
real path is opened without following a final symlink; on Linux the opened file's own path
(``/proc/self/fd``) is checked against the roots too, which closes the race where a folder on the way is
swapped for a link after the first check. The open file must be a regular file whose size and
modification time are the catalog's, or else whose SHA-256 is the catalog's content hash: a file
changed since indexing is a conflict (409), not served. The response streams from that same open file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import anyio
from starlette.responses import FileResponse

from xmodal.errors import ConflictError, NotFoundError
from xmodal.storage.catalog import Item
from xmodal.storage.uris import is_under, uri_to_path

log = logging.getLogger(__name__)

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_PROC_FD = "/proc/self/fd"


@dataclass
class VerifiedFile:
    """An open descriptor of an item's file that passed the checks above; whoever takes it closes it."""

    fd: int
    stat: os.stat_result
    path: str  # the real path
    content_hash: str  # of the bytes as the checks found them (the catalog's, verified)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def sha256(self) -> str:
        """The SHA-256 of the bytes, read in chunks from the start (never the whole file in memory)."""
        return _sha256(self.fd)

    def reader(self) -> BinaryIO:
        """A buffered file object over the open file, at its start, for a decoder that reads as it goes;
        closing it leaves the descriptor open (:meth:`close` closes that)."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        return open(self.fd, "rb", closefd=False)  # noqa: SIM115 - the caller closes it

    def read(self, limit: int) -> bytes:
        """The whole file (at most ``limit`` + 1 bytes are read), from its start."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(self.fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)


def open_verified(item: Item, roots: list[str], *, max_bytes: int) -> VerifiedFile:
    """Open an item's local file after the checks of this module, or raise ``NotFoundError`` (outside
    the roots, gone, not a regular file) or ``ConflictError`` (changed since indexing)."""
    name = f"item {item.id}"
    if not roots:
        raise NotFoundError(f"the media of {name} is not served: its collection was indexed before xmodal recorded "
                            "source folders; run `xmodal index` on its sources once to serve its media")
    path = uri_to_path(item.uri)
    real = os.path.realpath(path)
    if not is_under(real, roots):
        log.warning("not serving %s: %s resolves to %s, outside the collection's sources", name, path, real)
        raise NotFoundError(f"the media of {name} is not served: its file now lies outside the collection's sources")
    try:
        fd = os.open(real, _FLAGS)
    except FileNotFoundError:
        raise NotFoundError(f"the original file of {name} is no longer at its path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since the check
            raise NotFoundError(f"the media of {name} is not served: its file is now a link") from None
        raise NotFoundError(f"the original file of {name} can't be opened: {exc.strerror}") from None
    try:
        return _verify(fd, item, roots, real, max_bytes)
    except BaseException:
        os.close(fd)
        raise


def _verify(fd: int, item: Item, roots: list[str], real: str, max_bytes: int) -> VerifiedFile:
    name = f"item {item.id}"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotFoundError(f"the media of {name} is not served: its path no longer holds a regular file")
    opened = _opened_path(fd)
    if opened is not None and not is_under(opened, roots):
        log.warning("not serving %s: the file opened at %s is %s, outside the collection's sources", name, real, opened)
        raise NotFoundError(f"the media of {name} is not served: its file now lies outside the collection's sources")
    changed = (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns)  # then only its bytes can say
    if changed and (st.st_size > max_bytes or _sha256(fd) != item.content_hash):
        raise ConflictError(f"the file of {name} changed since it was indexed: run `xmodal index` on its "
                            "source to index it again")
    return VerifiedFile(fd, st, real, item.content_hash or "")


def _opened_path(fd: int) -> str | None:
    """The path the kernel holds for an open file (Linux), or None where that can't be asked."""
    try:
        return os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        return None


def _sha256(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    digest = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


class VerifiedFileResponse(FileResponse):
    """A ``FileResponse`` (ranges, HEAD, conditional headers) that reads from a verified open file
    instead of opening its path again, and closes it when done."""

    def __init__(self, file: VerifiedFile, *, media_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(file.path, media_type=media_type, stat_result=file.stat, headers=headers)
        self.file = file

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        handle = open(self.file.fd, "rb", closefd=False)  # noqa: SIM115 - closed below, the fd stays ours
        handle.seek(0)
        try:
            yield anyio.wrap_file(handle)
        finally:
            handle.close()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # never hand the server a path to open itself (ASGI pathsend): it would follow what is there now
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}
        try:
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self.file.close()
