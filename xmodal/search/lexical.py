"""Words beside vectors: a request's ``mode``, the lexical list and its fusion with the vector list.

- ``vector``: the vector search alone (the only mode of an item or media query);
- ``lexical``: the catalog's full-text index alone (``storage.catalog.lexical``): no model is loaded and
  nothing is encoded. Results carry ``method: "lexical"``, ``space: "lexical"``, and the full-text score
  in ``score`` and ``lexical`` (``-bm25`` on SQLite, ``ts_rank`` on PostgreSQL; higher is better);
- ``hybrid`` (the default of a text query on a collection whose items have words in the index): the vector
  list (targets merged as the request says) and the lexical list, each ``k + offset`` long, fused by
  reciprocal rank, ``rrf = sum 1/(60 + rank)`` (:data:`HYBRID_FUSION`). A result found by both says
  ``method: "hybrid"`` and keeps its vector score, relevance and space; one found by words only is a
  lexical result as above. The hybrid lexical list scores at most :data:`HYBRID_BOUND` matches of each
  step (all words, then any), the newest: a rare word (a SKU, a model number, a small brand) is scored
  over every match as in ``lexical`` mode, a common one ("red", a large brand) over its newest matches,
  so its cost stays fixed as the catalog grows (measured: docs/benchmarks/lexical.md). On SQLite a common
  one's newest matches come newest first, unscored (``lexical`` None): FTS5's bm25 would first count every
  match of each word (``storage.catalog.lexical.best``).

In the lexical and hybrid modes a query equal to a manifest row's source id (a SKU; case-insensitive,
surrounding spaces ignored) puts that row's items first (``exact: true``), by id. Filters (``where``) and
the target modality narrow the lexical list and the exact match as they narrow the vector search.
"""

from __future__ import annotations

from typing import Any

from xmodal.errors import UserError
from xmodal.search.results import HYBRID, LEXICAL, MODES, RRF_K, VECTOR, SearchResult
from xmodal.spaces import ANY
from xmodal.storage.catalog import Catalog, Item
from xmodal.storage.catalog.lexical import query_terms

#: a hybrid query's lexical list scores at most this many matches of its words, the newest (highest ids)
HYBRID_BOUND = 500
HYBRID_FUSION = f"rrf(k={RRF_K}) of the vector and lexical lists, exact source id first"


def choose_mode(mode: str | None, *, text: bool, has_lexical: bool) -> str:
    """The mode a request runs in: the one asked for (checked), else hybrid for a text query on a
    collection with words in the full-text index, else vector."""
    if mode is None:
        return HYBRID if text and has_lexical else VECTOR
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != VECTOR and not text:
        raise UserError(f"mode {mode!r} needs a text query: an item or media query searches by vector only "
                        "(mode 'vector', or leave it out)")
    return mode


def lexical_fusion(backend: str) -> str:
    """What a lexical-only page is ordered by."""
    return "lexical: bm25 (SQLite FTS5)" if backend == "sqlite" else "lexical: ts_rank (PostgreSQL tsvector)"


def lexical_results(catalog: Catalog, collection_id: int, text: str, *, want: int, where: Any,
                    target: str, bound: int | None = None) -> list[SearchResult]:
    """The exact source-id match first, then the best ``want`` items by their words (without repeating it);
    ``bound``: scored among the newest ``bound`` matches of each step (:data:`HYBRID_BOUND`)."""
    modality = None if target == ANY else target
    exact = [_result(it, None, exact=True) for it in catalog.items_of_source(collection_id, text, where=where,
                                                                             modality=modality)]
    seen = {r.id for r in exact}
    found = catalog.lexical_search(collection_id, query_terms(text), limit=want + len(seen), where=where,
                                   modality=modality, bound=bound)
    return exact + [_result(it, score) for it, score in found if it.id not in seen][:want]


def fuse(vector: list[SearchResult], lexical: list[SearchResult]) -> list[SearchResult]:
    """Reciprocal rank fusion of the vector list and the lexical list (exact source-id matches first, in
    their own order). A result in both keeps the vector one's fields, with its lexical score and
    ``method: "hybrid"``."""
    fused: dict[int, SearchResult] = {}
    for r in vector:
        fused.setdefault(r.id, r)
    by_id = {r.id: r for r in lexical}
    ranks: dict[int, float] = {}
    for results in (vector, [r for r in lexical if not r.exact]):
        for rank, r in enumerate(results, 1):
            ranks[r.id] = ranks.get(r.id, 0.0) + 1.0 / (RRF_K + rank)
    for item_id, lex in by_id.items():
        if item_id in fused:
            mine = fused[item_id]
            mine.lexical, mine.exact, mine.method = lex.lexical, lex.exact, "hybrid"
        else:
            fused[item_id] = lex
    for item_id, value in ranks.items():
        fused[item_id].rrf = value
    exact = [fused[r.id] for r in lexical if r.exact]
    rest = sorted((r for r in fused.values() if not r.exact), key=lambda r: (-(r.rrf or 0.0), r.id))
    return exact + rest


def _result(it: Item, score: float | None, *, exact: bool = False) -> SearchResult:
    source = {"id": it.source_id, "column": it.source_column or ""} if it.source_id is not None else None
    return SearchResult(int(it.id), it.uri, it.modality, score if score is not None else 0.0, it.meta or {},
                        LEXICAL, LEXICAL, None, source=source, lexical=score, exact=exact)
