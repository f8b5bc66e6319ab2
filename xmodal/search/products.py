"""Products, not items: one result per manifest row (its source id), for ``group_by: "source"``.

- **Default.** ``source`` for a collection more than half of whose servable items came from a manifest (they
  have a source id), else ``none``: the item results of :meth:`Searcher.run`, unchanged.
- **Candidates.** The item search (any mode, target and filters) is asked for ``(k + offset) x`` the
  collection's items per product ``+ 8`` items; while they hold fewer than ``k + offset`` distinct products
  and the list was not exhausted, it is asked again for 4x as many, up to ``MAX_K`` (1000) items: a bounded
  look further. ``k`` and ``offset`` count products. An item without a source id (a folder's) is a product
  of its own.
- **An item's value** is what its page is ordered by: ``rrf`` when lists were fused by reciprocal rank
  (hybrid, ``fusion: "rrf"``, uncalibrated targets), else the calibrated ``relevance`` (target lists merged by
  it), else the raw ``score`` (one list, one target: in raw-score order, as relevance is not quite, an item's
  bias taken off; lexical: the full-text score). :data:`BASES` names them.
- **Fusion.** Best item (default): a product's ``score`` is its best candidate's value. ``group_weights``
  (``{"image": 0.7, "title": 0.3}``, keyed by source column or modality): each candidate counts under its
  column when that is weighted, else under its modality (so ``image`` covers the columns ``front`` and
  ``back`` of images, and a folder item, which has no column); ``score = sum(w[key] * the best value among
  the row's candidates under key)``; a key with none among the candidates counts the lowest value of all
  candidates (what an item outside the pool scored at most), so a product is not helped by a column that
  did not match (relevance can be negative).
- **Order.** Rows that hold an exact source-id match first, then ``score`` descending, the best item's raw
  score descending, then source id (folder items after, by id): stable across pages.
- **More like an item**, grouped: the item's own row is left out, as more like a row leaves its row out.

A product: ``source_id``, ``score``, ``relevance`` (its best item's), ``exact``, ``columns`` (each column's
best value: the terms of the sum), ``best`` (the item that matched best: id, modality, column, score,
relevance, segment if any, links), ``items`` (every servable item of the row: id, modality, column, links)
and ``metadata`` (the row's manifest fields; a folder item's own metadata).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xmodal.errors import UserError
from xmodal.search.engine import MAX_K, Searcher
from xmodal.search.results import GROUPS, LEXICAL, SearchOutcome, SearchResult
from xmodal.spaces import MODALITIES
from xmodal.storage.catalog import Catalog, Item
from xmodal.storage.catalog.products import SourceCounts

SOURCE, NONE = GROUPS
BASES = {"rrf": "reciprocal-rank value (rrf)", "relevance": "calibrated relevance",
         "score": "raw score (lexical: full-text score)"}
MAX_WEIGHTS = 32
MAX_WEIGHT = 1000.0
_ROUND_GROWTH = 4
_MARGIN = 8

_counts: weakref.WeakKeyDictionary[Catalog, dict[int, tuple[Any, SourceCounts, list[str]]]] = (
    weakref.WeakKeyDictionary())


def item_links(item_id: int, modality: str, segment: dict[str, float] | None = None) -> dict[str, str | None]:
    """An item's media and thumbnail links, as every result and item body gives them: an image's thumbnail,
    or a video's frame in the middle of its matched ``segment`` (of the video, without one)."""
    thumbnail = f"/v1/items/{item_id}/thumbnail"
    if modality == "video" and segment:
        thumbnail += f"?t={round((segment['start_s'] + segment['end_s']) / 2, 1):g}"
    return {"media_url": f"/v1/items/{item_id}/media",
            "thumbnail_url": thumbnail if modality in ("image", "video") else None}


def source_counts(catalog: Catalog, collection_id: int) -> tuple[SourceCounts, list[str]]:
    """How the collection's items divide into rows, and its media columns: counted again only when an item
    changed since (one index lookup)."""
    stamp = catalog.last_change(collection_id)
    known = _counts.setdefault(catalog, {})
    hit = known.get(collection_id)
    if hit is None or hit[0] != stamp:
        hit = (stamp, catalog.source_counts(collection_id), catalog.source_columns(collection_id))
        known[collection_id] = hit
    return hit[1], hit[2]


def choose_group(catalog: Catalog, collection_id: int, group_by: str | None) -> str:
    """The grouping a request runs with: the one asked for (checked), else ``source`` for a collection whose
    items mostly came from a manifest, else ``none``."""
    if group_by is not None:
        if group_by not in GROUPS:
            raise UserError(f"unknown group_by {group_by!r}; choose one of {', '.join(GROUPS)}")
        return group_by
    counts, _ = source_counts(catalog, collection_id)
    return SOURCE if counts.items and 2 * counts.manifest_items > counts.items else NONE


def check_weights(weights: dict[str, Any] | None, columns: list[str]) -> dict[str, float] | None:
    """``group_weights`` checked: known columns (or modalities), finite numbers in [0, 1000], one above 0."""
    if weights is None:
        return None
    if not isinstance(weights, dict) or not weights or len(weights) > MAX_WEIGHTS:
        raise UserError(f"group_weights: give 1 to {MAX_WEIGHTS} columns, each with a weight")
    known = set(columns) | set(MODALITIES)
    out: dict[str, float] = {}
    for name, w in weights.items():
        if name not in known:
            raise UserError(f"group_weights: unknown column {name!r}; this collection's columns: "
                            f"{', '.join(columns) or 'none'} (an item without one counts under its modality)")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
            raise UserError(f"group_weights: {name!r} must be a number from 0 to {MAX_WEIGHT:g}, not {w!r}")
        out[name] = float(w)
    if not any(out.values()):
        raise UserError("group_weights: at least one weight must be above 0")
    return out


@dataclass
class Grouped:
    """A search's answer: the item search's outcome, and with ``group_by: "source"`` the page of products."""

    outcome: SearchOutcome  # none: the page itself; source: the candidates' (timings summed over rounds)
    group_by: str
    products: list[dict[str, Any]] | None = None
    fusion: str | None = None  # how a product's score came from its items
    candidates: int = 0  # items considered
    rounds: int = 0  # item searches run to fill the page

    def group(self) -> dict[str, Any] | None:
        if self.products is None:
            return None
        return {"by": self.group_by, "fusion": self.fusion, "candidates": self.candidates, "rounds": self.rounds}

    def results(self, item_result: Any) -> list[dict[str, Any]]:
        """The page as JSON: products, or each item result through ``item_result`` (the caller's hydration)."""
        return self.products if self.products is not None else [item_result(r) for r in self.outcome.results]


def search(searcher: Searcher, *, group_by: str | None, group_weights: dict[str, Any] | None = None,
           k: int = 10, offset: int = 0, item: int | None = None, window: int | None = None,
           arrange: Callable[[list[SearchResult]], list[SearchResult]] | None = None, **run: Any) -> Grouped:
    """``Searcher.run`` (``run``: its other arguments), grouped by source row when asked or by default.
    ``window``: at least this many item candidates; ``arrange``: reorders the ranked products by their best
    items (a sort: ``search.browse``) before the page is cut."""
    chosen = choose_group(searcher.catalog, searcher.collection_id, group_by)
    if chosen == NONE:
        if group_weights is not None:
            raise UserError("group_weights needs group_by 'source' (--group source): one result per product")
        return Grouped(searcher.run(k=k, offset=offset, item=item, window=window, arrange=arrange, **run), NONE)
    counts, columns = source_counts(searcher.catalog, searcher.collection_id)
    weights = check_weights(group_weights, columns)
    if not 1 <= k + offset <= MAX_K or k < 1 or offset < 0:
        raise UserError(f"k must be at least 1 and k + offset at most {MAX_K}, not k={k}, offset={offset}")
    own = _own_row(searcher.catalog, item)
    want = k + offset
    ask = min(MAX_K, max(math.ceil(want * counts.per_source) + _MARGIN, window or 0))
    rounds = 0
    spent = [0.0, 0.0, 0.0]
    while True:
        outcome = searcher.run(k=ask, offset=0, item=item, **run)
        rounds += 1
        t = outcome.timings
        spent = [spent[0] + t.encode_ms, spent[1] + t.ann_ms, spent[2] + t.sql_ms]
        groups = _group(outcome.results, own)
        if len(groups) >= want or len(outcome.results) < ask or ask >= MAX_K:
            break
        ask = min(MAX_K, ask * _ROUND_GROWTH)
    outcome.timings.encode_ms, outcome.timings.ann_ms, outcome.timings.sql_ms = spent
    basis = _basis(outcome)
    floor = min((_value(r, basis) for r in outcome.results), default=0.0)
    ranked = sorted((_Product(key, members, basis, weights, floor) for key, members in groups.items()),
                    key=_Product.order)
    if arrange is not None:
        by_best = {p.best.id: p for p in ranked}
        ranked = [by_best[r.id] for r in arrange([p.best for p in ranked])]
    t0 = time.perf_counter()
    page = ranked[offset:want]
    rows = searcher.catalog.items_of_sources(searcher.collection_id,
                                             [p.source_id for p in page if p.source_id is not None])
    outcome.timings.sql_ms += (time.perf_counter() - t0) * 1000
    fusion = (f"best item by {BASES[basis]}" if weights is None else
              f"weighted sum of each column's best {BASES[basis]}: "
              + ", ".join(f"{w:g} x {c}" for c, w in weights.items()))
    return Grouped(outcome, SOURCE, [p.as_dict(rows.get(p.source_id or "")) for p in page], fusion,
                   len(outcome.results), rounds)


def listed(catalog: Catalog, collection_id: int, outcome: SearchOutcome) -> Grouped:
    """A browse's page as products: each listed item (one per row, ``Catalog.browse_ids(by_source=True)``)
    stands for its row, with no score."""
    page = [_Product(key, members, "score", None, 0.0) for key, members in _group(outcome.results, None).items()]
    rows = catalog.items_of_sources(collection_id, [p.source_id for p in page if p.source_id is not None])
    return Grouped(outcome, SOURCE, [p.as_dict(rows.get(p.source_id or "")) for p in page], "listed by filters and "
                   "sort: no score", len(outcome.results), 0)


def _own_row(catalog: Catalog, item: int | None) -> str | None:
    """More like an item, grouped: the item's own row is not an answer."""
    if item is None:
        return None
    found = catalog.items([item]).get(item)
    return found.source_id if found is not None else None


def _group(results: list[SearchResult], own: str | None) -> dict[tuple[str, int], list[SearchResult]]:
    """Candidates by row, in page order: ("source id", 0) for a manifest item, ("", item id) for a folder item."""
    out: dict[tuple[str, int], list[SearchResult]] = {}
    for r in results:
        sid = r.source["id"] if r.source is not None else None
        if sid is not None and sid == own:
            continue
        out.setdefault((sid, 0) if sid is not None else ("", r.id), []).append(r)
    return out


def _basis(outcome: SearchOutcome) -> str:
    if outcome.fusion is not None and "rrf" in outcome.fusion:
        return "rrf"
    if outcome.fusion is not None and "relevance" in outcome.fusion and outcome.mode != LEXICAL and outcome.results \
            and all(r.relevance is not None for r in outcome.results):
        return "relevance"  # lists merged by relevance; one list is in raw-score order, and so are its products
    return "score"


def _value(r: SearchResult, basis: str) -> float:
    v = r.rrf if basis == "rrf" else r.relevance if basis == "relevance" else r.score
    return float(v) if v is not None else 0.0  # an exact match found by words only has no rrf: it leads anyway


def _column(r: SearchResult) -> str:
    return (r.source or {}).get("column") or r.modality


class _Product:
    def __init__(self, key: tuple[str, int], members: list[SearchResult], basis: str,
                 weights: dict[str, float] | None, floor: float) -> None:
        self.source_id = key[0] if key[1] == 0 else None
        self.key = key
        self.basis = basis
        self.columns: dict[str, float] = {}
        for r in members:
            c = _column(r)
            self.columns[c] = max(self.columns.get(c, -math.inf), self.value(r))
        self.best = max(members, key=lambda r: (r.exact, self.value(r), r.score, -r.id))
        self.exact = any(r.exact for r in members)
        if weights is None:
            self.score = self.value(self.best)
        else:  # an item counts under its column when that is weighted, else under its modality
            terms: dict[str, float] = {}
            for c, v in self.columns.items():
                name = c if c in weights else next((r.modality for r in members if _column(r) == c), c)
                terms[name] = max(terms.get(name, -math.inf), v)
            self.score = sum(w * terms.get(name, floor) for name, w in weights.items())

    def value(self, r: SearchResult) -> float:
        return _value(r, self.basis)

    def order(self) -> tuple[Any, ...]:
        return (not self.exact, -self.score, -self.best.score, self.source_id is None, self.key)

    def as_dict(self, row: list[Item] | None) -> dict[str, Any]:
        b = self.best
        best: dict[str, Any] = {"id": b.id, "modality": b.modality, "column": (b.source or {}).get("column"),
                "score": round(b.score, 6), "relevance": b.relevance, "space": b.space, "method": b.method,
                "segment": b.segment, "lexical": round(b.lexical, 6) if b.lexical is not None else None,
                "segments": b.segments,
                **item_links(b.id, b.modality, b.segment)}
        if row:
            items = [{"id": int(it.id), "modality": it.modality, "column": it.source_column,
                      **item_links(int(it.id), it.modality)} for it in row]
            metadata = dict(row[0].source_meta or {})
        else:  # a folder item (or a row whose other items went since the search)
            items = [{"id": b.id, "modality": b.modality, "column": best["column"], **item_links(b.id, b.modality)}]
            metadata = dict(b.metadata)
        return {"source_id": self.source_id, "score": round(self.score, 6), "relevance": b.relevance,
                "exact": self.exact, "columns": {c: round(v, 6) for c, v in sorted(self.columns.items())},
                "best": best, "items": items, "metadata": metadata}
