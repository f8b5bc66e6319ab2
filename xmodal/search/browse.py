"""Browsing, sorting, facets and totals: what a page says besides its results.

- **Browse**: a request with filters (or a sort, or facets) and no query lists the matching ``ok`` items in
  SQL, sorted by ``sort`` then by id (by id alone without one), ``k`` from ``offset``: ``mode: "browse"``,
  results with ``space: "catalog"``, ``method: "browse"`` and no score (0).
- **Sort** (``[{"field": "price", "order": "asc"}, ...]``, at most :data:`MAX_SORT_KEYS` keys): fields are the
  collection's filterable metadata fields that hold one value (not lists) and ``id``. A missing value (or one
  of another JSON type) sorts last in either order; strings by code point. Browsing sorts every match in SQL.
  With a query, the sort reorders the best :data:`SORT_WINDOW` results by relevance (after the cutoff and
  the filters), ties kept in relevance order: the window does not depend on ``offset``, so sorted pages
  are consistent.
- **Facets** (``["brand", "tags"]``, at most :data:`MAX_FACETS`): per field, the :data:`FACET_VALUES` most
  frequent values with their counts (ties by value) and ``other``, what the remaining values count
  together; a list field counts each element. Counted in SQL over what the request matches: every
  matching item when browsing or in lexical mode; for a vector or hybrid query the candidate window the
  sort uses (the best :data:`SORT_WINDOW` by relevance, after the cutoff).
- **Totals**: ``total`` with ``total_exact``, and ``has_more`` (``offset + k < total``, or an estimate).
  Browse and lexical count every match (exact). A vector or hybrid query counts the results inside its
  window (``k + offset``, or :data:`SORT_WINDOW` with a sort or facets) that pass the cutoff, estimated
  (``total_exact: false``, ``has_more: true``) when the window was full.

Counting takes ``by_source``: products (distinct source ids, an item without one counting as itself)
instead of items. :func:`find` is the one entry of HTTP and the CLI: with ``group_by: "source"`` (the default
of a manifest collection, ``search.products``) a query's page is products (a sort reorders them by their
rows' fields, their best items' values), a browse lists one row per product (its first matching item), and
totals and facets count products.
"""

from __future__ import annotations

import decimal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_

from xmodal.errors import UserError
from xmodal.search import products
from xmodal.search.engine import MAX_K, Searcher
from xmodal.search.filters import COLUMNS, Filter, field_value, list_elements
from xmodal.search.results import LEXICAL, SORT_WINDOW, SearchOutcome, SearchResult, Timings
from xmodal.spaces import ANY, TARGETS
from xmodal.storage.catalog import Item

Grouped = products.Grouped
SOURCE, NONE = products.SOURCE, products.NONE

BROWSE = "browse"
FACET_VALUES = 20  # values listed per facet; the rest are counted together as "other"
MAX_SORT_KEYS = 4
MAX_FACETS = 8
ORDERS = ("asc", "desc")
assert SORT_WINDOW <= MAX_K  # one search fetches the whole window
QUERY_KEYS = ("text", "item", "media", "image", "image_bytes", "audio", "audio_bytes")  # Searcher.run's queries


@dataclass(frozen=True)
class SortKey:
    field: str
    order: str = "asc"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "order": self.order}


@dataclass
class Page:
    """A page of results and what it says about the rest (see the module docstring)."""

    outcome: SearchOutcome
    total: int
    total_exact: bool
    has_more: bool
    counted: str  # "matches": every matching item; "window": the candidate window
    window: int | None = None  # a query's window: the best results by relevance the page was cut from
    sort: list[SortKey] = field(default_factory=list)
    facets: dict[str, dict[str, Any]] | None = None
    grouped: Grouped | None = None  # a query's page of products (group_by source: ``search.products``)

    @property
    def group_by(self) -> str:
        return self.grouped.group_by if self.grouped is not None else NONE

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "total_exact": self.total_exact, "has_more": self.has_more,
                "counted": self.counted, "window": self.window,
                "sort": [s.as_dict() for s in self.sort] or None, "facets": self.facets,
                "group_by": self.group_by, "group": self.grouped.group() if self.grouped is not None else None}

    def results(self, item_result: Callable[[SearchResult], dict[str, Any]]) -> list[dict[str, Any]]:
        """The page as JSON: products, or each item result through ``item_result`` (the caller's hydration)."""
        if self.grouped is not None:
            return self.grouped.results(item_result)
        return [item_result(r) for r in self.outcome.results]


def sortable(fields: dict[str, str]) -> list[str]:
    """The fields a page may be sorted by: ``id`` and the metadata fields holding one value."""
    return ["id", *sorted(name for name, kind in fields.items() if kind != "list" and name not in COLUMNS)]


def sort_keys(spec: Sequence[Any] | None, fields: dict[str, str]) -> list[SortKey]:
    """``sort`` checked against the collection's ``fields`` (metadata name -> type): ``{"field", "order"}``
    objects or :class:`SortKey`; a problem raises ``UserError`` naming the sortable fields."""
    if not spec:
        return []
    if len(spec) > MAX_SORT_KEYS:
        raise UserError(f"sort: at most {MAX_SORT_KEYS} keys, not {len(spec)}")
    known = sortable(fields)
    keys = []
    for i, raw in enumerate(spec):
        well_formed = isinstance(raw, dict) and "field" in raw and set(raw) <= {"field", "order"}
        key = raw if isinstance(raw, SortKey) else SortKey(**raw) if well_formed else None
        if key is None:
            raise UserError(f"sort[{i}]: expected {{\"field\": ..., \"order\": \"asc\" or \"desc\"}}")
        if key.field not in known:
            what = "is a list" if fields.get(key.field) == "list" else "is not a field of this collection"
            raise UserError(f"sort[{i}].field: {key.field!r} {what}; sortable fields: {', '.join(known)}")
        if key.order not in ORDERS:
            raise UserError(f"sort[{i}].order: {key.order!r}; choose asc or desc")
        keys.append(key)
    return keys


def facet_names(names: Sequence[str] | None, fields: dict[str, str]) -> list[str]:
    """``facets`` checked against the collection's metadata ``fields`` (and ``modality``)."""
    if not names:
        return []
    if len(names) > MAX_FACETS:
        raise UserError(f"facets: at most {MAX_FACETS} fields, not {len(names)}")
    known = sorted(name for name in fields if name not in COLUMNS) + ["modality"]
    for i, name in enumerate(names):
        if name not in known:
            raise UserError(f"facets[{i}]: {name!r} is not a field of this collection; fields: {', '.join(known)}")
    return list(dict.fromkeys(names))


def find(searcher: Searcher, *, fields: dict[str, str], where: Any = None, sort: Sequence[Any] | None = None,
         facets: Sequence[str] | None = None, group_by: str | None = None,
         group_weights: dict[str, Any] | None = None, k: int = 10, offset: int = 0, target: str = ANY,
         mode: str | None = None, **options: Any) -> Page:
    """A page of a query (``options``: ``Searcher.run``'s query and options) or, with no query, of a browse:
    sorted, with facets and totals. ``fields``: the collection's filterable fields (metadata name -> type).
    ``group_by``: source (products: ``search.products``; totals and facets count them) or none (items);
    the default comes from the collection."""
    keys = sort_keys(sort, fields)
    names = facet_names(facets, fields)
    by_source = products.choose_group(searcher.catalog, searcher.collection_id, group_by) == SOURCE
    if not any(options.get(q) is not None for q in QUERY_KEYS):
        cut = [name for name in ("min_relevance", "min_score") if options.get(name) is not None]
        if cut:
            raise UserError(f"{cut[0]} needs a query: a browse (filters and no query) has no relevance")
        if group_weights is not None:
            raise UserError("group_weights needs a query: a browse has no scores to weigh")
        return _browse(searcher, fields, where, keys, names, by_source, k, offset, target, mode)
    seen: list[int] = []
    window = SORT_WINDOW if keys or (names and mode != LEXICAL) else None

    def arrange(results: list[SearchResult]) -> list[SearchResult]:
        seen.extend(r.id for r in results)
        return _sorted(searcher, results, keys, fields) if keys else results

    grouped = None
    if by_source:  # products: the candidates are counted, the products' best items sorted
        grouped = products.search(searcher, group_by=SOURCE, group_weights=group_weights, k=k, offset=offset,
                                  where=where, target=target, mode=mode, window=window,
                                  arrange=(lambda rs: _sorted(searcher, rs, keys, fields)) if keys else None,
                                  **options)
        outcome = grouped.outcome
        seen.extend(r.id for r in outcome.results)
    else:
        if group_weights is not None:
            raise UserError("group_weights needs group_by 'source' (--group source): one result per product")
        outcome = searcher.run(k=k, offset=offset, where=where, target=target, mode=mode, window=window,
                               arrange=arrange, **options)
    t0 = time.perf_counter()
    catalog, cid = searcher.catalog, searcher.collection_id
    if outcome.mode == LEXICAL:  # every match counts, as the index finds them
        scope = _scope(where, target, catalog.words_match(cid, str(options["text"])))
        total, exact, counted = catalog.count_items(cid, where=scope, by_source=by_source), True, "matches"
    else:
        scope = Item.id.in_(seen)
        total = catalog.count_items(cid, where=scope, by_source=True) if by_source else outcome.considered
        exact, counted = outcome.considered < outcome.window, "window"
    counts = _facets(searcher, names, fields, scope, by_source) if names else None
    outcome.timings.sql_ms += (time.perf_counter() - t0) * 1000
    return Page(outcome, total, exact, offset + k < total or not exact, counted, outcome.window, keys, counts,
                grouped)


def _scope(where: Any, target: str, *more: Any) -> Any:
    """One SQL condition: the filter's (a prepared ``Filter``'s condition), the target and ``more``."""
    conditions = [c.condition if isinstance(c, Filter) else c for c in (where, *more) if c is not None]
    if target != ANY:
        conditions.append(Item.modality == target)
    return and_(*conditions) if conditions else None


def _browse(searcher: Searcher, fields: dict[str, str], where: Any, keys: list[SortKey], names: list[str],
            by_source: bool, k: int, offset: int, target: str, mode: str | None) -> Page:
    if where is None and not keys and not names:
        raise UserError("give a query (a text, an item or media), or filters, a sort or facets to browse")
    if mode is not None:
        raise UserError(f"mode {mode!r} needs a query: a browse (filters and no query) has no mode")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if k < 1 or offset < 0 or k + offset > MAX_K:
        raise UserError(f"k must be at least 1 and k + offset at most {MAX_K}, not k={k}, offset={offset}")
    catalog, cid = searcher.catalog, searcher.collection_id
    t0 = time.perf_counter()
    scope = _scope(where, target)
    kinds = {**fields, **COLUMNS}
    order = []
    for key in keys:
        value = field_value(key.field, kinds[key.field], catalog.backend)
        order.append((value.desc() if key.order == "desc" else value.asc()).nulls_last())
    ids = catalog.browse_ids(cid, where=scope, order_by=order, limit=k, offset=offset, by_source=by_source)
    items = catalog.items(ids)
    results = [_listed(items[i]) for i in ids if i in items]
    total = catalog.count_items(cid, where=scope, by_source=by_source)
    counts = _facets(searcher, names, fields, scope, by_source) if names else None
    versions = searcher.versions_loaded()
    outcome = SearchOutcome(results, Timings(), versions.get(searcher.primary, 0), versions, [], None, mode=BROWSE,
                            considered=total)
    grouped = products.listed(searcher.catalog, searcher.collection_id, outcome) if by_source else None
    outcome.timings.sql_ms = (time.perf_counter() - t0) * 1000
    return Page(outcome, total, True, offset + k < total, "matches", None, keys, counts, grouped)


def _listed(it: Item) -> SearchResult:
    source = {"id": it.source_id, "column": it.source_column or ""} if it.source_id is not None else None
    return SearchResult(int(it.id), it.uri, it.modality, 0.0, it.meta or {}, "catalog", BROWSE, source=source)


def _sorted(searcher: Searcher, results: list[SearchResult], keys: list[SortKey],
            fields: dict[str, str]) -> list[SearchResult]:
    """``results`` ordered by ``keys`` (values as SQL reads them: typed, missing last), ties in their order."""
    kinds = {**fields, **COLUMNS}
    catalog = searcher.catalog
    values = catalog.sort_values([r.id for r in results],
                                 [field_value(key.field, kinds[key.field], catalog.backend) for key in keys])
    out = list(results)
    for i in reversed(range(len(keys))):  # stable sorts, last key first
        def value(r: SearchResult, i: int = i) -> Any:
            return values.get(r.id, (None,) * len(keys))[i]
        present = sorted((r for r in out if value(r) is not None), key=value, reverse=keys[i].order == "desc")
        out = present + [r for r in out if value(r) is None]
    return out


def _facets(searcher: Searcher, names: list[str], fields: dict[str, str], scope: Any,
            by_source: bool) -> dict[str, dict[str, Any]]:
    catalog, cid = searcher.catalog, searcher.collection_id
    kinds = {**fields, **COLUMNS}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        keep: Any = None
        joined: Any = None
        if kinds[name] == "list":
            value, keep, joined = list_elements(name, catalog.backend)
        else:
            value = field_value(name, kinds[name], catalog.backend)
        top, other = catalog.facet_counts(cid, value, where=scope, keep=keep, joined=joined, by_source=by_source,
                                          limit=FACET_VALUES)
        out[name] = {"values": [{"value": _plain(v, kinds[name]), "count": n} for v, n in top], "other": other}
    return out


def _plain(value: Any, kind: str) -> Any:
    """A facet value as JSON has it (PostgreSQL hands numbers back as Decimal)."""
    if isinstance(value, decimal.Decimal):
        return int(value) if kind == "integer" else float(value)
    return value

