"""Build a space's FAISS index version from its Parquet shards and publish it in one transaction.

One index part per modality inside the version folder, so that a query for one target modality
searches only its part, and ``any`` merges parts of one space by score (comparable within a space).
A build is skipped when the live set (item id, shard, row) is the one already published.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from xmodal.config import Settings
from xmodal.encoders.align import LoadedAlignment
from xmodal.errors import UserError
from xmodal.indexer.build import build_index
from xmodal.indexer.calibrate import calibrate, reference
from xmodal.indexer.recipe import choose_recipe, retrain_reason
from xmodal.spaces import alignment_into
from xmodal.storage.ann import AnnPart, IndexRecipe
from xmodal.storage.catalog import Catalog, Space
from xmodal.storage.indexfiles import FORMAT_VERSION, read_index_dir, write_index_dir
from xmodal.storage.layout import Layout
from xmodal.storage.shards import read_shard

log = logging.getLogger(__name__)
CALIBRATION_VERSION = 2  # a build with another (or none, before it existed) is calibrated again


def live_fingerprint(live: list[tuple[int, str, int, int, str]], settings: Settings,
                     aligned: list[tuple[int, str, int, int, str]] | None = None,
                     alignment: LoadedAlignment | None = None) -> str:
    """What a build depends on: the live (item, shard, row) set, the aligned items and their map, and
    the settings that shape the index."""
    digest = hashlib.sha256()
    for rows in (live, aligned or []):
        arr = np.asarray([(i, s, r) for i, _, s, r, _ in rows], dtype=np.int64).reshape(-1, 3)
        digest.update(arr.tobytes())
    if alignment is not None and aligned:
        digest.update(alignment.digest.encode())
    digest.update(f"format={FORMAT_VERSION};calibration={CALIBRATION_VERSION};exact_threshold={settings.exact_threshold};"
                  f"recall_target={settings.recall_target};max_index_memory={settings.max_index_memory}".encode())
    return digest.hexdigest()


def _next_on_disk(layout: Layout, collection: str, space: str) -> int:
    """After a crash between writing and publishing, a version folder exists that the catalog never
    recorded: never reuse its number (it is left for gc)."""
    folder = layout.index_dir(collection, space)
    numbers = [int(p.name[1:]) for p in folder.glob("v*") if p.name[1:].isdigit()] if folder.is_dir() else []
    return max(numbers, default=0) + 1


def _gather(layout: Layout, spaces: dict[str, Space], record: Space, live: list[tuple[int, str, int, int, str]],
            aligned: list[tuple[int, str, int, int, str]], alignment: LoadedAlignment | None, scratch: Path, *,
            progress: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The live vectors of one space (and the aligned ones, mapped into it), per modality, read shard by
    shard into memory-mapped arrays under ``scratch``, rows sorted by item id: a build never holds all
    vectors in RAM, and the re-rank store is already in id order. Returns {modality: (ids, vectors)}."""
    sources: list[tuple[Space, list[tuple[int, str, int, int, str]], LoadedAlignment | None]] = [(record, live, None)]
    if aligned and alignment is not None:
        sources.append((spaces[alignment.source], aligned, alignment))
    ids_by_modality: dict[str, list[int]] = defaultdict(list)
    for _rec, rows, _map in sources:
        for item_id, modality, *_ in rows:
            ids_by_modality[modality].append(item_id)
    scratch.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for modality, listed in sorted(ids_by_modality.items()):
        out[modality] = (np.sort(np.asarray(listed, dtype=np.int64)),
                         np.lib.format.open_memmap(scratch / f"{modality}.npy", mode="w+", dtype=np.float32,
                                                   shape=(len(listed), record.dim)))
    for rec, rows, mapping in sources:
        by_shard: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
        for item_id, modality, _shard_id, row, path in rows:
            by_shard[path].append((item_id, modality, row))
        expect = {"space": rec.name, "identity": rec.model.get("identity"), "dim": rec.dim}
        desc = f"read shards [{rec.name}{' aligned' if mapping else ''}]"
        for path, picked in tqdm(by_shard.items(), desc=desc, unit=" shards", disable=not progress, leave=False):
            ids, vectors, _ = read_shard(layout.absolute(path), expect=expect)
            row_idx = np.asarray([r for _, _, r in picked], dtype=np.int64)
            want = np.asarray([i for i, _, _ in picked], dtype=np.int64)
            if not np.array_equal(ids[row_idx], want):
                raise RuntimeError(f"shard {path} does not hold the ids the catalog records for it")
            modalities = np.asarray([m for _, m, _ in picked])
            for modality in np.unique(modalities):
                sel = modalities == modality
                vecs = vectors[row_idx[sel]]
                sorted_ids, target = out[str(modality)]
                target[np.searchsorted(sorted_ids, want[sel])] = mapping.apply(vecs) if mapping else vecs
            del ids, vectors
    for _ids, target in out.values():
        cast(np.memmap, target).flush()
    return out


def _previous_parts(layout: Layout, current: Any, record: Space) -> dict[str, AnnPart]:
    """The published version's parts, to grow instead of retraining (none when they can't be read)."""
    if current is None:
        return {}
    expect = {"space": record.name, "identity": record.model.get("identity"), "dim": record.dim}
    try:
        return read_index_dir(layout.absolute(current.path), expect=expect)[1]
    except UserError as exc:
        log.info("not growing the published version (%s): building afresh", exc)
        return {}


def _part_budgets(total: int | None, sizes: dict[str, int]) -> dict[str, int | None]:
    """A space's memory budget shared by its parts in proportion to their vector counts."""
    n = sum(sizes.values())
    if total is None or n == 0:
        return {m: None for m in sizes}
    return {m: max(1, total * size // n) for m, size in sizes.items()}


def _probe_sample(vectors: list[np.ndarray], size: int = 1000, seed: int = 0) -> np.ndarray:
    """Up to ``size`` vectors of the space's other modalities: tuning probes like real cross-modal queries.

    A uniform sample of their rows taken together, read row by row from each (memory-mapped) array:
    the arrays themselves are never copied whole."""
    total = sum(v.shape[0] for v in vectors)
    if total <= size:
        return np.concatenate(vectors)
    pick = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    starts = np.cumsum([0] + [v.shape[0] for v in vectors])
    return np.concatenate([v[pick[(pick >= lo) & (pick < hi)] - lo]
                           for v, lo, hi in zip(vectors, starts[:-1], starts[1:], strict=True)])


def retrain_due(catalog: Catalog, settings: Settings, collection_id: int, space: Space,
                summary: dict[str, Any]) -> dict[str, str]:
    """Per part of a published version: why the next build will retrain (parts not listed won't)."""
    live = catalog.live_counts(collection_id, space.name)
    spec = alignment_into(space.name)
    if spec is not None:  # the aligned parts hold the source space's vectors of the modalities it carries
        carried = catalog.live_counts(collection_id, spec.source)
        live.update({m: carried.get(m, 0) for m in spec.carries})
    out = {}
    for modality, info in (summary.get("parts") or {}).items():
        stats = info.get("stats") or {}
        if stats.get("target_met") is False:
            out[modality] = f"probe recall@10 {stats.get('recall@10')} is below the target {stats.get('recall_target')}"
            continue
        try:
            trained = IndexRecipe.from_dict(info.get("recipe"))
        except UserError:
            continue
        reason = retrain_reason(trained, live.get(modality, 0), space.dim, exact_threshold=settings.exact_threshold,
                                recall_target=settings.recall_target, max_memory=info.get("max_memory"))
        if reason:
            out[modality] = reason
    return out


def build_and_publish(
    catalog: Catalog, layout: Layout, settings: Settings, collection: str, collection_id: int, space: str,
    *, alignment: LoadedAlignment | None = None, progress: bool = True, force: bool = False,
    crash_at: Callable[[str], None] | None = None,
    text_probes: Callable[[], npt.NDArray[np.float32] | None] = lambda: None,
) -> dict[str, Any]:
    """Returns a summary of the published (or already current) version.

    With ``alignment`` (for ``clip``), the audio items of the ``clap`` space join the version as an
    ``audio`` part, their vectors carried into this space by the alignment. Every version is calibrated
    (``indexer.calibrate``); ``text_probes`` gives bank texts embedded by this space's text tower, asked
    for only when the collection holds few texts.
    """
    spaces = {s.name: s for s in catalog.spaces(collection_id)}
    if space not in spaces:
        return {}
    record = spaces[space]
    live = catalog.live_vectors(collection_id, space)
    aligned: list[tuple[int, str, int, int, str]] = []
    if alignment is not None and alignment.source in spaces:
        spec = alignment_into(space)
        carries = spec.carries if spec is not None else frozenset()
        aligned = [row for row in catalog.live_vectors(collection_id, alignment.source) if row[1] in carries]
    fingerprint = live_fingerprint(live, settings, aligned, alignment)
    current = catalog.published_index(collection_id, space)
    if current is not None and current.fingerprint == fingerprint and not force:
        return {"version": current.version, "kind": current.kind, "vectors": current.n_vectors,
                "built": False}

    t0 = time.monotonic()
    scratch = layout.index_dir(collection, space) / f".build-{uuid.uuid4().hex}"  # swept if a run dies
    try:
        stacked = _gather(layout, spaces, record, live, aligned, alignment, scratch, progress=progress)
        live = live + aligned
        previous = {} if force else _previous_parts(layout, current, record)
        parts = {}
        part_summary: dict[str, Any] = {}
        budget = _part_budgets(settings.max_index_memory, {m: len(ids) for m, (ids, _) in stacked.items()})
        for modality, (ids, vecs) in stacked.items():
            recipe = choose_recipe(len(ids), record.dim, exact_threshold=settings.exact_threshold,
                                   recall_target=settings.recall_target, max_memory=budget[modality])
            others = [v for m, (_, v) in stacked.items() if m != modality]
            probes = _probe_sample(others) if others else None
            built = build_index(vecs, ids, recipe, recall_target=settings.recall_target, progress=progress,
                                probes=probes, previous=previous.get(modality), lists_dir=scratch / f"{modality}-lists")
            parts[modality] = built.part
            part_summary[modality] = {"recipe": built.recipe.to_dict(), "stats": built.stats,
                                      "max_memory": budget[modality]}
        t_cal = time.monotonic()
        calibration = calibrate(space, stacked, text_probes)
        calibration_s = round(time.monotonic() - t_cal, 3)
        return _write_and_publish(catalog, layout, collection, collection_id, space, record, fingerprint, live,
                                  aligned, alignment, parts, part_summary, t0, crash_at,
                                  {"pairs": calibration, "seconds": calibration_s, "reference": reference(stacked)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_and_publish(catalog: Catalog, layout: Layout, collection: str, collection_id: int, space: str,
                       record: Space, fingerprint: str, live: list[Any], aligned: list[Any],
                       alignment: LoadedAlignment | None, parts: dict[str, AnnPart], part_summary: dict[str, Any],
                       t0: float, crash_at: Callable[[str], None] | None, calibration: dict[str, Any]) -> dict[str, Any]:
    version = max(catalog.next_index_version(collection_id, space), _next_on_disk(layout, collection, space))
    final = layout.version_path(collection, space, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "collection": collection, "space": space, "version": version, "dim": record.dim,
        "model": record.model, "identity": record.model.get("identity"), "fingerprint": fingerprint,
        "parts": part_summary, "calibration": calibration["pairs"], "reference": calibration["reference"],
        "aligned": {"source": alignment.source, "parts": sorted({row[1] for row in aligned}), "key": alignment.key,
                    "digest": alignment.digest}
        if aligned and alignment is not None else None,
    }
    if crash_at:
        crash_at("before-index-write")
    written = write_index_dir(final, parts, manifest)
    nbytes = sum(int(f["bytes"]) for f in written["files"].values())
    kinds = sorted({p["recipe"]["kind"] for p in part_summary.values()}) or ["empty"]
    build_s = round(time.monotonic() - t0, 3)
    if crash_at:
        crash_at("before-publish")
    catalog.publish_index(
        collection_id, space, version, layout.relative(final), "+".join(kinds), len(live), nbytes, fingerprint,
        {"parts": part_summary, "aligned": manifest["aligned"],
         "calibration": {"pairs": {pair: {k: v for k, v in c.items() if k != "bias"}  # the biases: in the manifest
                                   for pair, c in calibration["pairs"].items()}, "seconds": calibration["seconds"]}}, build_s,
    )
    log.info("published %s/%s v%d: %d vectors, %s", collection, space, version, len(live), kinds)
    return {"version": version, "kind": "+".join(kinds), "vectors": len(live), "bytes": nbytes,
            "built": True, "build_s": build_s, "parts": part_summary, "calibration_s": calibration["seconds"]}
