"""``xmodal index``, stage by stage: sweep what killed runs left -> plan (``indexer.plan``: the decisions a
dry run reports) -> apply the plan to the catalog (insert new items, record failures and a manifest's
metadata, delete what left) -> embed the work (an engine decodes and encodes; its results go through the
sink into shards and catalog rows) -> refit the alignment when a space it joins moved -> build and
publish each space's index.

Crash safety comes from the order of writes: an item becomes ``ok`` only in the transaction that
records the shard holding its vector, and that shard is on disk (fsynced, renamed) before. A killed
run leaves pending items and maybe an unrecorded shard file; the next run sweeps the file and redoes
the pending items.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from xmodal.config import Settings
from xmodal.encoders import Encoder, align
from xmodal.encoders.align import LoadedAlignment
from xmodal.encoders.base import resolve_device
from xmodal.errors import ModelMismatchError
from xmodal.indexer import engines
from xmodal.indexer.calibrate import store_text_probes, text_probes
from xmodal.indexer.decode import DecodeConfig, DecodeTask, preparations
from xmodal.indexer.diff import apply_files, apply_manifest
from xmodal.indexer.engines.base import EmbedJob
from xmodal.indexer.lock import collection_lock
from xmodal.indexer.maintenance import sweep_orphans
from xmodal.indexer.manifest import ManifestReader, read_manifest
from xmodal.indexer.models import RunModels
from xmodal.indexer.plan import Plan
from xmodal.indexer.publish import build_and_publish
from xmodal.indexer.sink import ItemWork, ShardSink
from xmodal.media.fetch import FetchOptions
from xmodal.media.types import MediaLimits
from xmodal.media.video import VideoSpec
from xmodal.spaces import ALIGNMENTS, PRIMARY
from xmodal.storage.catalog import Catalog
from xmodal.storage.layout import Layout

log = logging.getLogger(__name__)


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
    still_failed: int = 0  # of the unchanged: items that failed before and stay failed (not retried)
    still_failed_reasons: list[dict[str, Any]] = field(default_factory=list)  # their reasons, with counts
    skipped: dict[str, int] = field(default_factory=dict)  # files of no supported type, by extension
    index: dict[str, Any] = field(default_factory=dict)  # space -> its published version
    alignment: dict[str, Any] = field(default_factory=dict)  # the clap -> clip map's fit, when (re)fitted
    device: str = "cpu"
    seconds: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)  # the collection's items by status after the run
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed (kept as they were)
    warnings: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # files an interrupted run left, removed at the start
    manifest: dict[str, Any] = field(default_factory=dict)  # a manifest run: its changes and problems
    plan: dict[str, Any] = field(default_factory=dict)  # what the run decided: the same a dry run reports

    @property
    def items_per_second(self) -> float:
        embed_s = self.seconds.get("embed", 0.0)
        return self.embedded / embed_s if embed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "scanned": self.scanned, "new": self.new, "embedded": self.embedded,
            "ok": self.ok, "failed": self.failed, "unchanged": self.unchanged, "deleted": self.deleted,
            "still_failed": self.still_failed, "still_failed_reasons": self.still_failed_reasons,
            "skipped": self.skipped, "failures": [{"uri": u, "reason": r} for u, r in self.failures],
            "index": self.index, "alignment": self.alignment, "device": self.device, "seconds": self.seconds,
            "totals": self.totals, "unlisted": self.unlisted, "warnings": self.warnings, "swept": self.swept,
            "items_per_second": round(self.items_per_second, 2), "plan": self.plan,
            **({"manifest": self.manifest} if self.manifest else {}),
        }


class IndexRun:
    """One indexing run over some sources (or a manifest) into one collection."""

    def __init__(self, settings: Settings, collection: str, *, progress: bool = True,
                 crash_at: Callable[[str], None] | None = None, engine: str = "local",
                 ray_address: str | None = None) -> None:
        self.engine = engines.engine(engine, address=ray_address)  # a missing Ray fails before anything
        self.settings = settings
        self.collection = collection
        self.progress = progress
        self.layout = Layout(settings.home)
        self.catalog = Catalog(settings.resolved_database_url)
        self.collection_id = self.catalog.collection_id(collection, create=True)
        self.limits = MediaLimits.from_settings(settings)
        self._crash_at = crash_at or fault_from_env()
        self.models = RunModels(settings, collection, self.catalog.spaces(self.collection_id),
                                warn=lambda text: say(f"warning: {text}"))

    def hook(self, point: str) -> None:
        if self._crash_at is not None:
            self._crash_at(point)

    def encoder(self, space: str) -> Encoder:
        """A space's encoder, loaded once; the catalog records it as the space's model (or checks it is)."""
        if space not in self.models.encoders:
            if self.progress:
                record = self.models.records[space]
                name = str(record.get("model")) + (f" ({record['pretrained']})" if record.get("pretrained") else "")
                say(f"loading {space} model {name} on {resolve_device(self.settings.device)} ...")
            enc = self.models.encoder(space)
            recorded = self.catalog.ensure_space(self.collection_id, enc.space, enc.family, enc.record, enc.dim)
            if recorded.dim != enc.dim:
                raise ModelMismatchError(f"space {recorded.name} has dimension {recorded.dim}, model gives {enc.dim}")
        return self.models.encoders[space]

    def run(self, sources: list[Path], *, retry_failed: bool = False,
            manifest: ManifestReader | None = None) -> RunSummary:
        summary = RunSummary(self.collection)
        timer = _Timer()
        summary.swept = sweep_orphans(self.catalog, self.layout, self.collection, self.collection_id)
        if manifest is not None:
            plan = apply_manifest(self.catalog, self.collection_id, self.models, manifest, summary,
                                  retry_failed=retry_failed, follow_external=self.settings.follow_external_symlinks)
        else:
            plan = apply_files(self.catalog, self.collection_id, self.models, sources, summary,
                               retry_failed=retry_failed, follow_external=self.settings.follow_external_symlinks,
                               progress=self.progress)
        summary.plan = plan.summary()
        summary.seconds["scan"] = timer.lap()
        self.hook("after-scan")
        if plan.work:
            self._embed(plan, summary)
        summary.seconds["embed"] = timer.lap()
        alignment = self._align(summary)
        for space in sorted(s.name for s in self.catalog.spaces(self.collection_id)):
            summary.index[space] = build_and_publish(
                self.catalog, self.layout, self.settings, self.collection, self.collection_id, space,
                alignment=alignment if alignment is not None and space == alignment_target() else None,
                progress=self.progress, crash_at=self._crash_at,
                text_probes=functools.partial(self._text_probes, space),
            )
        summary.seconds["build"] = timer.lap()
        summary.seconds["total"] = timer.total()
        summary.totals = self.catalog.counts(self.collection_id)["status"]
        summary.warnings += list(self.models.unavailable.values())
        return summary

    def _embed(self, plan: Plan, summary: RunSummary) -> None:
        tasks = [DecodeTask(d.item_id, d.uri, d.modality, d.known_hash, remote=d.remote, text=d.text)
                 for d in plan.work if d.item_id is not None]
        work = {d.item_id: ItemWork(d.label, d.size, d.mtime_ns, d.source, d.spaces)
                for d in plan.work if d.item_id is not None}
        s = self.settings
        self.engine.start(tasks, work, workers=s.resolved_workers, min_bytes=s.decode_pool_min_bytes)
        needed = sorted({sp for w in work.values() for sp in w.spaces})
        encoders = {sp: self.encoder(sp) for sp in needed}  # loaded while the decode workers start
        config = DecodeConfig(self.limits, preparations(encoders.values()), fetch=FetchOptions(
            timeout_s=s.fetch_timeout, deadline_s=s.fetch_deadline, retries=s.fetch_retries, max_bytes=s.max_file_bytes),
            video=VideoSpec(s.video_fps, s.video_max_frames, s.video_max_segment_s))
        sink = ShardSink(catalog=self.catalog, layout=self.layout, collection=self.collection,
                         collection_id=self.collection_id, settings=s, encoders=encoders, work=work, summary=summary,
                         hook=self.hook)
        bar = tqdm(total=len(tasks), desc="embed", unit=" items", disable=not self.progress, smoothing=0.1)
        with _StopOnCtrlC(getattr(self.engine, "stoppable", False)) as stop:
            try:
                summary.device = self.engine.embed(EmbedJob(tasks, work, config, dict(self.models.records),
                                                            self.encoder, sink, s, bar, self.hook, stop))
                sink.finish()
            finally:
                bar.close()
        if stop():
            raise KeyboardInterrupt(f"{len(sink.ok_ids - sink.failed_ids)} items committed before it stopped; "
                                    "the next run goes on from there")

    def _text_probes(self, space: str) -> npt.NDArray[np.float32] | None:
        return text_probes(self.layout, space, self.models.records.get(space), lambda: self.encoder(space))

    def _align(self, summary: RunSummary) -> LoadedAlignment | None:
        """The alignment into the primary space, refitted when either model or the bank changed."""
        (spec,) = ALIGNMENTS
        spaces = {s.name: s for s in self.catalog.spaces(self.collection_id)}
        if spec.source in spaces and spec.target not in spaces:  # audio alone: text and image queries reach it
            self.encoder(spec.target)
            spaces = {s.name: s for s in self.catalog.spaces(self.collection_id)}
        if not {spec.source, spec.target} <= spaces.keys():
            return None
        key = align.alignment_key(spaces[spec.source].model["identity"], spaces[spec.target].model["identity"])
        row = self.catalog.alignment(self.collection_id, spec.source, spec.target)
        if row is not None and row.key == key:
            return align.from_row(row)
        texts = align.bank_texts()
        encoders = {sp: self.encoder(sp) for sp in (spec.source, spec.target)}
        if self.progress:
            say(f"aligning audio to the {spec.target} space: embedding {len(texts)} bank texts with both models ...")
        bar = tqdm(total=2 * len(texts), desc="align", unit=" texts", disable=not self.progress)

        def counted(embed: Callable[[Sequence[str]], np.ndarray]) -> Callable[[Sequence[str]], np.ndarray]:
            def run(batch: Sequence[str]) -> np.ndarray:
                out = embed(batch)
                bar.update(len(batch))
                return out
            return run

        try:
            bank = {sp: align.embed_bank(counted(enc.embed_texts), texts) for sp, enc in encoders.items()}
        finally:
            bar.close()
        for sp, vectors in bank.items():  # the calibration's text probes come from the same embeddings
            store_text_probes(self.layout, sp, self.models.records.get(sp), vectors)
        fitted = align.fit(bank[spec.source], bank[spec.target])
        self.catalog.save_alignment(self.collection_id, spec.source, spec.target, key, fitted.matrix, fitted.metrics)
        summary.alignment = fitted.metrics
        log.info("fitted the %s -> %s alignment: %s", spec.source, spec.target, fitted.metrics)
        return align.LoadedAlignment(key, fitted.matrix, fitted.metrics)


class _StopOnCtrlC:
    """While an engine that can stop early embeds: the first Ctrl-C asks it to stop (it commits what it
    embedded, then the run ends with KeyboardInterrupt); a second one interrupts at once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.asked = False
        self.previous: Any = None

    def __call__(self) -> bool:
        return self.asked

    def _handle(self, signum: int, frame: Any) -> None:
        self.asked = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say("stopping: committing what is embedded (Ctrl-C again to stop at once)")

    def __enter__(self) -> _StopOnCtrlC:
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


def say(text: str) -> None:
    """A line for the person watching (stderr, between progress bars): what runs now, or what will not."""
    tqdm.write(text, file=sys.stderr)


def alignment_target() -> str:
    return ALIGNMENTS[0].target if ALIGNMENTS else PRIMARY


class _Timer:
    def __init__(self) -> None:
        import time

        self._now = time.monotonic
        self.start = self.last = self._now()

    def lap(self) -> float:
        now = self._now()
        lap, self.last = now - self.last, now
        return round(lap, 3)

    def total(self) -> float:
        return round(self._now() - self.start, 3)


FAULT_ENV = "XMODAL_FAULT_AT"


def fault_from_env() -> Callable[[str], None] | None:
    """The fault hook a crash test sets on a subprocess: ``XMODAL_FAULT_AT=point`` (or ``point@n``)
    SIGKILLs this process the first (n-th) time the run reaches ``point``: after-scan,
    after-encode-batch, before-shard-write, before-shard-commit, after-shard-commit, before-index-write,
    before-publish. ``point+s`` SIGKILLs it ``s`` seconds after it first reaches ``point``, wherever the run
    is then (a random moment of its work, not one of these points)."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    point, _, delay = spec.partition("+")
    point, _, nth = point.partition("@")
    left = [int(nth) if nth.isdigit() else 1]

    def kill() -> None:
        log.warning("%s=%s: killing this run now", FAULT_ENV, spec)
        os.kill(os.getpid(), signal.SIGKILL)

    def hook(at: str) -> None:
        if at == point:
            left[0] -= 1
            if left[0] == 0 and delay:
                timer = threading.Timer(float(delay), kill)
                timer.daemon = True
                timer.start()
            elif left[0] <= 0 and not delay:
                kill()

    return hook


def index_manifest(settings: Settings, manifest: Path, collection: str, *,
                   media: dict[str, str | None] | None = None, column_types: dict[str, str] | None = None,
                   progress: bool = True, retry_failed: bool = False, crash_at: Callable[[str], None] | None = None,
                   engine: str = "local", ray_address: str | None = None,
                   lexical: Sequence[str] | None = None) -> RunSummary:
    """Index the entries of a manifest (CSV, TSV, JSONL, Parquet; see ``indexer.manifest``) into a
    collection: its manifest items become exactly the manifest's entries. ``lexical``: the columns whose
    words every item of a product carries (``["*"]``: every string column), kept by the collection for later
    runs (None keeps the recorded choice); a new choice writes the collection's words again, first."""
    reader = read_manifest(manifest, media=media, column_types=column_types, progress=progress)  # fails fast
    fields = reader.lexical_fields(lexical) if lexical is not None else None  # an unknown column fails here
    with collection_lock(settings.home, collection, settings.resolved_database_url):
        run = IndexRun(settings, collection, progress=progress, crash_at=crash_at, engine=engine,
                       ray_address=ray_address)
        try:
            refilled = lexical is not None and run.catalog.set_lexical_fields(run.collection_id, fields)
            summary = run.run([], retry_failed=retry_failed, manifest=reader)
            summary.manifest["lexical_fields"] = run.catalog.lexical_fields(run.collection_id)
            summary.manifest["words_refilled"] = refilled
            return summary
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
