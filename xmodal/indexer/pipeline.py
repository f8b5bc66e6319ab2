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
import signal
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm.auto import tqdm

from xmodal.config import Settings
from xmodal.encoders import Encoder, align, load_encoder, resolve_model
from xmodal.encoders.align import LoadedAlignment
from xmodal.encoders.base import AudioEncoder, ImageEncoder
from xmodal.errors import ModelLoadError, ModelMismatchError, UserError
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
from xmodal.indexer.maintenance import NATIVE_MODALITIES, sweep_orphans
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
    ItemState,
    check_same_model,
)
from xmodal.storage.layout import Layout
from xmodal.storage.shards import Windows, write_shard

log = logging.getLogger(__name__)

CHUNK_FILES = 8  # files per task sent to a decode worker
POOL_MIN_ITEMS = 32  # fewer items than this decode in-process: starting workers would cost more


#: the modalities each space embeds natively (DESIGN.md, "Embedding spaces")
SPACE_MODALITIES = NATIVE_MODALITIES
SPACE_FAMILIES = {"clip": "open_clip", "clap": "clap"}
#: failure reasons that start with this are retried as soon as a run can embed audio again
AUDIO_UNAVAILABLE = "audio unavailable: "
ENGINES = ("local", "ray")


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
    index: dict[str, Any] = field(default_factory=dict)  # space -> its published version
    alignment: dict[str, Any] = field(default_factory=dict)  # the clap -> clip map's fit, when (re)fitted
    device: str = "cpu"
    seconds: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # the collection's items by status after the run
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed (kept as they were)
    warnings: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # files an interrupted run left, removed at the start

    @property
    def items_per_second(self) -> float:
        embed_s = self.seconds.get("embed", 0.0)
        return self.embedded / embed_s if embed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "scanned": self.scanned, "new": self.new, "embedded": self.embedded,
            "ok": self.ok, "failed": self.failed, "unchanged": self.unchanged, "deleted": self.deleted,
            "failures": [{"uri": u, "reason": r} for u, r in self.failures],
            "index": self.index, "alignment": self.alignment, "device": self.device, "seconds": self.seconds,
            "totals": self.totals, "unlisted": self.unlisted, "warnings": self.warnings, "swept": self.swept,
            "items_per_second": round(self.items_per_second, 2),
        }


@dataclass
class _Pending:
    """Vectors of one space waiting to be written as one shard."""

    ids: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    items: list[EmbeddedItem] = field(default_factory=list)
    windows: list[Windows | None] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class IndexRun:
    """One indexing run over some sources into one collection."""

    def __init__(self, settings: Settings, collection: str, *, progress: bool = True,
                 crash_at: Callable[[str], None] | None = None, engine: str = "local",
                 ray_address: str | None = None) -> None:
        if engine not in ENGINES:
            raise UserError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        self.settings = settings
        self.engine = engine
        self.ray_address = ray_address
        self.collection = collection
        self.progress = progress
        self.layout = Layout(settings.home)
        self.catalog = Catalog(settings.resolved_database_url)
        self.collection_id = self.catalog.collection_id(collection, create=True)
        self.limits = MediaLimits.from_settings(settings)
        self._crash_at = crash_at or fault_from_env()
        self._encoders: dict[str, Encoder] = {}
        self._records: dict[str, dict[str, Any]] = {
            "clip": resolve_model("open_clip", settings.clip_model, settings.clip_pretrained)}
        self._audio_error: str | None = None  # why this run can't embed audio, once it is known
        self._needs: dict[int, tuple[str, ...]] = {}  # item -> the spaces it gets a new vector in
        self._check_models()

    def _hook(self, point: str) -> None:
        if self._crash_at is not None:
            self._crash_at(point)

    def _check_models(self) -> None:
        """Before any scan or model load: a wrong model fails at once."""
        for space in self.catalog.spaces(self.collection_id):
            recorded = {**space.model, "family": space.family}
            if space.name == "clip":
                check_same_model(recorded, self._records["clip"], collection=self.collection)
            elif space.name == "clap":
                if self.settings.audio_model:
                    given = resolve_model("clap", self.settings.audio_model, None)
                    check_same_model(recorded, given, collection=self.collection)
                    self._records["clap"] = given
                else:
                    self._records["clap"] = recorded  # loading checks that a local folder is unchanged

    def _audio_ready(self) -> bool:
        """Whether this run can embed audio, resolving the CLAP model the first time it is asked."""
        if "clap" in self._records:
            return True
        if self._audio_error is None:
            from xmodal.encoders.clap import DEFAULT_AUDIO_MODEL

            try:
                self._records["clap"] = resolve_model("clap", self.settings.audio_model or DEFAULT_AUDIO_MODEL, None)
            except ModelLoadError as exc:
                if self.settings.audio_model:  # named by the user: a mistake to fix, not a file to skip
                    raise
                self._audio_error = f"{AUDIO_UNAVAILABLE}{exc}"
        return "clap" in self._records

    def encoder(self, space: str) -> Encoder:
        if space not in self._encoders:
            enc = load_encoder(SPACE_FAMILIES[space], self._records[space], self.settings.device)
            recorded = self.catalog.ensure_space(self.collection_id, enc.space, enc.family, enc.record, enc.dim)
            if recorded.dim != enc.dim:
                raise ModelMismatchError(f"space {recorded.name} has dimension {recorded.dim}, model gives {enc.dim}")
            self._encoders[space] = enc
        return self._encoders[space]

    # ------------------------------------------------------------------------------------------

    def run(self, sources: list[Path], *, retry_failed: bool = False) -> RunSummary:
        summary = RunSummary(self.collection)
        t0 = time.monotonic()
        summary.swept = sweep_orphans(self.catalog, self.layout, self.collection, self.collection_id)
        tasks = self._diff(sources, summary, retry_failed=retry_failed)
        summary.seconds["scan"] = round(time.monotonic() - t0, 3)
        self._hook("after-scan")
        t1 = time.monotonic()
        if tasks:
            self._embed(tasks, summary)
        summary.seconds["embed"] = round(time.monotonic() - t1, 3)
        t2 = time.monotonic()
        alignment = self._align(summary)
        for space in sorted(s.name for s in self.catalog.spaces(self.collection_id)):
            summary.index[space] = build_and_publish(
                self.catalog, self.layout, self.settings, self.collection, self.collection_id, space,
                alignment=alignment if space == "clip" else None, progress=self.progress, crash_at=self._crash_at,
            )
        summary.seconds["build"] = round(time.monotonic() - t2, 3)
        summary.seconds["total"] = round(time.monotonic() - t0, 3)
        summary.totals = self.catalog.counts(self.collection_id)["status"]
        if self._encoders:
            summary.device = next(iter(self._encoders.values())).device
        if self._audio_error:
            summary.warnings.append(self._audio_error)
        return summary

    def _align(self, summary: RunSummary) -> LoadedAlignment | None:
        """The clap -> clip alignment, refitted when either model or the bank changed."""
        spaces = {s.name: s for s in self.catalog.spaces(self.collection_id)}
        if "clap" in spaces and "clip" not in spaces:  # audio alone: images and text queries still reach it
            self.encoder("clip")
            spaces = {s.name: s for s in self.catalog.spaces(self.collection_id)}
        if not {"clip", "clap"} <= spaces.keys():
            return None
        key = align.alignment_key(spaces["clap"].model["identity"], spaces["clip"].model["identity"])
        row = self.catalog.alignment(self.collection_id, align.SOURCE, align.TARGET)
        if row is not None and row.key == key:
            return align.from_row(row)
        fitted = align.fit_models(self.encoder("clap").embed_texts, self.encoder("clip").embed_texts)
        self.catalog.save_alignment(self.collection_id, align.SOURCE, align.TARGET, key, fitted.matrix, fitted.metrics)
        summary.alignment = fitted.metrics
        log.info("fitted the clap -> clip alignment: %s", fitted.metrics)
        return align.LoadedAlignment(key, fitted.matrix, fitted.metrics)

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
        gone = [states[uri].id for uri in _gone(states, seen, roots, unlisted)]
        summary.unlisted = unlisted
        if gone:
            self.catalog.set_status(gone, STATUS_DELETED)
        summary.deleted = len(gone)

        audio = any(e.modality == "audio" for e in entries) or "clap" in self._records
        active = ["clip", "clap"] if audio and self._audio_ready() else ["clip"]
        # ok items whose current content has no vector in a space yet (a space added later, a crash
        # between the shards of a text's two spaces)
        missing: dict[int, list[str]] = {}
        for space in active:
            for item_id in self.catalog.items_needing_vectors(self.collection_id, space, SPACE_MODALITIES[space]):
                missing.setdefault(item_id, []).append(space)
        tasks: list[DecodeTask] = []
        unreadable: list[ItemOutcome] = []

        def fail(e: FileEntry, st: ItemState | None, item_id: int, reason: str) -> None:
            if st is not None and st.status == STATUS_FAILED and st.reason == reason and (
                    st.size == e.size and st.mtime_ns == e.mtime_ns):
                summary.unchanged += 1
                return
            unreadable.append(ItemOutcome(item_id, STATUS_FAILED, reason, None, e.size, e.mtime_ns))
            summary.failed += 1
            summary.failures.append((e.uri, reason))

        for e in entries:
            st = states.get(e.uri)
            item_id = ids[e.uri]
            same_stat = st is not None and st.size == e.size and st.mtime_ns == e.mtime_ns
            if e.error is not None:  # a broken link, a pipe: nothing to read
                fail(e, st, item_id, e.error)
                continue
            spaces = tuple(sp for sp in active if e.modality in SPACE_MODALITIES[sp])
            if not spaces:  # audio, and no CLAP model this run
                fail(e, st, item_id, self._audio_error or f"{AUDIO_UNAVAILABLE}no audio model")
                continue
            retry = retry_failed or (st is not None and (st.reason or "").startswith(AUDIO_UNAVAILABLE))
            if same_stat and st is not None and st.status == STATUS_OK and item_id in missing:
                self._needs[item_id] = tuple(missing[item_id])  # only the spaces it lacks; decode again
                tasks.append(DecodeTask(item_id, e.path, e.modality, None))
                continue
            if same_stat and st is not None and (
                st.status == STATUS_OK or (st.status == STATUS_FAILED and not retry)
            ):
                summary.unchanged += 1
                continue
            known = st.content_hash if st is not None and st.status == STATUS_OK and item_id not in missing else None
            self._needs[item_id] = spaces
            tasks.append(DecodeTask(item_id, e.path, e.modality, known))
        self.catalog.record_outcomes(unreadable)
        self._entries = {ids[e.uri]: e for e in entries}
        return tasks

    # ------------------------------------------------------------------------------------------

    def _embed(self, tasks: list[DecodeTask], summary: RunSummary) -> None:
        config = self._decode_config(tasks)
        sink = ShardSink(self, summary)
        bar = tqdm(total=len(tasks), desc="embed", unit=" items", disable=not self.progress, smoothing=0.1)
        try:
            if self.engine == "ray":
                from xmodal.indexer.ray_engine import embed_on_ray

                embed_on_ray(self, tasks, config, sink, bar, address=self.ray_address)
            else:
                self._embed_local(tasks, config, sink, bar)
            sink.finish()
        finally:
            bar.close()

    def _embed_local(self, tasks: list[DecodeTask], config: DecodeConfig, sink: ShardSink, bar: Any) -> None:
        """Decode in worker processes, encode here in batches per (space, modality)."""
        workers = self.settings.resolved_workers
        pool = DecodePool(workers) if len(tasks) >= POOL_MIN_ITEMS and workers > 0 else None
        batch = self.settings.batch_size
        groups: dict[tuple[str, str], list[Decoded]] = defaultdict(list)  # (space, modality) -> waiting

        def encode(space: str, modality: str) -> None:
            group = groups.pop((space, modality), [])
            if group:
                vecs, windows = encode_group(self._encoders[space], modality, group, batch)
                for d, v, w in zip(group, vecs, windows, strict=True):
                    sink.vector(d, space, v, w)

        try:
            if pool is not None:  # keep two batches in flight so the workers never wait on the encoder
                decoded: Iterable[Decoded] = pool.decode(
                    tasks, config, max_inflight=max(4 * pool.workers, -(-2 * batch // CHUNK_FILES)))
            else:
                decoded = (decode_one(task, config) for task in tasks)
            for d in decoded:
                bar.update()
                if sink.decoded(d):
                    modality = decoded_modality(d)
                    for space in self.spaces_for(d.item_id, modality):
                        groups[(space, modality)].append(d)
                        if waiting(groups.get((space, modality), []), modality) >= batch:
                            encode(space, modality)
                            self._hook("after-encode-batch")
                sink.flush()
            for space, modality in list(groups):
                encode(space, modality)
        finally:
            if pool is not None:
                pool.close()

    def spaces_for(self, item_id: int, modality: str) -> tuple[str, ...]:
        """The spaces a decoded item gets a new vector in: those it needs that embed its modality."""
        return tuple(sp for sp in self._needs[item_id] if modality in SPACE_MODALITIES[sp])

    def _decode_config(self, tasks: list[DecodeTask]) -> DecodeConfig:
        """Load the encoders the tasks need (while the decode workers start) and their transforms."""
        needed = {sp for t in tasks for sp in self._needs[t.item_id]}
        for space in sorted(needed):
            self.encoder(space)
        clip = cast(ImageEncoder, self._encoders["clip"]) if "clip" in needed else None
        clap = cast(AudioEncoder, self._encoders["clap"]) if "clap" in needed else None
        return DecodeConfig(
            self.limits, clip.image_transform() if clip else None, clip.image_min_side() if clip else None,
            clap.audio_spec() if clap else None, clap.audio_transform() if clap else None,
        )

    def _write_shard(self, space: str, pending: _Pending) -> None:
        encoder = self._encoders[space]
        path = self.layout.new_shard_path(self.collection, space)
        meta = {"space": space, "family": encoder.family, "identity": encoder.record.get("identity"),
                "model": encoder.record.get("model"), "pretrained": encoder.record.get("pretrained"),
                "normalized": True}
        self._hook("before-shard-write")
        info = write_shard(path, np.asarray(pending.ids, dtype=np.int64), np.stack(pending.vectors),
                           [i.content_hash for i in pending.items], meta, windows=pending.windows)
        self._hook("before-shard-commit")
        self.catalog.commit_shard(self.collection_id, space, self.layout.relative(path), info.rows,
                                  info.sha256, info.bytes, pending.items)
        self._hook("after-shard-commit")


class ShardSink:
    """Where either engine (local or Ray) delivers its results: failures, unchanged contents and
    vectors become Parquet shards and catalog rows, in the order that keeps a crash safe.

    An item becomes ``ok`` only in the transaction that records the shard holding its vector (see
    ``IndexRun._write_shard``); an outcome waits while its item still has a vector pending in another
    space, so that the shard commit (which sets it ok) never comes after its failure.
    """

    def __init__(self, run: IndexRun, summary: RunSummary) -> None:
        self.run = run
        self.summary = summary
        self.pending: dict[str, _Pending] = {space: _Pending() for space in run._encoders}
        self.outcomes: list[ItemOutcome] = []
        self.failed_ids: set[int] = set()
        self.ok_ids: set[int] = set()

    def fail(self, item_id: int, reason: str, content_hash: str | None = None) -> None:
        if item_id in self.failed_ids:
            return
        self.failed_ids.add(item_id)
        e = self.run._entries[item_id]  # the scanned stat, so an unchanged failed file is not retried
        self.outcomes.append(ItemOutcome(item_id, STATUS_FAILED, reason, content_hash, e.size, e.mtime_ns))
        self.summary.failed += 1
        self.summary.failures.append((e.uri, reason))

    def decoded(self, d: Decoded) -> bool:
        """Record a decode that needs no encoding (failed, content unchanged); True when it does."""
        if d.error is not None:
            self.fail(d.item_id, d.error, d.content_hash)
            return False
        if d.unchanged:
            e = self.run._entries[d.item_id]
            self.outcomes.append(ItemOutcome(d.item_id, STATUS_OK, None, d.content_hash, d.size, e.mtime_ns))
            self.summary.unchanged += 1
            return False
        if not self.run.spaces_for(d.item_id, decoded_modality(d)):
            self.fail(d.item_id, f"no model in this run embeds {decoded_modality(d)}", d.content_hash)
            return False
        return True

    def vector(self, d: Decoded, space: str, vec: np.ndarray, windows: Windows | None) -> None:
        """One item's new vector in ``space``; an invalid one (zero, NaN) fails the item."""
        if not np.isfinite(vec).all() or float(np.linalg.norm(vec)) < 1e-6:
            self.fail(d.item_id, "the model produced an invalid (zero or NaN) vector", d.content_hash)
            return
        out = self.pending[space]
        entry = self.run._entries[d.item_id]
        out.items.append(EmbeddedItem(
            item_id=d.item_id, row=len(out.ids), content_hash=d.content_hash or "",
            size=d.size or 0, mtime_ns=entry.mtime_ns or 0, meta=d.meta,
        ))
        out.ids.append(d.item_id)
        out.vectors.append(vec)
        out.windows.append(windows)
        self.ok_ids.add(d.item_id)

    def flush(self, force: bool = False) -> None:
        wrote = False
        settings = self.run.settings
        for space, out in self.pending.items():
            due = len(out.ids) >= settings.shard_rows or time.monotonic() - out.started >= settings.shard_seconds
            if out.ids and (force or due):
                self.run._write_shard(space, out)
                self.pending[space] = _Pending()
                wrote = True
        if self.outcomes and (wrote or force or len(self.outcomes) >= 1000):
            waiting_ids = {i for p in self.pending.values() for i in p.ids}
            ready = [o for o in self.outcomes if o.item_id not in waiting_ids]
            self.run.catalog.record_outcomes(ready)
            self.outcomes[:] = [o for o in self.outcomes if o.item_id in waiting_ids]

    def finish(self) -> None:
        """Write every pending shard, then every outcome."""
        self.flush(force=True)
        self.summary.embedded = self.summary.ok = len(self.ok_ids - self.failed_ids)


def decoded_modality(d: Decoded) -> str:
    return "image" if d.pixels is not None else "audio" if d.audio is not None else "text"


def waiting(group: list[Decoded], modality: str) -> int:
    """How much encoder work a group holds: audio counts windows, the rest items."""
    return sum(len(d.audio) for d in group if d.audio is not None) if modality == "audio" else len(group)


def encode_group(encoder: Encoder, modality: str, group: list[Decoded],
                 batch_size: int) -> tuple[np.ndarray, list[Windows | None]]:
    """The vectors of a group of decoded items of one modality (and, for long audio, their windows):
    the one encode step both engines run."""
    if modality == "image":
        return cast(ImageEncoder, encoder).embed_images(np.stack([d.pixels for d in group])), [None] * len(group)  # type: ignore[misc]
    if modality == "audio":
        return _embed_audio(cast(AudioEncoder, encoder), group, batch_size)
    return encoder.embed_texts([d.text or "" for d in group]), [None] * len(group)


def _embed_audio(encoder: AudioEncoder, group: list[Decoded], batch_size: int) -> tuple[np.ndarray, list[Windows | None]]:
    """Every window of every clip in the group, in batches; an item's vector pools its windows."""
    from xmodal.encoders.clap import embed_windows, pool_windows

    feats = np.concatenate([d.audio for d in group if d.audio is not None])
    window_vecs = embed_windows(encoder, feats, batch_size)
    vecs: list[np.ndarray] = []
    windows: list[Windows | None] = []
    at = 0
    for d in group:
        n = len(d.audio) if d.audio is not None else 0
        own = window_vecs[at : at + n]
        at += n
        vecs.append(pool_windows(own))
        windows.append(Windows(own, np.asarray(d.spans, dtype=np.float32).reshape(-1, 2)) if n > 1 else None)
    return np.stack(vecs), windows


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
                broken = False
                while todo and len(inflight) < max_inflight:
                    try:  # a worker that died meanwhile breaks the pool for submit() too
                        fut = self._pool.submit(decode_many, todo[0], config)
                    except cf.process.BrokenProcessPool:
                        broken = True
                        break
                    inflight.append((todo.popleft(), fut))
                if not broken:
                    chunk, fut = inflight.popleft()
                    try:
                        results = fut.result()
                    except cf.process.BrokenProcessPool:
                        inflight.appendleft((chunk, fut))
                        broken = True
                    else:
                        yield from results
                        continue
                in_flight = [c for c, _ in inflight]  # all earlier than what is left in todo
                log.warning("a decode worker died; retrying %d files one at a time", sum(len(c) for c in in_flight))
                self._restart()
                suspects.extend(t for c in in_flight for t in c)
                break

    def _restart(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()


def _gone(states: dict[str, ItemState], seen: set[str], roots: list[str], unlisted: list[str]) -> list[str]:
    """URIs of the catalog's items under the scanned roots that the scan did not see (deleted files);
    folders that could not be listed keep theirs."""
    return [uri for uri, st in states.items() if st.status != STATUS_DELETED and uri not in seen
            and under_roots(uri, roots) and not under_roots(uri, unlisted)]


def plan_sources(settings: Settings, sources: Iterable[Path], collection: str, *, retry_failed: bool = False,
                 limit: int = 20) -> dict[str, Any]:
    """What ``xmodal index`` would do, without doing any of it (``--dry-run``): scan the sources and
    compare with the catalog, read only; nothing is written, no model is loaded, no lock is taken.

    ``changed`` are files whose size or modification time differ: the run hashes them, and only a new
    content hash means a new vector. Returns counts and the first ``limit`` paths of each kind."""
    roots = [os.path.abspath(s) for s in sources]
    unlisted: list[str] = []
    entries = list(scan(list(sources), unlisted))
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        try:
            states = catalog.item_states(catalog.collection_id(collection))
            exists = True
        except UserError:  # a new collection (or a new data dir): everything is new
            states, exists = {}, False
    finally:
        catalog.close()
    kinds: dict[str, list[str]] = {k: [] for k in ("new", "changed", "unfinished", "retry", "unchanged",
                                                     "unreadable", "deleted")}
    for e in entries:
        st = states.get(e.uri)
        if e.error is not None:
            kinds["unreadable"].append(e.uri)
        elif st is None or st.status == STATUS_DELETED:
            kinds["new"].append(e.uri)
        elif (st.size, st.mtime_ns) != (e.size, e.mtime_ns):
            kinds["changed"].append(e.uri)
        elif st.status == STATUS_FAILED:
            kinds["retry" if retry_failed or (st.reason or "").startswith(AUDIO_UNAVAILABLE) else "unchanged"].append(e.uri)
        elif st.status != STATUS_OK:
            kinds["unfinished"].append(e.uri)
        else:
            kinds["unchanged"].append(e.uri)
    seen = {e.uri for e in entries}
    kinds["deleted"] = _gone(states, seen, roots, unlisted)
    return {
        "collection": collection, "dry_run": True, "collection_exists": exists, "scanned": len(entries),
        **{k: len(v) for k, v in kinds.items()},
        "examples": {k: sorted(v)[:limit] for k, v in kinds.items() if v and k != "unchanged"},
        "unlisted": unlisted,
        "would_rebuild_index": any(kinds[k] for k in ("new", "changed", "unfinished", "retry", "deleted")),
    }


FAULT_ENV = "XMODAL_FAULT_AT"


def fault_from_env() -> Callable[[str], None] | None:
    """The fault hook a crash test sets on a subprocess: ``XMODAL_FAULT_AT=point`` (or ``point@n``)
    SIGKILLs this process the first (n-th) time the run reaches ``point``: after-scan,
    after-encode-batch, before-shard-write, before-shard-commit, after-shard-commit, before-index-write,
    before-publish."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    point, _, nth = spec.partition("@")
    left = [int(nth) if nth.isdigit() else 1]

    def hook(at: str) -> None:
        if at == point:
            left[0] -= 1
            if left[0] <= 0:
                log.warning("%s=%s: killing this run now", FAULT_ENV, spec)
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def index_sources(settings: Settings, sources: Iterable[Path], collection: str, *, progress: bool = True,
                  retry_failed: bool = False, crash_at: Callable[[str], None] | None = None,
                  engine: str = "local", ray_address: str | None = None) -> RunSummary:
    with collection_lock(settings.home, collection, settings.resolved_database_url):
        run = IndexRun(settings, collection, progress=progress, crash_at=crash_at, engine=engine,
                       ray_address=ray_address)
        try:
            return run.run(list(sources), retry_failed=retry_failed)
        finally:
            run.catalog.close()
