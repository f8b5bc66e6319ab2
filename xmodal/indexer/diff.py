"""The diff stage: the planner's decisions (``indexer.plan``) applied to the catalog by a run, or reported
by a dry run. Both read the same states and ask the same planner, so a dry run says what a run will do
(``tests/indexer/test_dry_run.py`` compares them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xmodal.config import Settings
from xmodal.errors import UserError
from xmodal.indexer.manifest import ManifestReader, read_manifest
from xmodal.indexer.models import RunModels
from xmodal.indexer.plan import (
    CHANGED,
    FAILED,
    MISSING,
    NEW,
    RETRY,
    REVIVED,
    UNCHANGED,
    UNFINISHED,
    Decision,
    Plan,
    assign_spaces,
    compact,
    plan_entries,
    plan_files,
    refuse_links_out,
)
from xmodal.indexer.scan import FileEntry, Scan, scan
from xmodal.spaces import SPACES
from xmodal.storage.catalog import STATUS_DELETED, STATUS_FAILED, Catalog, ItemOutcome, ItemState

BATCH = 5000  # manifest entries inserted (or given new metadata) per transaction while the manifest streams


def _missing(catalog: Catalog | None, collection_id: int | None, spaces: Iterable[str]) -> dict[int, list[str]]:
    """Ok items of the collection whose current content has no vector in one of ``spaces``."""
    missing: dict[int, list[str]] = {}
    if catalog is None or collection_id is None:
        return missing
    for space in spaces:
        for item_id in catalog.items_needing_vectors(collection_id, space, SPACES[space].modalities,
                                                   SPACES[space].only_if):
            missing.setdefault(item_id, []).append(space)
    return missing


# folders ----------------------------------------------------------------------------------------------


def decide_files(catalog: Catalog | None, collection_id: int | None, models: RunModels, sources: list[Path], *,
                 retry_failed: bool, follow_external: bool, progress: bool = False,
                 ) -> tuple[Plan, list[FileEntry], Scan]:
    """Scan the sources and decide for every file; nothing is written."""
    found = Scan()
    entries: list[FileEntry] = []
    walk = scan(sources, found.unlisted, follow_external=follow_external, found=found)
    first = next(walk, None)  # the sources are checked here: a bad one's error comes alone, with no bar
    bar = tqdm(desc="scan", unit=" files", disable=not progress)  # left on screen: what was found
    for entry in ([first] if first is not None else []):
        entries.append(entry)
        bar.update()
    for entry in walk:
        entries.append(entry)
        bar.update()
    bar.refresh()
    bar.close()
    states = catalog.item_states(collection_id) if catalog is not None and collection_id is not None else {}
    active = models.active({e.modality for e in entries if e.error is None})
    plan = plan_files(entries, states, _missing(catalog, collection_id, active), retry_failed=retry_failed,
                      roots=[os.path.abspath(s) for s in sources], unlisted=found.unlisted)
    assign_spaces(plan, active, models.why_not)
    return plan, entries, found


def apply_files(catalog: Catalog, collection_id: int, models: RunModels, sources: list[Path], summary: Any, *,
                retry_failed: bool, follow_external: bool, progress: bool) -> Plan:
    """Decide, then write what the decisions say: new items inserted (ids for the work), deleted ones
    marked, failures recorded. Returns the plan, whose work the run embeds."""
    plan, entries, found = decide_files(catalog, collection_id, models, sources, retry_failed=retry_failed,
                                        follow_external=follow_external, progress=progress)
    catalog.record_roots(collection_id, found.roots)
    summary.scanned = len(entries)
    summary.skipped = dict(found.skipped)
    summary.unlisted = found.unlisted
    summary.warnings += [f"not walked: {d} links to a folder outside the sources "
                         "(XMODAL_FOLLOW_EXTERNAL_SYMLINKS=true walks it)" for d in found.refused]
    fresh = [d for d in (*plan.work, *plan.failed) if d.item_id is None]
    ids = catalog.add_items(collection_id, [(d.key, d.modality) for d in fresh])
    for d in fresh:
        d.item_id = ids[d.key]
    if plan.deletes:
        catalog.set_status(plan.deletes, STATUS_DELETED)
    _record_failures(catalog, plan, summary)
    summary.new = len(fresh)
    summary.deleted = len(plan.deletes)
    summary.unchanged = plan.counts[UNCHANGED]
    return plan


def _record_failures(catalog: Catalog, plan: Plan, summary: Any) -> None:
    summary.still_failed = sum(plan.still_failed.values())
    summary.still_failed_reasons = [{"reason": r, "count": n} for r, n in plan.still_failed.most_common()]
    catalog.record_outcomes([ItemOutcome(d.item_id, STATUS_FAILED, d.reason, None, d.size, d.mtime_ns, d.source)
                             for d in plan.failed if d.item_id is not None])
    summary.failed += len(plan.failed)
    summary.failures += [(d.label, d.reason or "") for d in plan.failed]


# manifests --------------------------------------------------------------------------------------------


def decide_manifest(catalog: Catalog | None, collection_id: int | None, models: RunModels, reader: ManifestReader,
                    *, retry_failed: bool, follow_external: bool, applier: _Applier | None = None,
                    ) -> tuple[Plan, list[tuple[str, str]]]:
    """Stream the manifest and decide for every entry (``applier``: a run's, writing as decisions come);
    returns the plan and the roots of its local files (folders named, links followed by permission)."""
    states = catalog.manifest_states(collection_id) if catalog is not None and collection_id is not None else {}
    missing = _missing(catalog, collection_id, models.records)
    plan = Plan()
    folders: set[str] = set()
    for d in plan_entries(reader, states, missing, retry_failed=retry_failed, plan=plan, folders=folders):
        if applier is not None:
            applier.take(d)
    if applier is not None:
        applier.finish()
    active = models.active({d.modality for d in plan.work})
    assign_spaces(plan, active, models.why_not)
    roots = compact(folders) + refuse_links_out(plan, follow_external)
    return plan, roots


class _Applier:
    """A manifest run's writes while the manifest streams: new entries inserted in batches (their ids are
    the work's), moved media shown at once, metadata-only changes written in place (vector kept)."""

    def __init__(self, catalog: Catalog, collection_id: int) -> None:
        self.catalog = catalog
        self.collection_id = collection_id
        self.fresh: list[Decision] = []
        self.moved: list[Decision] = []
        self.metadata: list[Decision] = []

    def take(self, d: Decision) -> None:
        if d.item_id is None:
            self.fresh.append(d)
        elif d.moved:
            self.moved.append(d)
        if d.metadata and d.previous is not None:
            self.metadata.append(d)
        if len(self.fresh) >= BATCH or len(self.metadata) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.fresh:
            entries = [(d.key, d.uri, d.modality, d.entry.source_id, d.entry.column) for d in self.fresh
                       if d.entry is not None]
            ids = self.catalog.add_source_items(self.collection_id, entries)
            for d in self.fresh:
                d.item_id = ids[d.key]
            self.fresh = []
        if self.metadata:
            self.catalog.update_source_meta([_meta_outcome(d) for d in self.metadata])
            self.metadata = []

    def finish(self) -> None:
        self.flush()
        # media that moved (a new URL): the row shows it at once; its digest only moves with the outcome
        self.catalog.move_source_items([(d.item_id, d.uri, d.modality) for d in self.moved if d.item_id is not None])


def _meta_outcome(d: Decision) -> ItemOutcome:
    st: ItemState = d.previous  # type: ignore[assignment]
    return ItemOutcome(st.id, st.status, st.reason, st.content_hash, st.size, None, d.source)


def apply_manifest(catalog: Catalog, collection_id: int, models: RunModels, reader: ManifestReader, summary: Any, *,
                   retry_failed: bool, follow_external: bool) -> Plan:
    """Stream a manifest against the catalog's manifest items: insert, re-embed (new media), update metadata
    in place (same media), delete what left it; returns the plan, whose work the run embeds.

    An entry's digest and metadata are written with its outcome (a shard commit, a failure, an unchanged
    content), never before: a run killed in between leaves the old digest, and the next run sees the
    same change again. New items are inserted without a digest for the same reason."""
    plan, roots = decide_manifest(catalog, collection_id, models, reader, retry_failed=retry_failed,
                                  follow_external=follow_external, applier=_Applier(catalog, collection_id))
    if plan.deletes:
        catalog.set_status(plan.deletes, STATUS_DELETED)
    _record_failures(catalog, plan, summary)
    catalog.record_roots(collection_id, roots)
    report, removals = reader.report, plan.removals
    assert removals is not None
    counts = manifest_counts(plan)
    summary.scanned = report.entries
    summary.new, summary.deleted, summary.unchanged = counts["inserted"], len(plan.deletes), counts["unchanged"]
    summary.manifest = {
        "path": str(reader.path), "format": reader.format, "rows": report.rows, "entries": report.entries,
        **counts, "deleted": len(plan.deletes), "kept": len(removals.kept), "held": len(removals.held),
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
    return plan


def manifest_counts(plan: Plan) -> dict[str, int]:
    """A manifest plan in the manifest's terms: rows inserted, media updated, metadata updated, unchanged."""
    return {"inserted": plan.counts[NEW] + plan.counts[REVIVED], "updated": plan.counts[CHANGED],
            "metadata_updated": len(plan.metadata),
            "unchanged": plan.counts[UNCHANGED] - sum(1 for d in plan.metadata if d.kind == UNCHANGED)}


# dry runs ---------------------------------------------------------------------------------------------


def _read_only(settings: Settings, collection: str) -> tuple[Catalog | None, int | None]:
    """The catalog (read only) and the collection's id, or Nones: a new data dir or collection has neither."""
    try:
        catalog = Catalog(settings.resolved_database_url, create=False)
    except UserError:
        return None, None
    try:
        return catalog, catalog.collection_id(collection)
    except UserError:
        catalog.close()
        return None, None


def plan_sources(settings: Settings, sources: Iterable[Path], collection: str, *, retry_failed: bool = False,
                 limit: int = 20) -> dict[str, Any]:
    """What ``xmodal index`` would do, without doing any of it (``--dry-run``): the run's own decisions,
    read only; nothing is written, no model is loaded (their names are resolved), no lock is taken.
    ``changed`` files are hashed by the run: only a new content hash means a new vector."""
    catalog, cid = _read_only(settings, collection)
    try:
        models = RunModels(settings, collection, catalog.spaces(cid) if catalog and cid else [])
        plan, entries, found = decide_files(catalog, cid, models, list(sources), retry_failed=retry_failed,
                                            follow_external=settings.follow_external_symlinks)
    finally:
        if catalog is not None:
            catalog.close()
    c = plan.counts
    out = {"collection": collection, "dry_run": True, "collection_exists": cid is not None, "scanned": len(entries),
           "new": c[NEW] + c[REVIVED], "changed": c[CHANGED], "unfinished": c[UNFINISHED], "retry": c[RETRY],
           "missing_vectors": c[MISSING], "unchanged": c[UNCHANGED], "unreadable": c[FAILED],
           "deleted": len(plan.deletes), "examples": _examples(plan, limit), "unlisted": found.unlisted,
           "skipped": dict(found.skipped),
           "not_walked": found.refused, "plan": plan.summary()}
    out["would_rebuild_index"] = bool(plan.work or plan.deletes)
    return out


def plan_manifest(settings: Settings, manifest: Path, collection: str, *, media: dict[str, str | None] | None = None,
                  column_types: dict[str, str] | None = None, retry_failed: bool = False,
                  limit: int = 20, lexical: list[str] | None = None) -> dict[str, Any]:
    """What ``xmodal index --manifest`` would do (``--dry-run``): the run's own decisions, read only.
    ``updated`` entries have new media (fetched and embedded again), ``metadata_updated`` only new
    metadata (written in place, the vector kept); ``lexical_fields`` the columns the words would come from
    (None: every string column), ``would_refill_words`` whether a new ``lexical`` choice rewrites them."""
    reader = read_manifest(manifest, media=media, column_types=column_types)
    fields = reader.lexical_fields(lexical) if lexical is not None else None
    catalog, cid = _read_only(settings, collection)
    try:
        models = RunModels(settings, collection, catalog.spaces(cid) if catalog and cid else [])
        recorded = catalog.lexical_fields(cid) if catalog is not None and cid is not None else None
        plan, _ = decide_manifest(catalog, cid, models, reader, retry_failed=retry_failed,
                                  follow_external=settings.follow_external_symlinks)
    finally:
        if catalog is not None:
            catalog.close()
    report, removals = reader.report, plan.removals
    assert removals is not None
    c = plan.counts
    out: dict[str, Any] = {
        "collection": collection, "dry_run": True, "collection_exists": cid is not None, "manifest": str(manifest),
        "rows": report.rows, "entries": report.entries, **manifest_counts(plan), "unfinished": c[UNFINISHED],
        "retry": c[RETRY], "missing_vectors": c[MISSING], "failed": c[FAILED], "deleted": len(plan.deletes),
        "held": len(removals.held), "kept": len(removals.kept), "problem_count": report.problem_count,
        "problems": [str(p) for p in report.problems[:limit]],
        "examples": {**_examples(plan, limit), **({"deleted": plan.deleted[:limit]} if plan.deleted else {})},
        "plan": plan.summary(),
        "lexical_fields": fields if lexical is not None else recorded,
        "would_refill_words": lexical is not None and cid is not None and fields != recorded,
    }
    out["would_rebuild_index"] = bool(plan.work or plan.deletes)
    return out


def _examples(plan: Plan, limit: int) -> dict[str, list[str]]:
    out = {k: sorted(v)[:limit] for k, v in plan.examples.items() if v and k != UNCHANGED}
    if plan.deleted:
        out["deleted"] = sorted(plan.deleted)[:limit]
    return out
