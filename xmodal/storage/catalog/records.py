"""The records the pipeline passes to and from the catalog, and the columns an outcome sets.

The scanner diffs sources against ``ItemState``; the pipeline ends each item with an ``EmbeddedItem``
(committed with its shard) or an ``ItemOutcome`` (failed, or content unchanged); a manifest item's
``SourceFields`` ride along so that its digest only moves together with its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ItemState:
    """What the scanner compares a file against."""

    id: int
    status: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    reason: str | None = None
    source_digest: str | None = None  # manifest items only


@dataclass(frozen=True)
class SourceFields:
    """What a manifest says about an item, written with its outcome (so that a crash before the
    outcome leaves the old digest, and the next run sees the change again)."""

    digest: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class EmbeddedItem:
    """One item's successful outcome, committed together with the shard that holds its vector."""

    item_id: int
    row: int
    content_hash: str
    size: int
    mtime_ns: int
    meta: dict[str, Any]
    modality: str | None = None  # set when decoding found it (a manifest URL without an extension)
    source: SourceFields | None = None
    text: str | None = None  # a text item's text, for the full-text index (see .lexical)


@dataclass(frozen=True)
class ItemOutcome:
    """An item whose processing ended without a new vector: failed, or content unchanged."""

    item_id: int
    status: str
    reason: str | None
    content_hash: str | None
    size: int | None
    mtime_ns: int | None
    source: SourceFields | None = None


def source_values(source: SourceFields | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The columns an outcome sets on a manifest item: its digest, its manifest metadata and, when the
    decoded media's own metadata is given, both merged into ``meta`` (the manifest's keys win)."""
    if source is None:
        return {}
    out: dict[str, Any] = {"source_digest": source.digest, "source_meta": source.meta}
    if meta is not None:
        out["meta"] = {**meta, **source.meta}
    return out
