"""The manifest entry (one media value of one row), its catalog key and its content digests.

The key, ``manifest:<source_id>#<column>``, is made and parsed in :mod:`xmodal.storage.uris`
(:func:`~xmodal.storage.uris.entry_key`, :func:`~xmodal.storage.uris.parse_key`), because the catalog
needs it and may not import the indexer. The content digest has two halves, media and metadata, each
a truncated sha256 of canonical JSON, so that a caller storing only the digest can tell a
metadata-only change from one that needs the media embedded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from xmodal.storage.uris import entry_key


@dataclass(frozen=True)
class ManifestEntry:
    """One media value of one manifest row.

    ``uri`` is set for file and URL media (a relative path is already resolved against the
    manifest's folder), ``text`` for inline text media. ``metadata`` is shared by the entries of a
    row: treat it as read-only.
    """

    source_id: str
    column: str
    modality: str | None  # "image" | "audio" | "text", or None: decided from the URI
    uri: str | None
    text: str | None
    metadata: dict[str, Any]
    row: int = field(default=0, compare=False)
    line: int | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """``manifest:<source_id>#<column>``, unique per (id, column); see :func:`entry_key`."""
        return entry_key(self.source_id, self.column)

    @cached_property
    def media_digest(self) -> str:
        """32 hex digits over what would have to be fetched and embedded again if it changed."""
        kind, value = ("text", self.text) if self.uri is None else ("uri", self.uri)
        return _digest([self.column, self.modality, kind, value])

    @cached_property
    def metadata_digest(self) -> str:
        """32 hex digits over the canonical JSON of the metadata."""
        return _digest(self.metadata)

    def content_digest(self) -> str:
        """Media digest + metadata digest: 64 hex digits, both halves sha256 (128 bits each).

        Two halves rather than one hash so that a caller storing only this string can tell a
        metadata-only change (update the catalog row, keep the vector) from a media change.
        """
        return self.media_digest + self.metadata_digest


def split_digest(digest: str) -> tuple[str, str]:
    """``(media_digest, metadata_digest)`` of a :meth:`ManifestEntry.content_digest`."""
    return digest[:32], digest[32:]


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]
