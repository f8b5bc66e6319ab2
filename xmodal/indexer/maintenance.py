"""Keeping a collection's files and catalog in agreement: the orphan sweep every run starts with,
and ``xmodal verify`` (with ``--repair``).

What a killed run can leave behind, and what becomes of it:

* a temporary shard or index folder (``.<name>.tmp-<uuid>``): never read; swept;
* a shard file renamed into place but not recorded in the catalog (killed before the commit): never
  read (builds read only shards the catalog names), its items are still ``pending`` and are embedded
  again; swept, so that every vector is in the shards exactly once;
* an index version folder written but not published: never served; swept.

The sweep runs under the collection's lock (no other writer exists), before anything is written.
"""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.errors import UserError
from xmodal.spaces import SPACES
from xmodal.storage.catalog import STATUS_OK, Catalog
from xmodal.storage.indexfiles import read_index_dir
from xmodal.storage.layout import Layout, file_sha256
from xmodal.storage.shards import read_shard

log = logging.getLogger(__name__)



def _orphans(catalog: Catalog, layout: Layout, collection: str, collection_id: int) -> list[Path]:
    """Files and folders of the collection that no catalog row names (temporaries included)."""
    root = layout.collection_dir(collection)
    known_shards = {layout.absolute(sh.path).resolve() for sh in catalog.shard_records(collection_id)}
    known_versions = {layout.absolute(v.path).resolve() for v in catalog.index_versions(collection_id)}
    found: list[Path] = []
    shards = root / "shards"
    if shards.is_dir():
        for space_dir in sorted(p for p in shards.iterdir() if p.is_dir()):
            for path in sorted(space_dir.iterdir()):
                if path.is_file() and path.resolve() not in known_shards:
                    found.append(path)
    indexes = root / "indexes"
    if indexes.is_dir():
        for space_dir in sorted(p for p in indexes.iterdir() if p.is_dir()):
            for path in sorted(space_dir.iterdir()):
                if path.resolve() not in known_versions:
                    found.append(path)
    return found


def sweep_orphans(catalog: Catalog, layout: Layout, collection: str, collection_id: int) -> list[str]:
    """Remove what killed runs left (see the module doc); returns the removed paths, relative to the home.
    Only call this holding the collection's lock."""
    removed = []
    for path in _orphans(catalog, layout, collection, collection_id):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(layout.relative(path))
    if removed:
        log.info("removed %d files an interrupted run left behind", len(removed))
    return removed


@dataclass
class Report:
    """What ``verify`` found: problems (each a line a person can act on) and what it counted."""

    problems: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "counts": self.counts, "repaired": self.repaired}


def verify(catalog: Catalog, layout: Layout, collection: str) -> Report:
    """Catalog <-> shards <-> published index agreement for every space of ``collection``.

    Shards: each recorded shard exists with its recorded size and sha256, holds the recorded rows,
    the space's dimension and model, and the item ids the catalog places at each row. Vectors: each
    ok item has one current vector per space it is native to, none is zero or non-finite. Index: each
    space's published version loads (sha256 of every FAISS file), holds each live vector exactly once
    (no duplicate ids, no id that is not a live item) with the recorded dimension and model. Files no
    catalog row names are reported too."""
    report = Report()
    cid = catalog.collection_id(collection)
    spaces = {sp.name: sp for sp in catalog.spaces(cid)}
    shards = {sh.id: sh for sh in catalog.shard_records(cid)}
    rows_by_shard: dict[int, list[tuple[int, int]]] = {}
    for item_id, status, _space, shard_id, row, current in catalog.vector_rows(cid):
        if status == STATUS_OK and current:
            rows_by_shard.setdefault(shard_id, []).append((item_id, row))
    checked = 0
    for shard_id, shard in sorted(shards.items()):
        path = layout.absolute(shard.path)
        if not path.is_file():
            report.problems.append(f"shard {shard.path} is missing")
            continue
        if path.stat().st_size != shard.bytes or file_sha256(path) != shard.sha256:
            report.problems.append(f"shard {shard.path} does not match its recorded size and sha256")
            continue
        sp = spaces.get(shard.space)
        expect = {"space": shard.space, "dim": sp.dim, "identity": sp.model.get("identity")} if sp else None
        try:
            ids, vectors, _ = read_shard(path, expect=expect)
        except (UserError, OSError, ValueError) as exc:
            report.problems.append(f"shard {shard.path} cannot be read: {exc}")
            continue
        if ids.shape[0] != shard.rows:
            report.problems.append(f"shard {shard.path} holds {ids.shape[0]} rows, the catalog says {shard.rows}")
        for item_id, row in rows_by_shard.get(shard_id, []):
            if row >= ids.shape[0] or int(ids[row]) != item_id:
                report.problems.append(f"shard {shard.path} row {row} is not item {item_id}")
                continue
            norm = float(np.linalg.norm(vectors[row]))
            if not np.isfinite(norm) or norm < 0.5:
                report.problems.append(f"item {item_id} has a zero or non-finite vector in {shard.path} row {row}")
        checked += 1
    report.counts["shards"] = checked
    for name, sp in sorted(spaces.items()):
        lacking = catalog.items_needing_vectors(cid, name, SPACES[name].modalities if name in SPACES else (),
                                                SPACES[name].only_if if name in SPACES else ())
        if lacking:
            report.problems.append(f"{len(lacking)} ok items have no current vector in space {name} "
                                   f"(e.g. {lacking[:3]}): run `xmodal index` again")
        live = catalog.live_vectors(cid, name)
        report.counts[f"{name}_live_vectors"] = len(live)
        published = catalog.published_index(cid, name)
        if published is None:
            if live:
                report.problems.append(f"space {name} has {len(live)} live vectors but no published index")
            continue
        try:
            manifest, parts = read_index_dir(layout.absolute(published.path),
                                             expect={"space": name, "identity": sp.model.get("identity"),
                                                     "dim": sp.dim})
        except UserError as exc:
            report.problems.append(f"index {name} v{published.version}: {exc}")
            continue
        want: dict[str, set[int]] = {}
        for item_id, modality, *_ in live:
            want.setdefault(modality, set()).add(item_id)
        aligned = set((manifest.get("aligned") or {}).get("parts") or [])
        for modality, part in sorted(parts.items()):
            held = _part_ids(part)
            if held is None:
                continue
            if np.unique(held).shape[0] != held.shape[0]:
                report.problems.append(f"index {name}/{modality} holds duplicate ids")
            if modality in aligned:
                continue  # the aligned audio part is checked against the clap space's own index
            extra = set(held.tolist()) - want.get(modality, set())
            missing = want.get(modality, set()) - set(held.tolist())
            if extra:
                report.problems.append(f"index {name}/{modality} holds {len(extra)} ids that are not live items "
                                       f"(e.g. {sorted(extra)[:3]}): it is older than the catalog")
            if missing:
                report.problems.append(f"index {name}/{modality} lacks {len(missing)} live items "
                                       f"(e.g. {sorted(missing)[:3]}): run `xmodal index` or verify --repair")
        report.counts[f"{name}_index_version"] = published.version
    orphans = _orphans(catalog, layout, collection, cid)
    if orphans:
        report.problems.append(f"{len(orphans)} files no catalog row names (left by an interrupted run), e.g. "
                               f"{layout.relative(orphans[0])}")
    report.counts["orphans"] = len(orphans)
    return report


def _part_ids(part: Any) -> np.ndarray | None:
    """The ids an index part holds (from its re-rank store, or the flat id map)."""
    if part.store is not None:
        return np.asarray(part.store.ids, dtype=np.int64)
    import faiss

    index = faiss.downcast_index(part.index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return None


def repair(catalog: Catalog, layout: Layout, settings: Any, collection: str, *, progress: bool = False) -> Report:
    """What ``verify --repair`` does, under the collection's lock: remove orphan files; mark the items
    of a missing or damaged shard ``pending`` (the next ``xmodal index`` embeds them again: a vector
    can only be rebuilt from its media); rebuild every space's index from the shards. Returns the
    report of a verify run afterwards, with what was repaired."""
    from xmodal.encoders import align
    from xmodal.indexer.calibrate import text_probes
    from xmodal.indexer.lock import collection_lock
    from xmodal.indexer.publish import build_and_publish
    with collection_lock(settings.home, collection, settings.resolved_database_url):
        cid = catalog.collection_id(collection)
        done = [f"removed {p}" for p in sweep_orphans(catalog, layout, collection, cid)]
        broken = []
        for shard in catalog.shard_records(cid):
            path = layout.absolute(shard.path)
            if not path.is_file() or path.stat().st_size != shard.bytes or file_sha256(path) != shard.sha256:
                broken.append(shard.id)
                done.append(f"shard {shard.path} is missing or damaged: forgotten, its items are pending "
                            "(the next `xmodal index` embeds them again)")
                if path.is_file():
                    path.unlink()
        catalog.drop_shards(broken, "its shard was missing or damaged (verify --repair)")
        row = catalog.alignment(cid, align.SOURCE, align.TARGET)
        alignment = align.from_row(row) if row is not None else None
        for sp in sorted(catalog.spaces(cid), key=lambda sp: sp.name):
            space, record = sp.name, dict(sp.model)
            summary = build_and_publish(catalog, layout, settings, collection, cid, space,
                                        alignment=alignment if space == "clip" else None, progress=progress,
                                        force=True,
                                        text_probes=functools.partial(text_probes, layout, space, record, None))
            if summary:
                done.append(f"rebuilt index {space} from the shards: version {summary['version']}, "
                            f"{summary['vectors']} vectors")
    report = verify(catalog, layout, collection)
    report.repaired = done
    return report


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"7d"``, ``"0"`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    s = text.strip().lower()
    unit = s[-1:] if s[-1:] in units else "s"
    number = s[:-1] if s[-1:] in units else s
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UserError(f"cannot read {text!r} as a duration: use e.g. 90s, 30m, 2h or 7d")
    return value * units[unit]


def gc(catalog: Catalog, layout: Layout, settings: Any, collection: str, *, grace_s: float) -> list[str]:
    """Remove, under the collection's lock: what interrupted runs left (at once: no run is in progress);
    index versions superseded more than ``grace_s`` ago (a service may still be answering from one
    until it swaps); shards no current vector lives in any more, older than ``grace_s``. Returns what
    was removed, relative to the home."""
    from datetime import datetime, timedelta, timezone

    from xmodal.indexer.lock import collection_lock

    with collection_lock(settings.home, collection, settings.resolved_database_url):
        cid = catalog.collection_id(collection)
        removed = sweep_orphans(catalog, layout, collection, cid)
        now = datetime.now(timezone.utc)

        def older(created: datetime) -> bool:
            when = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
            return now - when > timedelta(seconds=grace_s)

        versions = sorted(catalog.index_versions(cid), key=lambda v: (v.space, v.version))
        drop_versions = []
        for v, successor in zip(versions, versions[1:], strict=False):
            # superseded at the time its successor of the same space was published
            if v.status == "superseded" and successor.space == v.space and older(successor.created_at):
                drop_versions.append(v)
        drop_shards = [sh for sh in catalog.shard_records(cid, unreferenced=True) if older(sh.created_at)]
        catalog.forget(index_version_ids=[v.id for v in drop_versions], shard_ids=[sh.id for sh in drop_shards])
        for v in drop_versions:
            shutil.rmtree(layout.absolute(v.path), ignore_errors=True)
            removed.append(v.path)
        for sh in drop_shards:
            layout.absolute(sh.path).unlink(missing_ok=True)
            removed.append(sh.path)
    log.info("gc of %s removed %d files and folders", collection, len(removed))
    return removed
