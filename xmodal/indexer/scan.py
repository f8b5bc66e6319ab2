"""Walking sources: every file with a known media extension, once, without hanging on loops.

Symlinks are followed while their targets lie under a source root (symlinks resolved); a directory
reached twice (a loop, or two links to one folder) is walked once. A link whose target lies outside
every source is a decision the run records: by default (``follow_external=False``) a linked file is
reported with the reason and a linked folder is not walked (and said so in ``Scan.refused``); with
``follow_external=True`` both are followed and the targets are added to ``Scan.roots``, the real
paths the service may serve files from. Non-regular files (FIFOs, sockets, devices) and broken
links are reported, not opened.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xmodal.errors import UserError
from xmodal.media.types import modality_for_path
from xmodal.storage.uris import is_under, path_to_uri, uri_to_path

log = logging.getLogger(__name__)

OUTSIDE = "symlink to a file outside the sources, not followed (XMODAL_FOLLOW_EXTERNAL_SYMLINKS=true indexes it)"


@dataclass(frozen=True)
class FileEntry:
    uri: str
    path: str
    modality: str
    size: int | None
    mtime_ns: int | None
    error: str | None = None  # set when the entry exists but can't be stat'ed as a regular file


@dataclass
class Scan:
    """What a walk found besides its entries: folders it could not list (their items must not be
    taken for deleted), the real roots of what it indexed (the sources, and the targets of links it
    was allowed to follow outside them), the symlinked folders outside the sources it did not walk, and
    the files it passed over because no modality takes their type (counted by extension)."""

    unlisted: list[str] = field(default_factory=list)
    roots: list[tuple[str, str]] = field(default_factory=list)  # (real path, "folder" | "link")
    refused: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # files of no supported type, by extension


def skipped_key(name: str) -> str:
    """How a skipped file is counted: its extension, lower case (``.m4a``), or ``(no extension)``."""
    ext = os.path.splitext(name)[1].lower()
    return ext if ext else "(no extension)"


def _entry(path: str, modality: str, error: str | None = None) -> FileEntry:
    uri = path_to_uri(path)
    if error is not None:
        return FileEntry(uri, path, modality, None, None, error)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileEntry(uri, path, modality, None, None, "broken symlink")
    except OSError as exc:
        return FileEntry(uri, path, modality, None, None, f"cannot stat file: {exc.strerror or exc}")
    if not stat.S_ISREG(st.st_mode):
        return FileEntry(uri, path, modality, None, None, "not a regular file")
    return FileEntry(uri, path, modality, st.st_size, st.st_mtime_ns)


def scan(sources: list[Path], unlisted: list[str] | None = None, *, follow_external: bool = False,
         found: Scan | None = None) -> Iterator[FileEntry]:
    """Yield an entry per media file under the sources (files or folders), in a stable order.

    Every source is checked before the first entry is yielded, and a file reached from two
    overlapping sources (``a`` and ``a/b``, or a folder given twice) is yielded once. Folders that
    could not be listed (permissions, a network mount gone away) are appended to ``unlisted``: what
    the catalog holds under them must not be taken for deleted. ``found`` collects the walk's roots
    and refusals (see :class:`Scan`).
    """
    found = found if found is not None else Scan()
    if unlisted is not None:
        found.unlisted = unlisted
    roots: list[str] = []
    for source in sources:
        root = os.path.abspath(os.fspath(source))
        if not os.path.exists(root):
            raise UserError(f"source {source} does not exist (nothing was changed)")
        if not os.path.isdir(root) and modality_for_path(root) is None:
            raise UserError(f"source {source} is not a folder nor a supported media file")
        roots.append(root)
    real_roots = [os.path.realpath(r) for r in roots]
    found.roots.extend((r, "folder") for r in real_roots)
    walk = _Walk(real_roots, follow_external, found)
    reported: set[str] = set()
    for root in roots:
        for entry in walk.root(root):
            if entry.uri not in reported:
                reported.add(entry.uri)
                yield entry


class _Walk:
    def __init__(self, real_roots: list[str], follow_external: bool, found: Scan) -> None:
        self.allowed = list(real_roots)  # the sources, then the outside targets followed by permission
        self.follow_external = follow_external
        self.found = found

    def inside(self, real: str, *, kind: str) -> bool:
        """Whether a real path may be indexed; an outside one followed by permission becomes a root."""
        if is_under(real, self.allowed):
            return True
        if self.follow_external:
            self.allowed.append(real)
            self.found.roots.append((real, kind))
            return True
        return False

    def file(self, path: str, modality: str, real_dir: str | None = None) -> FileEntry:
        is_link = os.path.islink(path)
        if not is_link and real_dir is not None:
            real = os.path.join(real_dir, os.path.basename(path))
        else:
            real = os.path.realpath(path)
        if (is_link or real_dir is None) and os.path.exists(real) and not self.inside(real, kind="link"):
            log.warning("not indexing %s: it links to a file outside the sources", path)
            return _entry(path, modality, OUTSIDE)
        return _entry(path, modality)

    def root(self, root: str) -> Iterator[FileEntry]:
        if not os.path.isdir(root):
            modality = modality_for_path(root)
            assert modality is not None  # checked by scan()
            yield self.file(root, modality)
            return
        seen: set[tuple[int, int]] = set()

        def onerror(exc: OSError) -> None:
            log.warning("cannot list %s: %s (its indexed files are kept)", exc.filename, exc.strerror)
            if exc.filename is not None:
                self.found.unlisted.append(os.path.abspath(os.fsdecode(exc.filename)))

        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
            try:
                st = os.stat(dirpath)
            except OSError:
                dirnames[:] = []
                continue
            real_dir = os.path.realpath(dirpath)
            if not self.inside(real_dir, kind="link"):
                log.warning("not walking %s: it links to a folder outside the sources", dirpath)
                self.found.refused.append(dirpath)
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
                    yield self.file(os.path.join(dirpath, name), modality, real_dir)
                elif not name.startswith("."):  # hidden files (.DS_Store) are nobody's media
                    self.found.skipped[skipped_key(name)] += 1


def under_roots(uri: str, roots: list[str]) -> bool:
    """Whether a catalog URI lies under one of the scanned roots (only those may be deleted)."""
    path = uri_to_path(uri)
    normal = [os.path.abspath(r) for r in roots]  # as scan() makes URIs: "a/../b" and "b/" name b
    return is_under(path, normal)
