"""Where every engine delivers its results: failures, unchanged contents and vectors become Parquet
shards and catalog rows, in the order that keeps a crash safe.

An item becomes ``ok`` only in the transaction that records the shard holding its vector, and the
shard is on disk (written to a temporary name, fsynced, renamed) before that. An outcome (failed,
content unchanged) waits while its item still has a vector pending in another space, so that the
shard commit, which sets it ok, never comes after its failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmodal.config import Settings
from xmodal.encoders import Encoder
from xmodal.indexer.decode import Decoded
from xmodal.spaces import embeds
from xmodal.storage.catalog import STATUS_FAILED, STATUS_OK, Catalog, EmbeddedItem, ItemOutcome, SourceFields
from xmodal.storage.layout import Layout
from xmodal.storage.shards import Windows, write_shard


@dataclass(frozen=True)
class ItemWork:
    """What the sink knows of an item in the work: how reports name it, the stat the scan saw (kept with
    its outcome, so an unchanged failed file is not retried), a manifest entry's digest and metadata
    (written only with the outcome), and the spaces it gets a vector in."""

    label: str
    size: int | None
    mtime_ns: int | None
    source: SourceFields | None
    spaces: tuple[str, ...]

    def spaces_for(self, modality: str, meta: dict[str, Any] | None = None) -> tuple[str, ...]:
        """The spaces this item gets a vector in, of those that embed its decoded modality (and, given its
        decoded metadata, the part a space takes: a silent video gets no sound vector)."""
        return tuple(sp for sp in self.spaces if embeds(sp, modality, meta))


@dataclass
class _Pending:
    """Vectors of one space waiting to be written as one shard."""

    ids: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    items: list[EmbeddedItem] = field(default_factory=list)
    windows: list[Windows | None] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class ShardSink:
    """Results in, shards and catalog rows out (see the module docstring)."""

    def __init__(self, *, catalog: Catalog, layout: Layout, collection: str, collection_id: int, settings: Settings,
                 encoders: dict[str, Encoder], work: dict[int, ItemWork], summary: Any,
                 hook: Callable[[str], None] = lambda _: None) -> None:
        self.catalog = catalog
        self.layout = layout
        self.collection = collection
        self.collection_id = collection_id
        self.settings = settings
        self.encoders = encoders
        self.work = work
        self.summary = summary
        self.hook = hook
        self.pending: dict[str, _Pending] = {space: _Pending() for space in encoders}
        self.outcomes: list[ItemOutcome] = []
        self.failed_ids: set[int] = set()
        self.ok_ids: set[int] = set()

    def fail(self, item_id: int, reason: str, content_hash: str | None = None) -> None:
        if item_id in self.failed_ids:
            return
        self.failed_ids.add(item_id)
        w = self.work[item_id]  # the scanned stat, so an unchanged failed file is not retried
        self.outcomes.append(ItemOutcome(item_id, STATUS_FAILED, reason, content_hash, w.size, w.mtime_ns, w.source))
        self.summary.failed += 1
        self.summary.failures.append((w.label, reason))

    def decoded(self, d: Decoded) -> bool:
        """Record a decode that needs no encoding (failed, content unchanged); True when it does."""
        if d.error is not None:
            self.fail(d.item_id, d.error, d.content_hash)
            return False
        w = self.work[d.item_id]
        if d.unchanged:
            self.outcomes.append(ItemOutcome(d.item_id, STATUS_OK, None, d.content_hash, d.size, w.mtime_ns, w.source))
            self.summary.unchanged += 1
            return False
        if not w.spaces_for(d.modality or "", d.meta):
            self.fail(d.item_id, f"no model in this run embeds {d.modality}", d.content_hash)
            return False
        return True

    def vector(self, d: Decoded, space: str, vec: np.ndarray, windows: Windows | None) -> None:
        """One item's new vector in ``space``; an invalid one (zero, NaN) fails the item."""
        if not np.isfinite(vec).all() or float(np.linalg.norm(vec)) < 1e-6:
            self.fail(d.item_id, "the model produced an invalid (zero or NaN) vector", d.content_hash)
            return
        out = self.pending[space]
        w = self.work[d.item_id]
        out.items.append(EmbeddedItem(
            item_id=d.item_id, row=len(out.ids), content_hash=d.content_hash or "", size=d.size or 0,
            mtime_ns=w.mtime_ns or 0, meta=d.meta, modality=d.modality, source=w.source,
            text=d.inputs if isinstance(d.inputs, str) else None,  # the full-text index's body
        ))
        out.ids.append(d.item_id)
        out.vectors.append(vec)
        out.windows.append(windows)
        self.ok_ids.add(d.item_id)

    def flush(self, force: bool = False) -> None:
        wrote = False
        s = self.settings
        for space, out in self.pending.items():
            due = len(out.ids) >= s.shard_rows or time.monotonic() - out.started >= s.shard_seconds
            if out.ids and (force or due):
                self._write_shard(space, out)
                self.pending[space] = _Pending()
                wrote = True
        if self.outcomes and (wrote or force or len(self.outcomes) >= 1000):
            waiting_ids = {i for p in self.pending.values() for i in p.ids}
            ready = [o for o in self.outcomes if o.item_id not in waiting_ids]
            self.catalog.record_outcomes(ready)
            self.outcomes[:] = [o for o in self.outcomes if o.item_id in waiting_ids]

    def finish(self) -> None:
        """Write every pending shard, then every outcome."""
        self.flush(force=True)
        self.summary.embedded = self.summary.ok = len(self.ok_ids - self.failed_ids)

    def _write_shard(self, space: str, pending: _Pending) -> None:
        encoder = self.encoders[space]
        path = self.layout.new_shard_path(self.collection, space)
        meta = {"space": space, "family": encoder.family, "identity": encoder.record.get("identity"),
                "model": encoder.record.get("model"), "pretrained": encoder.record.get("pretrained"),
                "normalized": True}
        self.hook("before-shard-write")
        info = write_shard(path, np.asarray(pending.ids, dtype=np.int64), np.stack(pending.vectors),
                           [i.content_hash for i in pending.items], meta, windows=pending.windows)
        self.hook("before-shard-commit")
        self.catalog.commit_shard(self.collection_id, space, self.layout.relative(path), info.rows,
                                  info.sha256, info.bytes, pending.items)
        self.hook("after-shard-commit")
