"""Walking sources: every file with a known media extension, once, without hanging on loops.

Symlinks are followed; a directory reached twice (a loop, or two links to one folder) is walked
once. Non-regular files (FIFOs, sockets, devices) and broken links are reported, not opened.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xmodal.errors import UserError
from xmodal.media.types import modality_for_path
from xmodal.storage.uris import path_to_uri, uri_to_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileEntry:
    uri: str
    path: str
    modality: str
    size: int | None
    mtime_ns: int | None
    error: str | None = None  # set when the entry exists but can't be stat'ed as a regular file


def _entry(path: str, modality: str) -> FileEntry:
    uri = path_to_uri(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileEntry(uri, path, modality, None, None, "broken symlink")
    except OSError as exc:
        return FileEntry(uri, path, modality, None, None, f"cannot stat file: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return FileEntry(uri, path, modality, None, None, "not a regular file")
    return FileEntry(uri, path, modality, st.st_size, st.st_mtime_ns)


def scan(sources: list[Path], unlisted: list[str] | None = None) -> Iterator[FileEntry]:
    """Yield an entry per media file under the sources (files or folders), in a stable order.

    Every source is checked before the first entry is yielded, and a file reached from two
    overlapping sources (``a`` and ``a/b``, or a folder given twice) is yielded once. Folders that
    could not be listed (permissions, a network mount gone away) are appended to ``unlisted``: what
    the catalog holds under them must not be taken for deleted.
    """
    roots: list[str] = []
    for source in sources:
        root = os.path.abspath(os.fspath(source))
        if not os.path.exists(root):
            raise UserError(f"source {source} does not exist (nothing was changed)")
        if not os.path.isdir(root) and modality_for_path(root) is None:
            raise UserError(f"source {source} is not a folder nor a supported media file")
        roots.append(root)
    reported: set[str] = set()
    for root in roots:
        for entry in _scan_root(root, unlisted if unlisted is not None else []):
            if entry.uri not in reported:
                reported.add(entry.uri)
                yield entry


def _scan_root(root: str, unlisted: list[str]) -> Iterator[FileEntry]:
    if not os.path.isdir(root):
        modality = modality_for_path(root)
        assert modality is not None  # checked by scan()
        yield _entry(root, modality)
        return
    seen: set[tuple[int, int]] = set()

    def onerror(exc: OSError) -> None:
        log.warning("cannot list %s: %s (its indexed files are kept)", exc.filename, exc.strerror)
        if exc.filename is not None:
            unlisted.append(os.path.abspath(os.fsdecode(exc.filename)))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            log.info("skipping %s: already walked (symlink loop or second link)", dirpath)
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        for name in sorted(filenames):
            modality = modality_for_path(name)
            if modality is not None:
                yield _entry(os.path.join(dirpath, name), modality)


def under_roots(uri: str, roots: list[str]) -> bool:
    """Whether a catalog URI lies under one of the scanned roots (only those may be deleted)."""
    path = uri_to_path(uri)
    normal = [os.path.abspath(r) for r in roots]  # as scan() makes URIs: "a/../b" and "b/" name b
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in normal)
