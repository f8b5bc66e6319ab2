"""Where things live in the data dir. Paths recorded in the catalog are relative to it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from xmodal.digest import file_sha256  # noqa: F401 - re-exported for storage's modules


@dataclass(frozen=True)
class Layout:
    home: Path

    def collection_dir(self, collection: str) -> Path:
        return self.home / "collections" / collection

    def shard_dir(self, collection: str, space: str) -> Path:
        return self.collection_dir(collection) / "shards" / space

    def index_dir(self, collection: str, space: str) -> Path:
        return self.collection_dir(collection) / "indexes" / space

    def new_shard_path(self, collection: str, space: str) -> Path:
        return self.shard_dir(collection, space) / f"shard-{uuid.uuid4().hex}.parquet"

    def version_path(self, collection: str, space: str, version: int) -> Path:
        return self.index_dir(collection, space) / f"v{version:06d}"

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.home)

    def absolute(self, relative: str) -> Path:
        return self.home / relative


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (where the filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)
