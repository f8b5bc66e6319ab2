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
    TEMPORARY_FAILURE,
    UNKNOWN,
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
from xmodal.indexer.manifest import ManifestDiffer, ManifestEntry, ManifestReader, read_manifest
from xmodal.indexer.publish import build_and_publish
from xmodal.indexer.scan import OUTSIDE, FileEntry, Scan, scan, under_roots
from xmodal.media.fetch import FetchOptions, is_remote
from xmodal.media.types import MediaLimits, modality_for_uri
from xmodal.storage.catalog import (
    STATUS_DELETED,
    STATUS_FAILED,
    STATUS_OK,
    Catalog,
    EmbeddedItem,
    ItemOutcome,
    ItemState,
    SourceFields,
    check_same_model,
)
from xmodal.storage.layout import Layout
from xmodal.storage.shards import Windows, write_shard
from xmodal.storage.uris import is_under, uri_to_path

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
    manifest: dict[str, Any] = field(default_factory=dict)  # a manifest run: its changes and problems

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
            **({"manifest": self.manifest} if self.manifest else {}),
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
        if engine == "ray":  # a missing Ray fails before anything is scanned or written
            from xmodal.indexer.ray_engine import require_ray

            require_ray()
        self.settings = settings
        self.engine = engine
        self.ray_address = ray_address
        self._ray_device: str | None = None
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
        self._entries: dict[int, FileEntry] = {}  # item -> what was scanned (or read from a manifest)
        self._sources: dict[int, SourceFields] = {}  # manifest item -> its digest and metadata
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

    def run(self, sources: list[Path], *, retry_failed: bool = False,
            manifest: ManifestReader | None = None) -> RunSummary:
        summary = RunSummary(self.collection)
        t0 = time.monotonic()
        summary.swept = sweep_orphans(self.catalog, self.layout, self.collection, self.collection_id)
        if manifest is not None:
            tasks = self._diff_manifest(manifest, summary, retry_failed=retry_failed)
        else:
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
        if self._ray_device:  # where the Ray engine's encoder actors ran
            summary.device = f"ray:{self._ray_device}"
        elif self._encoders:
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
        found = Scan()
        bar = tqdm(desc="scan", unit=" files", disable=not self.progress, leave=False)
        for entry in scan(sources, unlisted, follow_external=self.settings.follow_external_symlinks, found=found):
            entries.append(entry)
            bar.update()
        bar.close()
        summary.scanned = len(entries)
        roots = [os.path.abspath(s) for s in sources]
        self.catalog.record_roots(self.collection_id, found.roots)
        summary.warnings += [f"not walked: {d} links to a folder outside the sources "
                             "(XMODAL_FOLLOW_EXTERNAL_SYMLINKS=true walks it)" for d in found.refused]

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
        self._entries.update({ids[e.uri]: e for e in entries})
        return tasks

    def _diff_manifest(self, reader: ManifestReader, summary: RunSummary, *, retry_failed: bool) -> list[DecodeTask]:
        """Stream a manifest against the catalog's manifest items: insert, re-embed (new media), update
        metadata in place (same media), delete what left it; return the work.

        An entry's digest and metadata are written with its outcome (a shard commit, a failure, an
        unchanged content), never before: a run killed in between leaves the old digest, and the
        next run sees the same change again. New items are inserted without a digest for the same reason.
        """
        states = self.catalog.manifest_states(self.collection_id)
        differ = _manifest_differ(states)
        known_spaces = ["clip", "clap"] if "clap" in self._records else ["clip"]
        missing: dict[int, list[str]] = {}
        for space in known_spaces:
            for item_id in self.catalog.items_needing_vectors(self.collection_id, space, SPACE_MODALITIES[space]):
                missing.setdefault(item_id, []).append(space)
        work: list[tuple[DecodeTask, list[str] | None]] = []  # task, and the only spaces it lacks (or all)
        new_rows: list[tuple[str, str, str, str, str]] = []
        new_entries: list[tuple[ManifestEntry, str]] = []
        revived: list[tuple[int, str, str]] = []
        meta_changes: list[ItemOutcome] = []
        counts = {"inserted": 0, "updated": 0, "metadata_updated": 0, "unchanged": 0}

        def task(item_id: int, entry: ManifestEntry, modality: str, known: str | None) -> DecodeTask:
            uri = entry.uri
            remote = uri is not None and is_remote(uri)
            path = uri if remote or uri is None else uri_to_path(uri)
            return DecodeTask(item_id, path or entry.key, modality, known, remote=remote, text=entry.text)

        folders: set[str] = set()  # the real folders of the local files named: roots of what may be served

        def local_stat(entry: ManifestEntry) -> tuple[int | None, int | None]:
            """(size, mtime) of a local file entry: a file changed in place is embedded again."""
            if entry.uri is None or is_remote(entry.uri):
                return None, None
            path = uri_to_path(entry.uri)
            folders.add(os.path.realpath(os.path.dirname(os.path.abspath(path))))
            try:
                st = os.stat(path)
            except OSError:
                return -1, -1  # gone or unreadable: decoding it again records why
            return st.st_size, st.st_mtime_ns

        def note(item_id: int, entry: ManifestEntry, modality: str, stat: tuple[int | None, int | None]) -> None:
            self._sources[item_id] = SourceFields(entry.content_digest(), entry.metadata)
            uri = entry.uri or entry.key
            self._entries[item_id] = FileEntry(f"{entry.source_id}#{entry.column} ({uri})" if entry.uri else uri,
                                               uri, modality, *stat)

        def insert_new() -> None:
            ids = self.catalog.add_source_items(self.collection_id, new_rows)
            for entry, modality in new_entries:
                item_id = ids[entry.key]
                note(item_id, entry, modality, local_stat(entry))
                work.append((task(item_id, entry, modality, None), None))
            new_rows.clear()
            new_entries.clear()

        for entry in reader:
            summary.scanned += 1
            change = differ.classify(entry)
            st = states.get(entry.key)
            modality = "text" if entry.text is not None else (
                entry.modality or modality_for_uri(entry.uri or "") or UNKNOWN)
            uri = entry.uri or entry.key
            if change == "insert" and st is None:
                new_rows.append((entry.key, uri, modality, entry.source_id, entry.column))
                new_entries.append((entry, modality))
                if len(new_rows) >= 5000:
                    insert_new()
                counts["inserted"] += 1
                continue
            assert st is not None
            stat = local_stat(entry)
            note(st.id, entry, modality, stat)
            if change in ("insert", "update"):  # back after a delete, never finished, or new media
                revived.append((st.id, uri, modality))
                counts["inserted" if change == "insert" else "updated"] += 1
                known = st.content_hash if change == "update" and st.status == STATUS_OK else None
                work.append((task(st.id, entry, modality, known), None))
                continue
            if change == "metadata":
                meta_changes.append(ItemOutcome(st.id, st.status, st.reason, st.content_hash, st.size, None,
                                                self._sources[st.id]))
                counts["metadata_updated"] += 1
                if len(meta_changes) >= 5000:
                    self.catalog.update_source_meta(meta_changes)
                    meta_changes.clear()
            retry = _retry(st, retry_failed)
            moved = stat[0] is not None and (stat[0], stat[1]) != (st.size, st.mtime_ns)
            if st.status == STATUS_OK and st.id in missing:
                work.append((task(st.id, entry, modality, None), missing[st.id]))
            elif moved and st.status in (STATUS_OK, STATUS_FAILED):  # a local file changed in place
                counts["updated"] += 1
                work.append((task(st.id, entry, modality, st.content_hash if st.status == STATUS_OK else None),
                             None))
            elif st.status not in (STATUS_OK, STATUS_FAILED) or (st.status == STATUS_FAILED and retry):
                work.append((task(st.id, entry, modality, None), None))  # unfinished, or a failure to retry
            elif change == "unchanged":
                counts["unchanged"] += 1
        if new_rows:
            insert_new()
        # media that moved (a new URL): the row shows it at once; its digest only moves with the outcome
        self.catalog.move_source_items(revived)
        self.catalog.update_source_meta(meta_changes)

        removals = differ.finish(reader.report)
        gone = [states[k].id for k in removals.deletes if states[k].status != STATUS_DELETED]
        if gone:
            self.catalog.set_status(gone, STATUS_DELETED)
        summary.new = counts["inserted"]
        summary.deleted = len(gone)
        summary.unchanged = counts["unchanged"]
        report = reader.report
        summary.manifest = {
            "path": str(reader.path), "format": reader.format, "rows": report.rows, "entries": report.entries,
            **counts, "deleted": len(gone), "kept": len(removals.kept), "held": len(removals.held),
            "problem_count": report.problem_count, "problems": [str(p) for p in report.problems[:100]],
            "skipped_rows": len(report.skipped_ids) + report.unidentified_rows,
        }
        if removals.held:
            summary.warnings.append(
                f"{len(removals.held)} items left the manifest but were not deleted: {report.unidentified_rows} "
                "rows could not be read far enough to know their id (fix them and run again)")
        for problem in report.problems[:20]:
            summary.warnings.append(f"manifest: {problem}")
        if report.problem_count > 20:
            summary.warnings.append(f"manifest: ... and {report.problem_count - 20} more problems (see the report)")

        roots = [(f, "manifest") for f in sorted(folders)]
        audio = any(t.modality in ("audio", UNKNOWN) for t, _ in work) or "clap" in self._records
        active = ["clip", "clap"] if audio and self._audio_ready() else ["clip"]
        tasks: list[DecodeTask] = []
        unusable: list[ItemOutcome] = []
        for t, lacking in work:
            target = None if t.remote or t.text is not None else _link_out_of_folder(t.path)
            if target is not None and not self.settings.follow_external_symlinks:
                unusable.append(ItemOutcome(t.item_id, STATUS_FAILED, OUTSIDE, None, None, None,
                                            self._sources[t.item_id]))
                summary.failed += 1
                summary.failures.append((self._entries[t.item_id].uri, OUTSIDE))
                continue
            if target is not None:
                roots.append((target, "link"))
            spaces = tuple(lacking) if lacking else tuple(
                sp for sp in active if t.modality == UNKNOWN or t.modality in SPACE_MODALITIES[sp])
            if not spaces:  # audio, and no CLAP model this run
                reason = self._audio_error or f"{AUDIO_UNAVAILABLE}no audio model"
                unusable.append(ItemOutcome(t.item_id, STATUS_FAILED, reason, None, None, None,
                                            self._sources[t.item_id]))
                summary.failed += 1
                summary.failures.append((self._entries[t.item_id].uri, reason))
                continue
            self._needs[t.item_id] = spaces
            tasks.append(t)
        self.catalog.record_outcomes(unusable)
        self.catalog.record_roots(self.collection_id, roots)
        return tasks

    # ------------------------------------------------------------------------------------------

    def _embed(self, tasks: list[DecodeTask], summary: RunSummary) -> None:
        config = self._decode_config(tasks)
        sink = ShardSink(self, summary)
        bar = tqdm(total=len(tasks), desc="embed", unit=" items", disable=not self.progress, smoothing=0.1)
        try:
            if self.engine == "ray":
                from xmodal.indexer.ray_engine import embed_on_ray

                self._ray_device = embed_on_ray(self, tasks, config, sink, bar, address=self.ray_address)
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
        s = self.settings
        return DecodeConfig(
            self.limits, clip.image_transform() if clip else None, clip.image_min_side() if clip else None,
            clap.audio_spec() if clap else None, clap.audio_transform() if clap else None,
            fetch=FetchOptions(timeout_s=s.fetch_timeout, deadline_s=s.fetch_deadline, retries=s.fetch_retries,
                               max_bytes=s.max_file_bytes),
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
        self.outcomes.append(ItemOutcome(item_id, STATUS_FAILED, reason, content_hash, e.size, e.mtime_ns,
                                         self.run._sources.get(item_id)))
        self.summary.failed += 1
        self.summary.failures.append((e.uri, reason))

    def decoded(self, d: Decoded) -> bool:
        """Record a decode that needs no encoding (failed, content unchanged); True when it does."""
        if d.error is not None:
            self.fail(d.item_id, d.error, d.content_hash)
            return False
        if d.unchanged:
            e = self.run._entries[d.item_id]
            self.outcomes.append(ItemOutcome(d.item_id, STATUS_OK, None, d.content_hash, d.size, e.mtime_ns,
                                             self.run._sources.get(d.item_id)))
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
            size=d.size or 0, mtime_ns=entry.mtime_ns or 0, meta=d.meta, modality=decoded_modality(d),
            source=self.run._sources.get(d.item_id),
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


def _link_out_of_folder(path: str) -> str | None:
    """The real target of a manifest's local file when it is a symlink out of the folder the manifest
    names (such a link is followed only by permission, like one out of a scanned folder), else None."""
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return None if is_under(target, [folder]) else target


def _manifest_differ(states: dict[str, ItemState]) -> ManifestDiffer:
    """A differ against the collection's live manifest entries: a deleted one, or one never finished
    (no digest yet), reads as new."""
    return ManifestDiffer({k: st.source_digest for k, st in states.items()
                           if st.status != STATUS_DELETED and st.source_digest})


def _retry(st: ItemState, retry_failed: bool) -> bool:
    """Whether a failed manifest item is tried again: asked to, or its failure may not recur (no audio
    model then, a fetch timeout or 5xx)."""
    return retry_failed or (st.reason or "").startswith((AUDIO_UNAVAILABLE, TEMPORARY_FAILURE))


def _read_states(settings: Settings, collection: str, *, manifest: bool) -> tuple[dict[str, ItemState], bool]:
    """The catalog's item states of a collection for a dry run, read only, and whether it exists: a new
    collection, or a new data dir, has none (everything is new)."""
    try:
        catalog = Catalog(settings.resolved_database_url, create=False)
    except UserError:
        return {}, False
    try:
        cid = catalog.collection_id(collection)
        return (catalog.manifest_states(cid) if manifest else catalog.item_states(cid)), True
    except UserError:
        return {}, False
    finally:
        catalog.close()


def plan_sources(settings: Settings, sources: Iterable[Path], collection: str, *, retry_failed: bool = False,
                 limit: int = 20) -> dict[str, Any]:
    """What ``xmodal index`` would do, without doing any of it (``--dry-run``): scan the sources and
    compare with the catalog, read only; nothing is written, no model is loaded, no lock is taken.

    ``changed`` are files whose size or modification time differ: the run hashes them, and only a new
    content hash means a new vector. Returns counts and the first ``limit`` paths of each kind."""
    roots = [os.path.abspath(s) for s in sources]
    unlisted: list[str] = []
    entries = list(scan(list(sources), unlisted, follow_external=settings.follow_external_symlinks))
    states, exists = _read_states(settings, collection, manifest=False)
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


def plan_manifest(settings: Settings, manifest: Path, collection: str, *, media: dict[str, str | None] | None = None,
                  column_types: dict[str, str] | None = None, retry_failed: bool = False,
                  limit: int = 20) -> dict[str, Any]:
    """What ``xmodal index --manifest`` would do (``--dry-run``): read the manifest and diff it with the
    catalog, read only. ``updated`` entries have new media (fetched and embedded again),
    ``metadata_updated`` only new metadata (written in place, the vector kept)."""
    reader = read_manifest(manifest, media=media, column_types=column_types)
    states, exists = _read_states(settings, collection, manifest=True)
    differ = _manifest_differ(states)
    kinds: dict[str, list[str]] = {k: [] for k in ("inserted", "updated", "metadata_updated", "unfinished", "retry",
                                                     "unchanged")}
    names = {"insert": "inserted", "update": "updated", "metadata": "metadata_updated", "unchanged": "unchanged"}
    for entry in reader:
        kind = names[differ.classify(entry)]
        st = states.get(entry.key)
        if kind in ("unchanged", "metadata_updated") and st is not None and st.status != STATUS_OK:
            retry = _retry(st, retry_failed)
            if st.status != STATUS_FAILED:
                kinds["unfinished"].append(entry.key)
            elif retry:
                kinds["retry"].append(entry.key)
        kinds[kind].append(entry.key)
    removals = differ.finish(reader.report)
    report = reader.report
    out: dict[str, Any] = {
        "collection": collection, "dry_run": True, "collection_exists": exists, "manifest": str(manifest),
        "rows": report.rows, "entries": report.entries, **{k: len(v) for k, v in kinds.items()},
        "deleted": len(removals.deletes), "held": len(removals.held), "kept": len(removals.kept),
        "problem_count": report.problem_count, "problems": [str(p) for p in report.problems[:limit]],
        "examples": {k: sorted(v)[:limit] for k, v in {**kinds, "deleted": removals.deletes}.items()
                     if v and k != "unchanged"},
    }
    out["would_rebuild_index"] = any(out[k] for k in ("inserted", "updated", "unfinished", "retry", "deleted"))
    return out


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


def index_manifest(settings: Settings, manifest: Path, collection: str, *,
                   media: dict[str, str | None] | None = None, column_types: dict[str, str] | None = None,
                   progress: bool = True, retry_failed: bool = False, crash_at: Callable[[str], None] | None = None,
                   engine: str = "local", ray_address: str | None = None) -> RunSummary:
    """Index the entries of a manifest (CSV, TSV, JSONL, Parquet; see ``indexer.manifest``) into a
    collection: its manifest items become exactly the manifest's entries."""
    reader = read_manifest(manifest, media=media, column_types=column_types, progress=progress)  # fails fast
    with collection_lock(settings.home, collection, settings.resolved_database_url):
        run = IndexRun(settings, collection, progress=progress, crash_at=crash_at, engine=engine,
                       ray_address=ray_address)
        try:
            return run.run([], retry_failed=retry_failed, manifest=reader)
        finally:
            run.catalog.close()


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
