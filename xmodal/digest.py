"""Content digests shared by the layers below (encoders hash checkpoints, storage hashes shards and index
files): one definition, imported from here by both."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, hex, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
