"""Filtered search planned by selectivity: how one part is searched when a request has a filter.

The searcher counts the filter's matches in the part's modality on its column view of the metadata
(``search.columns``: exact count and ids, a vectorised pass over numpy arrays) and picks a plan:

- ``empty``: nothing matches: an empty page at once, no ANN call.
- ``exact``: at most ``exact_max`` matches (``Settings.filter_exact_max``, 4096 by default), or fewer
  than the codes a restricted search would scan over ``EXACT_COST`` (at low selectivity its raised
  nprobe reaches nlist: every code read): the matches' exact vectors (from the part's re-rank store,
  memory-mapped: only those rows are read) scored against the query. This is also the exact filtered answer (a flat part: its vectors
  reconstructed by id).
- ``ann-restricted``: the ANN search with a FAISS id selector (a bitmap over ids) keeping only the
  matches, and ``nprobe`` raised for the selectivity (nprobe / sqrt(selectivity), at most nlist: the
  filtered top 10 lie deeper in the unfiltered ranking, and the lists holding a deeper top grow more
  slowly than its depth) (a flat part: its exact scan with the selector).
- ``post-filter``: at least ``POST_SHARE`` of the part matches (or the view can't evaluate the filter):
  the search of an unfiltered query, its first round already asking for enough candidates that k of
  them match (k / selectivity x 1.25 + 16; every candidate is an exact vector read) with nprobe raised
  as above,
  filtered at hydration; it looks further (x4) while too many are filtered out.

A selective plan's relevance keeps the query's local tail in the whole part (an unfiltered search beside the
plan's own); :class:`Tails` keeps the recent ones, so a facet click or the next page does not search it again.

Every plan hydrates through SQL with the filter's condition (the truth). A selective plan whose
candidates SQL rejects (the view lagging the catalog) falls back to post-filtering for that request.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from xmodal.search.columns import ColumnView
from xmodal.search.filters import Filter
from xmodal.search.results import SearchResult
from xmodal.spaces import Route
from xmodal.storage.ann import AnnPart, FloatArray, IdArray, IdSet, ivf_of
from xmodal.storage.calibration import Relevance
from xmodal.storage.catalog import STATUS_OK, Catalog

EXACT_COST = 50  # an exact vector read and scored costs about as much as this many codes a restricted search
#                  passes (1M, queries interleaved as a server's are, caches cold: 5,000 matches scored exactly
#                  1.68x the unfiltered query, restricted at nprobe 453 1.45x; 500 exactly 1.2x. Warm, one filter
#                  again and again, it read 20: docs/benchmarks/filters.md)
RAISE = 0.5  # nprobe / selectivity ** RAISE: the filtered top 10 are the unfiltered top 10 / selectivity, and
#              the lists that hold a deeper top grow more slowly than its depth (recall measured there too)
POST_SHARE = 0.5  # at least this share of the part matching: post-filter (a first round of 2x candidates)
CACHE = 64  # matching-id sets kept per searcher (filters repeat: a shop's category pages)
TAILS = 256  # queries' local tails kept per searcher (a query repeats with another filter, sort or page)

UNFILTERED, EMPTY, EXACT, RESTRICTED, POST = "unfiltered", "empty", "exact", "ann-restricted", "post-filter"


@dataclass
class Plan:
    """How one part is searched: the plan's name, the matches the view counted (None: not evaluated),
    whether that count is exact (else an upper bound), the ids, and the nprobe a restricted search uses."""

    name: str
    matches: int | None = None
    exact_count: bool = True
    among: IdSet | None = None
    nprobe: int | None = None
    share: float | None = None  # matches / vectors in the part
    fallback: str | None = None  # why the plan changed during the request
    _first: int = 0  # the first round's candidates (first_fetch)

    @property
    def selective(self) -> bool:
        return self.name in (EXACT, RESTRICTED)

    def first_fetch(self, fetch: int, total: int, want: int) -> int:
        """Candidates the first round asks for (``fetch``: what an unfiltered search of ``want`` asks for):
        post-filtering asks for enough that ``want`` of them match, with a margin (capped at the part); the
        local tail needs no more, being fitted on the best of all candidates."""
        if self.name == POST and self.share:
            fetch = min(total, max(fetch, math.ceil(want / self.share * 1.25) + 16))
        elif self.selective and self.matches is not None:
            fetch = min(fetch, max(self.matches, 1))
        self._first = fetch
        return fetch

    def search(self, part: AnnPart, query: FloatArray, fetch: int, *, recall: float | None,
               exclude: IdArray) -> tuple[FloatArray, IdArray]:
        """One round. A later round that looks further (x4 candidates) probes more lists in proportion: the
        candidates of an IVF search come only from the lists it probes, so more candidates from the same
        lists could never reach a match that lies in another (at the whole part: every list)."""
        if self.name == EXACT:
            assert self.among is not None
            return part.search_among(query, fetch, self.among, exclude=exclude)
        nprobe = self.nprobe
        ivf = ivf_of(part.index)
        if ivf is not None and fetch > self._first:
            point = part.point_for(recall) if recall is not None else None
            base = nprobe or (int(point["nprobe"]) if point else part.recipe.nprobe)
            whole = fetch >= (self.matches if self.name == RESTRICTED and self.matches else part.ntotal)
            nprobe = int(ivf.nlist) if whole else min(int(ivf.nlist), math.ceil(base * fetch / max(self._first, 1)))
        among = self.among if self.name == RESTRICTED else None
        return part.search(query, fetch, recall=recall, nprobe=nprobe, exclude=exclude, among=among)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plan": self.name}
        if self.matches is not None:
            out["matches"] = self.matches
            out["matches_exact"] = self.exact_count
        if self.nprobe is not None:
            out["plan_nprobe"] = self.nprobe
        if self.fallback:
            out["fallback"] = self.fallback
        return out


class Planner:
    """Chooses plans for one collection's searcher, over its column view (built lazily, refreshed when
    the catalog's ``last_change`` moves) and a small cache of matching-id sets. Safe to share between
    request threads: a request works on the view it refreshed to, the cache is keyed by view version."""

    def __init__(self, exact_max: int) -> None:
        self.exact_max = exact_max
        self.view: ColumnView | None = None
        self._cache: OrderedDict[tuple[Any, ...], tuple[IdSet, bool] | None] = OrderedDict()
        self._lock = threading.Lock()

    def refresh(self, catalog: Catalog, collection_id: int) -> ColumnView:
        """The column view as the catalog has it now: built the first time, patched when it changed."""
        with self._lock:
            view = ColumnView.build(catalog, collection_id) if self.view is None else self.view.fresh(catalog)
            if self.view is not None and view.version != self.view.version:
                self._cache.clear()
            self.view = view
            return view

    def matching(self, view: ColumnView, flt: Filter, modality: str) -> tuple[IdSet, bool] | None:
        """The servable items of ``modality`` that ``flt`` matches (and whether the count is exact)."""
        key = (view.version, json.dumps(flt.spec, sort_keys=True), json.dumps(flt.fields, sort_keys=True), modality)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        found = view.matching(flt.spec, flt.fields, modality)
        value = (IdSet(found[0]), found[1]) if found is not None else None
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)
        return value

    def plan(self, catalog: Catalog, collection_id: int, part: AnnPart, flt: Filter, modality: str,
             recall: float | None) -> Plan:
        """The plan for ``flt`` in one part, on the collection's column view as the catalog has it now
        (built on the first filtered query; patched when ``last_change`` moved)."""
        found = self.matching(self.refresh(catalog, collection_id), flt, modality)
        if found is None:
            return Plan(POST)
        among, exact = found
        return choose(part, among, exact, recall, self.exact_max)


class Tails:
    """Queries' local tails (their relevance in a part: ``Relevance.of`` the best ``TAIL + 1`` of the whole part),
    kept for the requests that repeat a query with another filter, sort or page (a shop's facet click, page 2):
    every selective plan needs the tail, an unfiltered search of the whole part beside its own. The key holds
    all it depends on (route, index version, recall asked, the query vector and the ids left out), so a kept
    tail is the one the search would find again."""

    def __init__(self, size: int = TAILS) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[Any, ...], Relevance] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(route: str, version: int, recall: float | None, query: FloatArray, excluded: IdArray) -> tuple[Any, ...]:
        digest = hashlib.blake2b(query.tobytes(), digest_size=16)
        digest.update(excluded.tobytes())
        return route, version, recall, digest.digest()

    def get(self, key: tuple[Any, ...]) -> Relevance | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def put(self, key: tuple[Any, ...], relevance: Relevance) -> None:
        with self._lock:
            self._kept[key] = relevance
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)


def choose(part: AnnPart, among: IdSet, exact: bool, recall: float | None, exact_max: int) -> Plan:
    """The plan for ``among`` (the view's matches) in ``part``; see the module docstring."""
    matches, total = len(among), max(part.ntotal, 1)
    share = min(1.0, matches / total)
    if matches == 0 and exact:
        return Plan(EMPTY, 0, True, share=0.0)
    ivf = ivf_of(part.index)
    raised = None
    if ivf is not None:  # more lists, for the filtered top k lie deeper in the unfiltered ranking
        point = part.point_for(recall) if recall is not None else None
        nprobe = int(point["nprobe"]) if point else part.recipe.nprobe
        raised = min(int(ivf.nlist), math.ceil(nprobe / max(share, 1e-12) ** RAISE))
    if share >= POST_SHARE:
        return Plan(POST, matches, exact, nprobe=raised, share=share)
    if ivf is None and matches <= exact_max:  # flat: the matches' vectors read from it
        return Plan(EXACT, matches, exact, among, share=share)
    if ivf is None:  # flat: one scan with the id selector keeping only the matches, exactly
        return Plan(RESTRICTED, matches, exact, among, share=share)
    scanned = part.ntotal * (raised or 0) / int(ivf.nlist)  # codes the restricted search would read
    if (matches <= exact_max or matches * EXACT_COST <= scanned) and part.store is not None:
        return Plan(EXACT, matches, exact, among, share=share)
    return Plan(RESTRICTED, matches, exact, among, raised, share=share)


def operating_point(part: AnnPart, recall: float | None) -> dict[str, Any]:
    """How a part answers: its kind and, for an approximate one, the point used (the tuned one, or the
    measured one for the requested recall)."""
    if part.recipe.kind == "flat":
        return {"kind": "flat"}
    point = part.point_for(recall) if recall is not None else None
    return {"kind": part.recipe.kind, "nprobe": point["nprobe"] if point else part.recipe.nprobe,
            "k_factor": point["k_factor"] if point else part.recipe.k_factor,
            "probe_recall@10": point["recall@10"] if point else None}


def hydrate(catalog: Catalog, candidates: list[tuple[float, int]], exclude: set[int], where: Any, r: Route,
            relevance: Relevance | None, want: int | None) -> tuple[list[SearchResult], int]:
    """Candidates (score, id) as results, in order: the live items SQL says match ``where`` (the truth),
    the first ``want`` of them (None: all). Also how many candidates SQL rejected before the last one kept."""
    items = catalog.items([i for _, i in candidates if i not in exclude], where=where)
    results: list[SearchResult] = []
    rejected = 0
    for score, item_id in candidates:
        it = items.get(item_id)
        if it is None or item_id in exclude or it.status != STATUS_OK:
            rejected += 1
            continue
        source = {"id": it.source_id, "column": it.source_column or ""} if it.source_id is not None else None
        results.append(SearchResult(item_id, it.uri, it.modality, score, it.meta or {}, r.space, r.method,
                                    relevance(score, item_id) if relevance else None, source=source))
        if want is not None and len(results) == want:
            break
    return results, rejected
