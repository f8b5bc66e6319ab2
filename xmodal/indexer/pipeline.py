"""``xmodal index``: scan -> diff against the catalog -> decode (worker processes) -> encode (batched)
-> Parquet shards + catalog commit -> FAISS build and publish.

Crash safety comes from the order of writes: an item becomes ``ok`` only in the transaction that
records the shard holding its vector, and that shard is on disk (fsynced, renamed) before. A killed
run leaves pending items and maybe an unrecorded shard file; the next run redoes the pending items.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xmodal.config import Settings
from xmodal.encoders import Encoder, load_encoder, resolve_model
from xmodal.errors import ModelMismatchError
from xmodal.indexer.decode import (
    DecodeConfig,
    Decoded,
    DecodeTask,
    decode_many,
    decode_one,
    init_worker,
    warm_up,
)
from xmodal.indexer.lock import collection_lock
from xmodal.indexer.publish import build_and_publish
from xmodal.indexer.scan import FileEntry, scan, under_roots
from xmodal.media.types import MediaLimits
from xmodal.storage.catalog import (
    STATUS_DELETED,
    STATUS_FAILED,
    STATUS_OK,
    Catalog,
    EmbeddedItem,
    ItemOutcome,
    check_same_model,
)
from xmodal.storage.layout import Layout
from xmodal.storage.shards import write_shard

log = logging.getLogger(__name__)

CHUNK_FILES = 8  # files per task sent to a decode worker
POOL_MIN_ITEMS = 32  # fewer items than this decode in-process: starting workers would cost more


@dataclass
class RunSummary:
    collection: str
    scanned: int = 0
    new: int = 0
    embedded: int = 0
    ok: int = 0
    failed: int = 0
    unchanged: int = 0
    deleted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    seconds: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # the collection's items by status after the run
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed (kept as they were)

    @property
    def items_per_second(self) -> float:
        embed_s = self.seconds.get("embed", 0.0)
        return self.embedded / embed_s if embed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "scanned": self.scanned, "new": self.new, "embedded": self.embedded,
            "ok": self.ok, "failed": self.failed, "unchanged": self.unchanged, "deleted": self.deleted,
            "failures": [{"uri": u, "reason": r} for u, r in self.failures],
            "index": self.index, "device": self.device, "seconds": self.seconds, "totals": self.totals, "unlisted": self.unlisted,
            "items_per_second": round(self.items_per_second, 2),
        }


@dataclass
class _Pending:
    """Vectors waiting to be written as one shard."""

    ids: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    items: list[EmbeddedItem] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class IndexRun:
    """One indexing run over some sources into one collection."""

    def __init__(self, settings: Settings, collection: str, *, progress: bool = True,
                 crash_at: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.collection = collection
        self.progress = progress
        self.layout = Layout(settings.home)
        self.catalog = Catalog(settings.resolved_database_url)
        self.collection_id = self.catalog.collection_id(collection, create=True)
        self.limits = MediaLimits.from_settings(settings)
        self._crash_at = crash_at
        self._encoder: Encoder | None = None
        self._record = resolve_model("open_clip", settings.clip_model, settings.clip_pretrained)
        self._check_model()

    def _hook(self, point: str) -> None:
        if self._crash_at is not None:
            self._crash_at(point)

    def _check_model(self) -> None:
        for space in self.catalog.spaces(self.collection_id):
            if space.name == "clip":  # before any scan or model load: a wrong model fails at once
                check_same_model({**space.model, "family": space.family}, self._record, collection=self.collection)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            enc = load_encoder("open_clip", self._record, self.settings.device)
            space = self.catalog.ensure_space(self.collection_id, enc.space, enc.family, enc.record, enc.dim)
            if space.dim != enc.dim:
                raise ModelMismatchError(f"space {space.name} has dimension {space.dim}, model gives {enc.dim}")
            self._encoder = enc
        return self._encoder

    # ------------------------------------------------------------------------------------------

    def run(self, sources: list[Path], *, retry_failed: bool = False) -> RunSummary:
        summary = RunSummary(self.collection)
        t0 = time.monotonic()
        tasks = self._diff(sources, summary, retry_failed=retry_failed)
        summary.seconds["scan"] = round(time.monotonic() - t0, 3)
        self._hook("after-scan")
        t1 = time.monotonic()
        if tasks:
            self._embed(tasks, summary)
        summary.seconds["embed"] = round(time.monotonic() - t1, 3)
        t2 = time.monotonic()
        if self._encoder is not None or self.catalog.spaces(self.collection_id):
            summary.index = build_and_publish(
                self.catalog, self.layout, self.settings, self.collection, self.collection_id, "clip",
                progress=self.progress, crash_at=self._crash_at,
            )
        summary.seconds["build"] = round(time.monotonic() - t2, 3)
        summary.seconds["total"] = round(time.monotonic() - t0, 3)
        summary.totals = self.catalog.counts(self.collection_id)["status"]
        if self._encoder is not None:
            summary.device = self._encoder.device
        return summary

    def _diff(self, sources: list[Path], summary: RunSummary, *, retry_failed: bool) -> list[DecodeTask]:
        """Compare the files on disk with the catalog: record new items, deletions; return the work."""
        entries: list[FileEntry] = []
        unlisted: list[str] = []
        bar = tqdm(desc="scan", unit=" files", disable=not self.progress, leave=False)
        for entry in scan(sources, unlisted):
            entries.append(entry)
            bar.update()
        bar.close()
        summary.scanned = len(entries)
        roots = [os.path.abspath(s) for s in sources]

        states = self.catalog.item_states(self.collection_id)
        new = [(e.uri, e.modality) for e in entries if e.uri not in states]
        summary.new = len(new)
        ids = {uri: st.id for uri, st in states.items()}
        ids.update(self.catalog.add_items(self.collection_id, new))

        seen = {e.uri for e in entries}
        gone = [st.id for uri, st in states.items()
                if st.status != STATUS_DELETED and uri not in seen and under_roots(uri, roots)
                and not under_roots(uri, unlisted)]
        summary.unlisted = unlisted
        if gone:
            self.catalog.set_status(gone, STATUS_DELETED)
        summary.deleted = len(gone)

        # ok items whose current content has no vector in the space yet (e.g. a space added later)
        missing: set[int] = set()
        if self.catalog.spaces(self.collection_id):
            missing = set(self.catalog.items_needing_vectors(self.collection_id, "clip", ("image", "text")))
        tasks: list[DecodeTask] = []
        unreadable: list[ItemOutcome] = []
        for e in entries:
            st = states.get(e.uri)
            item_id = ids[e.uri]
            same_stat = st is not None and st.size == e.size and st.mtime_ns == e.mtime_ns
            if e.error is not None:  # a broken link, a pipe: nothing to read
                if st is not None and st.status == STATUS_FAILED and st.reason == e.error:
                    summary.unchanged += 1
                else:
                    unreadable.append(ItemOutcome(item_id, STATUS_FAILED, e.error, None, None, None))
                    summary.failed += 1
                    summary.failures.append((e.uri, e.error))
                continue
            if same_stat and st is not None and (
                (st.status == STATUS_OK and item_id not in missing)
                or (st.status == STATUS_FAILED and not retry_failed)
            ):
                summary.unchanged += 1
                continue
            known = st.content_hash if st is not None and st.status == STATUS_OK else None
            tasks.append(DecodeTask(item_id, e.path, e.modality, known))
        self.catalog.record_outcomes(unreadable)
        self._entries = {ids[e.uri]: e for e in entries}
        return tasks

    # ------------------------------------------------------------------------------------------

    def _embed(self, tasks: list[DecodeTask], summary: RunSummary) -> None:
        workers = self.settings.resolved_workers
        pool = DecodePool(workers) if len(tasks) >= POOL_MIN_ITEMS and workers > 0 else None
        try:
            self._embed_with(tasks, summary, pool)
        finally:
            if pool is not None:
                pool.close()

    def _embed_with(self, tasks: list[DecodeTask], summary: RunSummary, pool: DecodePool | None) -> None:
        encoder = self.encoder
        config = DecodeConfig(self.limits, encoder.image_transform(), encoder.image_min_side())
        batch = self.settings.batch_size
        pending = _Pending()
        outcomes: list[ItemOutcome] = []
        images: list[Decoded] = []
        texts: list[Decoded] = []
        bar = tqdm(total=len(tasks), desc="embed", unit=" items", disable=not self.progress, smoothing=0.1)

        def encode(group: list[Decoded], modality: str) -> None:
            if modality == "image":
                vecs = encoder.embed_images(np.stack([d.pixels for d in group]))  # type: ignore[misc]
            else:
                vecs = encoder.embed_texts([d.text or "" for d in group])
            for d, v in zip(group, vecs, strict=True):
                if not np.isfinite(v).all() or float(np.linalg.norm(v)) < 1e-6:
                    reason = "the model produced an invalid (zero or NaN) vector"
                    outcomes.append(self._failed(d, reason))
                    summary.failed += 1
                    summary.failures.append((self._entries[d.item_id].uri, reason))
                    continue
                entry = self._entries[d.item_id]
                pending.items.append(EmbeddedItem(
                    item_id=d.item_id, row=len(pending.ids), content_hash=d.content_hash or "",
                    size=d.size or 0, mtime_ns=entry.mtime_ns or 0, meta=d.meta,
                ))
                pending.ids.append(d.item_id)
                pending.vectors.append(v)
                summary.embedded += 1
                summary.ok += 1
            group.clear()

        def flush(force: bool = False) -> None:
            nonlocal pending
            due = len(pending.ids) >= self.settings.shard_rows or (
                time.monotonic() - pending.started >= self.settings.shard_seconds)
            if not pending.ids and outcomes and (force or len(outcomes) >= 1000):
                self.catalog.record_outcomes(outcomes)
                outcomes.clear()
            if not pending.ids or not (force or due):
                return
            self._write_shard(encoder, pending)
            self.catalog.record_outcomes(outcomes)
            outcomes.clear()
            pending = _Pending()

        if pool is not None:  # keep two batches in flight so the workers never wait on the encoder
            decoded = pool.decode(tasks, config, max_inflight=max(4 * pool.workers, -(-2 * batch // CHUNK_FILES)))
        else:
            decoded = (decode_one(task, config) for task in tasks)
        for d in decoded:
            bar.update()
            if d.error is not None:
                outcomes.append(self._failed(d, d.error))
                summary.failed += 1
                summary.failures.append((self._entries[d.item_id].uri, d.error))
            elif d.unchanged:
                e = self._entries[d.item_id]
                outcomes.append(ItemOutcome(d.item_id, STATUS_OK, None, d.content_hash, d.size, e.mtime_ns))
                summary.unchanged += 1
            elif d.pixels is not None:
                images.append(d)
                if len(images) >= batch:
                    encode(images, "image")
            else:
                texts.append(d)
                if len(texts) >= batch:
                    encode(texts, "text")
            flush()
        if images:
            encode(images, "image")
        if texts:
            encode(texts, "text")
        flush(force=True)
        self.catalog.record_outcomes(outcomes)
        bar.close()

    def _failed(self, d: Decoded, reason: str) -> ItemOutcome:
        e = self._entries[d.item_id]  # the scanned stat, so an unchanged failed file is not retried
        return ItemOutcome(d.item_id, STATUS_FAILED, reason, d.content_hash, e.size, e.mtime_ns)

    def _write_shard(self, encoder: Encoder, pending: _Pending) -> None:
        path = self.layout.new_shard_path(self.collection, encoder.space)
        meta = {"space": encoder.space, "family": encoder.family, "identity": encoder.record.get("identity"),
                "model": encoder.record.get("model"), "pretrained": encoder.record.get("pretrained"),
                "normalized": True}
        self._hook("before-shard-write")
        info = write_shard(path, np.asarray(pending.ids, dtype=np.int64), np.stack(pending.vectors),
                           [i.content_hash for i in pending.items], meta)
        self._hook("before-shard-commit")
        self.catalog.commit_shard(self.collection_id, encoder.space, self.layout.relative(path), info.rows,
                                  info.sha256, info.bytes, pending.items)
        self._hook("after-shard-commit")



class DecodePool:
    """Spawned decode workers with bounded in-flight work, results in task order.

    Started before the model loads, so that the workers' own start-up (importing torch and PIL)
    overlaps it. A worker that dies (a decoder segfault, the OOM killer) breaks the pool: the files
    in flight are retried one at a time in a fresh pool, and a file that kills a worker again, alone,
    is recorded as failed; results keep task order.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._pool = self._start()

    def _start(self) -> cf.ProcessPoolExecutor:
        pool = cf.ProcessPoolExecutor(self.workers, mp_context=self._ctx, initializer=init_worker)
        for _ in range(self.workers):
            pool.submit(warm_up)
        return pool

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def decode(self, tasks: list[DecodeTask], config: DecodeConfig, *, max_inflight: int) -> Iterator[Decoded]:
        todo: deque[list[DecodeTask]] = deque(tasks[i : i + CHUNK_FILES] for i in range(0, len(tasks), CHUNK_FILES))
        suspects: deque[DecodeTask] = deque()
        while todo or suspects:
            if suspects:  # in flight when a worker died: one at a time, so that a crash names its own file
                task = suspects.popleft()
                try:
                    yield from self._pool.submit(decode_many, [task], config).result()
                except cf.process.BrokenProcessPool:
                    yield Decoded(task.item_id, error="the decoder crashed on this file")
                    self._restart()
                continue
            inflight: deque[tuple[list[DecodeTask], cf.Future[list[Decoded]]]] = deque()
            while todo or inflight:
                while todo and len(inflight) < max_inflight:
                    chunk = todo.popleft()
                    inflight.append((chunk, self._pool.submit(decode_many, chunk, config)))
                chunk, fut = inflight.popleft()
                try:
                    yield from fut.result()
                except cf.process.BrokenProcessPool:
                    broken = [chunk, *(c for c, _ in inflight)]  # all earlier than what is left in todo
                    log.warning("a decode worker died; retrying %d files one at a time",
                                sum(len(c) for c in broken))
                    self._restart()
                    suspects.extend(t for c in broken for t in c)
                    break

    def _restart(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()


def index_sources(settings: Settings, sources: Iterable[Path], collection: str, *, progress: bool = True,
                  retry_failed: bool = False, crash_at: Callable[[str], None] | None = None) -> RunSummary:
    with collection_lock(settings.home, collection):
        run = IndexRun(settings, collection, progress=progress, crash_at=crash_at)
        try:
            return run.run(list(sources), retry_failed=retry_failed)
        finally:
            run.catalog.close()
