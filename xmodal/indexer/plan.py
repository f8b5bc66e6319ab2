"""What an index run will do, decided once: the one diff behind ``xmodal index`` and ``--dry-run``.

The planner compares what the sources hold (scanned files, or a manifest's entries) with the catalog,
read only, and makes one :class:`Decision` per file or entry; a run applies them (inserts items,
records failures and metadata, decodes and embeds the work, deletes what left) and a dry run counts
them. Both call the same functions, so a dry run says what the run will do.

Kinds of decision:

- work (decoded, and embedded unless its bytes hash to what is already embedded): ``new`` (not in the
  catalog), ``revived`` (deleted before, back now), ``changed`` (a file's size or time moved; a manifest
  entry's media changed, or its local file changed in place), ``unfinished`` (a run stopped before its
  outcome), ``retry`` (failed before; tried again on ``--retry-failed``, when a model it lacked may be
  there now, or after a temporary fetch failure), ``missing_vectors`` (ok, but without a vector in a
  space this run embeds into: decoded for those spaces only);
- no work: ``unchanged``; ``failed`` (can't be read as a file, links out of the sources, or no model of
  this run embeds its modality: recorded failed with the reason); a manifest's ``metadata_updated``
  entries also have their new metadata written in place (their vector kept), work or not.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xmodal.indexer.decode import TEMPORARY_FAILURE, UNKNOWN
from xmodal.indexer.manifest import ManifestDiffer, ManifestEntry, ManifestReader, Removals
from xmodal.indexer.models import UNAVAILABLE
from xmodal.indexer.scan import OUTSIDE, FileEntry, under_roots
from xmodal.media.fetch import is_remote
from xmodal.media.types import modality_for_uri
from xmodal.spaces import MODALITIES, native
from xmodal.storage.catalog import STATUS_DELETED, STATUS_FAILED, STATUS_OK, ItemState, SourceFields
from xmodal.storage.uris import is_under, uri_to_path

NEW, REVIVED, CHANGED, UNFINISHED, RETRY, MISSING = "new", "revived", "changed", "unfinished", "retry", "missing_vectors"
UNCHANGED, FAILED = "unchanged", "failed"
WORK = (NEW, REVIVED, CHANGED, UNFINISHED, RETRY, MISSING)
KINDS = (*WORK, UNCHANGED, FAILED)


@dataclass
class Decision:
    kind: str
    key: str  # the catalog key: a file's URI, or a manifest entry's key
    uri: str  # what to read or fetch (a manifest's inline text: its key)
    modality: str  # image | text | audio, or UNKNOWN (a URL that names no type)
    label: str  # how reports name it: the file's URI, or ``id#column (uri)``
    item_id: int | None = None  # None until a new item is inserted
    previous: ItemState | None = None
    spaces: tuple[str, ...] = ()  # work: the spaces it gets a vector in (empty: every space of its modality)
    known_hash: str | None = None  # content already embedded: bytes that hash to it need no new vector
    reason: str | None = None  # failed: why
    size: int | None = None
    mtime_ns: int | None = None
    entry: ManifestEntry | None = None  # a manifest's entry
    moved: bool = False  # a manifest entry's media URI changed: the row shows the new one at once
    metadata: bool = False  # a manifest entry's metadata changed: written in place

    @property
    def work(self) -> bool:
        return self.kind in WORK

    @property
    def source(self) -> SourceFields | None:
        return SourceFields(self.entry.content_digest(), self.entry.metadata) if self.entry is not None else None

    @property
    def remote(self) -> bool:
        return self.entry is not None and self.entry.uri is not None and is_remote(self.entry.uri)

    @property
    def text(self) -> str | None:
        return self.entry.text if self.entry is not None else None


@dataclass
class Plan:
    """Decisions gathered: the work and failures in full, the rest counted (with a few examples)."""

    examples_limit: int = 20
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    work: list[Decision] = field(default_factory=list)
    failed: list[Decision] = field(default_factory=list)
    metadata: list[Decision] = field(default_factory=list)  # manifest entries whose metadata is written in place
    deletes: list[int] = field(default_factory=list)  # items that left the sources
    deleted: list[str] = field(default_factory=list)  # their keys
    removals: Removals | None = None  # a manifest's deletes, kept and held keys
    still_failed: Counter[str] = field(default_factory=Counter)  # unchanged items that stay failed, by reason

    def add(self, d: Decision) -> None:
        self.counts[d.kind] += 1
        if d.kind == UNCHANGED and d.previous is not None and d.previous.status == STATUS_FAILED:
            self.still_failed[d.previous.reason or ""] += 1
        shown = self.examples.setdefault(d.kind, [])
        if len(shown) < self.examples_limit:
            shown.append(d.label)
        if d.work:
            self.work.append(d)
        elif d.kind == FAILED:
            self.failed.append(d)
        if d.metadata:
            self.metadata.append(d)

    def fail(self, d: Decision, reason: str) -> None:
        """Turn a decision into a failure (its modality has no model, it links out) and count it so."""
        self.counts[d.kind] -= 1
        if d in self.work:
            self.work.remove(d)
        d.kind, d.reason, d.spaces = FAILED, reason, ()
        self.counts[FAILED] += 1
        self.failed.append(d)

    def summary(self) -> dict[str, Any]:
        return {**{k: self.counts.get(k, 0) for k in KINDS}, "deleted": len(self.deletes),
                "still_failed": sum(self.still_failed.values()),
                "examples": {k: v for k, v in self.examples.items() if v and k != UNCHANGED}}


# folders ----------------------------------------------------------------------------------------------


def plan_files(entries: list[FileEntry], states: dict[str, ItemState], missing: dict[int, list[str]],
               *, retry_failed: bool, roots: list[str], unlisted: list[str], plan: Plan | None = None) -> Plan:
    """Decide for every scanned file, and which catalog items left the scanned roots (deleted files;
    folders that could not be listed keep theirs). ``missing``: ok items without a vector in a space.
    The work's spaces are the caller's to assign (:func:`assign_spaces`)."""
    plan = plan or Plan()
    for e in entries:
        st = states.get(e.uri)
        d = Decision(UNCHANGED, e.uri, e.path, e.modality, e.uri, st.id if st else None, st, size=e.size,
                     mtime_ns=e.mtime_ns)
        if e.error is not None:  # a broken link, a pipe, a link out of the sources: nothing to read
            plan.add(_failed(d, e.error))
            continue
        same = st is not None and (st.size, st.mtime_ns) == (e.size, e.mtime_ns)
        if same and st is not None and st.status == STATUS_OK and st.id in missing:
            d.kind, d.spaces = MISSING, tuple(missing[st.id])  # only the spaces it lacks: decode again
        elif same and st is not None and (st.status == STATUS_OK or (st.status == STATUS_FAILED
                                                                      and not _retry(st, retry_failed))):
            d.kind = UNCHANGED
        else:
            d.kind = _work_kind(st, same)
            d.known_hash = st.content_hash if st is not None and st.status == STATUS_OK else None
        plan.add(d)
    seen = {e.uri for e in entries}
    gone = [uri for uri, st in states.items() if st.status != STATUS_DELETED and uri not in seen
            and under_roots(uri, roots) and not under_roots(uri, unlisted)]
    plan.deletes = [states[uri].id for uri in gone]
    plan.deleted = gone
    return plan


def _work_kind(st: ItemState | None, same_stat: bool) -> str:
    if st is None:
        return NEW
    if st.status == STATUS_DELETED:
        return REVIVED
    if not same_stat:
        return CHANGED
    return RETRY if st.status == STATUS_FAILED else UNFINISHED


def _failed(d: Decision, reason: str) -> Decision:
    """A failure, or ``unchanged`` when the item already failed so with the same file (not retried)."""
    st = d.previous
    if st is not None and st.status == STATUS_FAILED and st.reason == reason and (
            (st.size, st.mtime_ns) == (d.size, d.mtime_ns)):
        d.kind = UNCHANGED
    else:
        d.kind, d.reason = FAILED, reason
    return d


def _retry(st: ItemState, retry_failed: bool) -> bool:
    """Whether a failed item is tried again: asked to, or its failure may not recur (no model then, a
    fetch timeout or 5xx)."""
    return retry_failed or (st.reason or "").startswith((UNAVAILABLE, TEMPORARY_FAILURE))


def assign_spaces(plan: Plan, active: list[str], why_not: Callable[[str], str] | None = None) -> Plan:
    """Each work decision's spaces: those it lacks (``missing_vectors``), else every active space that
    embeds its modality natively, or what a file of that kind may turn out to hold (a video's sound only: audio),
    all of them for a type still unknown. Work no active space embeds is
    failed with the reason (retried by the first run that can embed it)."""
    for d in list(plan.work):
        if d.kind == MISSING:
            continue
        may_be = (d.modality, *MODALITIES[d.modality].may_be) if d.modality in MODALITIES else ()
        d.spaces = tuple(sp for sp in active if d.modality == UNKNOWN or any(native(sp, m) for m in may_be))
        if not d.spaces:
            plan.fail(d, why_not(d.modality) if why_not else f"{UNAVAILABLE}no model embeds {d.modality}")
    return plan


def modalities_of(plan: Plan) -> set[str]:
    return {d.modality for d in plan.work}


# manifests --------------------------------------------------------------------------------------------


def manifest_differ(states: dict[str, ItemState]) -> ManifestDiffer:
    """A differ against the collection's live manifest entries: a deleted one, or one never finished
    (no digest yet), reads as new."""
    return ManifestDiffer({k: st.source_digest for k, st in states.items()
                           if st.status != STATUS_DELETED and st.source_digest})


def plan_entries(reader: ManifestReader, states: dict[str, ItemState], missing: dict[int, list[str]], *,
                 retry_failed: bool, plan: Plan, folders: set[str]) -> Iterator[Decision]:
    """Decide for every manifest entry as the reader streams them (yielded, so that a run can insert new
    items in batches); afterwards ``plan`` holds the decisions and the deletes. ``folders`` collects the
    real folders of the local files the manifest names."""
    differ = manifest_differ(states)
    for entry in reader:
        change = differ.classify(entry)
        st = states.get(entry.key)
        modality = "text" if entry.text is not None else (entry.modality or modality_for_uri(entry.uri or "")
                                                            or UNKNOWN)
        uri = entry.uri or entry.key
        label = f"{entry.source_id}#{entry.column} ({uri})" if entry.uri else uri
        size, mtime = _local_stat(entry, folders)
        d = Decision(UNCHANGED, entry.key, uri, modality, label, st.id if st else None, st, size=size, mtime_ns=mtime,
                     entry=entry)
        if st is None:
            d.kind = NEW
        elif change in ("insert", "update"):  # back after a delete, never finished, or new media
            d.kind = REVIVED if st.status == STATUS_DELETED or change == "insert" else CHANGED
            d.moved = True
            d.known_hash = st.content_hash if change == "update" and st.status == STATUS_OK else None
        else:
            d.metadata = change == "metadata"
            moved = size is not None and (size, mtime) != (st.size, st.mtime_ns)
            if st.status == STATUS_OK and st.id in missing:
                d.kind, d.spaces = MISSING, tuple(missing[st.id])
            elif moved and st.status in (STATUS_OK, STATUS_FAILED):  # a local file changed in place
                d.kind = CHANGED
                d.known_hash = st.content_hash if st.status == STATUS_OK else None
            elif st.status not in (STATUS_OK, STATUS_FAILED):
                d.kind = UNFINISHED
            elif st.status == STATUS_FAILED and _retry(st, retry_failed):
                d.kind = RETRY
        plan.add(d)
        yield d
    plan.removals = differ.finish(reader.report)
    plan.deleted = [k for k in plan.removals.deletes if states[k].status != STATUS_DELETED]
    plan.deletes = [states[k].id for k in plan.deleted]


def _local_stat(entry: ManifestEntry, folders: set[str]) -> tuple[int | None, int | None]:
    """(size, mtime) of a local file entry (-1, -1 when it can't be stat'ed: decoding says why)."""
    if entry.uri is None or is_remote(entry.uri):
        return None, None
    path = uri_to_path(entry.uri)
    folders.add(os.path.realpath(os.path.dirname(os.path.abspath(path))))
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def refuse_links_out(plan: Plan, follow_external: bool) -> list[tuple[str, str]]:
    """A manifest's local file that is a symlink out of the folder it names is followed only by permission,
    like one out of a scanned folder: failed otherwise. Returns the targets followed (roots)."""
    followed: list[tuple[str, str]] = []
    for d in list(plan.work):
        if d.remote or d.text is not None or not os.path.islink(d.uri):
            continue
        target = os.path.realpath(d.uri)
        if is_under(target, [os.path.realpath(os.path.dirname(os.path.abspath(d.uri)))]):
            continue
        if follow_external:
            followed.append((target, "link"))
        else:
            plan.fail(d, OUTSIDE)
    return followed


def compact(folders: Iterable[str]) -> list[tuple[str, str]]:
    """The manifest's folders as roots, without those already under another."""
    kept: list[str] = []
    for f in sorted(folders):
        if not is_under(f, kept):
            kept.append(f)
    return [(f, "manifest") for f in kept]
