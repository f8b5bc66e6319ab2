"""Diffing a manifest against the catalog: inserts, media updates, metadata-only updates, deletes.

The catalog holds each entry's key and content digest. :class:`ManifestDiffer` classifies entries one
at a time as they stream by; deletes are decided only at the end, from the keys not seen, and only
when the :class:`ReadReport` of the pass says the whole file was read and every skipped row was
identified (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from xmodal.indexer.manifest.entry import ManifestEntry, split_digest
from xmodal.indexer.manifest.reader import ManifestReader
from xmodal.indexer.manifest.report import ReadReport
from xmodal.storage.uris import parse_key

Change = Literal["insert", "update", "metadata", "unchanged"]


@dataclass
class ManifestDiff:
    """What changed between the catalog's entries (key -> digest) and a manifest."""

    inserts: list[ManifestEntry] = field(default_factory=list)
    updates: list[ManifestEntry] = field(default_factory=list)  # media changed: fetch and embed again
    metadata_updates: list[ManifestEntry] = field(default_factory=list)  # only metadata changed
    unchanged: int = 0
    deletes: list[str] = field(default_factory=list)  # keys gone from the manifest: safe to delete
    kept: list[str] = field(default_factory=list)  # keys of rows the reader skipped: leave as they are
    held: list[str] = field(default_factory=list)  # keys that look deleted, held back (see ManifestDiffer)


@dataclass(frozen=True)
class Removals:
    deletes: list[str]
    kept: list[str]
    held: list[str]


class ManifestDiffer:
    """Classify a manifest's entries one at a time against ``old`` (key -> content digest).

    For manifests too large to hold: the caller applies inserts and updates as they stream by and
    asks :meth:`finish` for the deletes only once the whole manifest was read (a manifest that
    fails half-way must delete nothing). Memory: the keys seen.
    """

    def __init__(self, old: Mapping[str, str]) -> None:
        self._old = old
        self._seen: set[str] = set()

    def classify(self, entry: ManifestEntry) -> Change:
        key = entry.key
        if key in self._seen:
            raise ValueError(f"entry {key!r} was given twice")
        self._seen.add(key)
        before = self._old.get(key)
        if before is None:
            return "insert"
        now = entry.content_digest()
        if before == now:
            return "unchanged"
        old_media, _ = split_digest(before)
        return "metadata" if len(before) == len(now) and old_media == entry.media_digest else "update"

    def finish(self, report: ReadReport | None = None) -> Removals:
        """The old keys not seen, split into deletes, kept (their row was skipped) and held.

        With a ``report`` of the pass that produced the entries: keys whose id was skipped are kept,
        and when any skipped row could not be identified every delete is held instead (the missing
        key could be on that row). A report of a pass that did not finish holds every delete.
        """
        deletes: list[str] = []
        kept: list[str] = []
        for key in self._old:
            if key in self._seen:
                continue
            if report is not None and report.skipped_ids:
                try:
                    source_id, _ = parse_key(key)
                except ValueError:
                    source_id = None
                if source_id in report.skipped_ids:
                    kept.append(key)
                    continue
            deletes.append(key)
        deletes.sort()
        kept.sort()
        if report is not None and (report.unidentified_rows or not report.complete):
            return Removals([], kept, deletes)
        return Removals(deletes, kept, [])


def diff_entries(old: Mapping[str, str], new: Iterable[ManifestEntry], *,
                 report: ReadReport | None = None) -> ManifestDiff:
    """Every change at once (see :class:`ManifestDiffer` for the streaming form).

    When ``new`` is a :class:`ManifestReader` its report is used after iterating it, unless
    ``report`` is given.
    """
    differ = ManifestDiffer(old)
    diff = ManifestDiff()
    lists = {"insert": diff.inserts, "update": diff.updates, "metadata": diff.metadata_updates}
    for entry in new:
        change = differ.classify(entry)
        if change == "unchanged":
            diff.unchanged += 1
        else:
            lists[change].append(entry)
    if report is None and isinstance(new, ManifestReader):
        report = new.report
    removals = differ.finish(report)
    diff.deletes, diff.kept, diff.held = removals.deletes, removals.kept, removals.held
    return diff
