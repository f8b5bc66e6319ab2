"""An in-memory column view of a collection's filterable fields, and the filter grammar evaluated on it.

The searcher plans a filtered query by how many items the filter matches (``search.plans``). Counting
that in SQL means reading every item's JSON metadata (a scan: about a second at a million items on
either database), so the searcher keeps, per collection, the filterable values as numpy arrays aligned
to item ids: built with one streamed query on first use, patched with the rows changed since (an index
range on ``updated_at``) whenever the catalog's ``last_change`` for the collection moves. The grammar of
``search.filters`` is evaluated on these arrays to a boolean mask: the matching ids and their count.

SQL stays the truth: hydration still applies the compiled condition, so a view that lags the catalog
can cost speed (the plan falls back to post-filtering when hydration drops a candidate), never a
result that does not match.

What the view holds per metadata key: a string's code in the key's dictionary, a number as float64
(integers beyond 2**53 compare approximately), a boolean, and whether the key is present and not null.
A string key with more than ``MAX_VOCAB`` distinct values (titles, descriptions) and list fields
(tags) are not held: a condition on them is *unknown*, and the view answers with a superset (an
``and`` keeps its known conditions) marked inexact, or nothing (then the plan post-filters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from xmodal.search.filters import COLUMNS
from xmodal.storage.catalog import STATUS_OK, Catalog, Item

log = logging.getLogger(__name__)

MAX_VOCAB = 65_536  # distinct strings of one key held; beyond, the key is not filterable in the view
LAG = timedelta(seconds=60)  # rows changed this long before the last stamp are read again (late commits)
BATCH = 20_000  # rows per fetch of the streamed query

Mask = npt.NDArray[np.bool_]


@dataclass
class _Column:
    """One key's values, by the view's row: string codes (-1: not a string), numbers (NaN: not a number),
    booleans (-1 none, 0, 1), presence (key there and not null)."""

    codes: npt.NDArray[np.int32]
    numbers: npt.NDArray[np.float64]
    bools: npt.NDArray[np.int8]
    present: Mask
    vocab: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    lists: bool = False  # some value is a list: list conditions are unknown here
    too_many: bool = False  # more than MAX_VOCAB strings: string conditions are unknown here

    @classmethod
    def empty(cls, n: int) -> _Column:
        return cls(np.full(n, -1, np.int32), np.full(n, np.nan), np.full(n, -1, np.int8), np.zeros(n, bool))

    def copy(self, n: int) -> _Column:
        """A copy grown to ``n`` rows (new rows hold nothing)."""
        grow = n - self.codes.shape[0]
        return _Column(np.concatenate([self.codes, np.full(grow, -1, np.int32)]),
                       np.concatenate([self.numbers, np.full(grow, np.nan)]),
                       np.concatenate([self.bools, np.full(grow, -1, np.int8)]),
                       np.concatenate([self.present, np.zeros(grow, bool)]),
                       list(self.vocab), dict(self.index), self.lists, self.too_many)

    def clear(self, rows: npt.NDArray[np.int64]) -> None:
        self.codes[rows] = -1
        self.numbers[rows] = np.nan
        self.bools[rows] = -1
        self.present[rows] = False

    def put(self, row: int, value: Any) -> None:
        if value is None:
            return
        self.present[row] = True
        if isinstance(value, bool):  # before int: a bool is an int in Python
            self.bools[row] = int(value)
        elif isinstance(value, int | float):
            self.numbers[row] = float(value)
        elif isinstance(value, str):
            code = self.index.get(value)
            if code is None:
                if len(self.vocab) >= MAX_VOCAB:
                    self.too_many = True
                    return
                code = self.index[value] = len(self.vocab)
                self.vocab.append(value)
            self.codes[row] = code
        elif isinstance(value, list):
            self.lists = True

    def strings(self, test: Any) -> Mask | None:
        """Rows whose string passes ``test`` (a vectorised predicate on an array of strings)."""
        if self.too_many:
            return None
        if not self.vocab:
            return np.zeros(self.codes.shape[0], bool)
        lut = np.append(np.asarray(test(np.asarray(self.vocab, dtype=str)), dtype=bool), False)
        return lut[self.codes]  # code -1 reads the appended False


@dataclass
class ColumnView:
    """A collection's items as arrays aligned to ``ids`` (sorted): servable or not, modality, source id,
    and each metadata key. ``stamp``: the catalog's ``last_change`` the view reflects."""

    collection_id: int
    ids: npt.NDArray[np.int64]
    ok: Mask
    columns: dict[str, _Column]  # metadata keys, plus "modality" and "source_id" under "\0" names
    stamp: datetime | None = None
    version: int = 0  # bumped at every patch: a key for what callers cache from the view
    built_ms: float = 0.0

    @classmethod
    def build(cls, catalog: Catalog, collection_id: int) -> ColumnView:
        t0 = time.perf_counter()
        stamp = catalog.last_change(collection_id)
        view = cls(collection_id, np.empty(0, np.int64), np.empty(0, bool), {}).patched(
            _rows(catalog, collection_id, None), stamp)
        view.built_ms = (time.perf_counter() - t0) * 1000
        log.info("column view of collection %d: %d items in %.0f ms", collection_id, len(view.ids), view.built_ms)
        return view

    def fresh(self, catalog: Catalog) -> ColumnView:
        """This view, or a patched copy when the catalog changed since (one index lookup when it did not)."""
        stamp = catalog.last_change(self.collection_id)
        if stamp == self.stamp:
            return self
        since = self.stamp - LAG if self.stamp is not None else None
        return self.patched(_rows(catalog, self.collection_id, since), stamp)

    def patched(self, rows: Iterable[tuple[int, str, str, str | None, dict[str, Any] | None]],
                stamp: datetime | None) -> ColumnView:
        """A copy with ``rows`` (id, status, modality, source id, meta) written in: changed items replaced,
        new ones added. The old view is left as it was (a query holding it keeps a consistent view)."""
        n = self.ids.shape[0]
        new = ColumnView(self.collection_id, self.ids.copy(), self.ok.copy(),
                         {k: c.copy(n) for k, c in self.columns.items()}, stamp, self.version + 1, self.built_ms)
        chunk: list[tuple[Any, ...]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= BATCH:
                new._apply(chunk)
                chunk = []
        if chunk:
            new._apply(chunk)
        return new

    def _apply(self, batch: list[tuple[Any, ...]]) -> None:
        """Write ``batch`` into this view's arrays (a view being built: nobody else holds it yet)."""
        new_ids = np.asarray([r[0] for r in batch], dtype=np.int64)
        if len(self.ids):
            pos = np.minimum(np.searchsorted(self.ids, new_ids), len(self.ids) - 1)
            added = np.unique(new_ids[self.ids[pos] != new_ids])
        else:
            added = np.unique(new_ids)
        if added.shape[0]:
            unsorted = bool(len(self.ids)) and added[0] < self.ids[-1]
            self.ids = np.concatenate([self.ids, added])
            self.ok = np.concatenate([self.ok, np.zeros(added.shape[0], bool)])
            self.columns = {k: c.copy(self.ids.shape[0]) for k, c in self.columns.items()}
            if unsorted:  # an id below the largest held (rare): keep the rows sorted by id
                order = np.argsort(self.ids, kind="stable")
                self.ids, self.ok = self.ids[order], self.ok[order]
                self.columns = {k: _reordered(c, order) for k, c in self.columns.items()}
        n = self.ids.shape[0]
        at = np.searchsorted(self.ids, new_ids)
        for c in self.columns.values():
            c.clear(at)
        ok, columns = self.ok, self.columns
        for row, (_, status, modality, source_id, meta) in zip(at.tolist(), batch, strict=True):
            ok[row] = status == STATUS_OK
            for key, value in ((_MODALITY, modality), (_SOURCE, source_id), *(meta or {}).items()):
                column = columns.get(key)
                if column is None:
                    column = columns[key] = _Column.empty(n)
                column.put(row, value)

    def matching(self, spec: Any, fields: dict[str, str], modality: str | None = None) -> tuple[npt.NDArray[np.int64],
                                                                                                bool] | None:
        """The servable items (of ``modality``) that ``spec`` matches, and whether that is exact (False: a
        superset, some condition being unknown here); None when the view can't narrow it at all."""
        mask, exact = _Eval(self, {**fields, **COLUMNS}).node(spec)
        if mask is None:
            return None
        mask = mask & self.ok
        if modality is not None:
            kind = self.columns.get(_MODALITY)
            of_kind = kind.strings(lambda v: v == modality) if kind is not None else None
            mask = mask & of_kind if of_kind is not None else np.zeros_like(mask)
        return self.ids[mask], exact


_MODALITY = "\0modality"
_SOURCE = "\0source_id"


def _reordered(c: _Column, order: npt.NDArray[np.int64]) -> _Column:
    return replace(c, codes=c.codes[order], numbers=c.numbers[order], bools=c.bools[order], present=c.present[order])


def _rows(catalog: Catalog, collection_id: int, since: datetime | None) -> Iterable[tuple[Any, ...]]:
    q = select(Item.id, Item.status, Item.modality, Item.source_id, Item.meta).where(
        Item.collection_id == collection_id)
    if since is not None:
        q = q.where(Item.updated_at >= since)
    with catalog.Session() as s:
        for row in s.execute(q.execution_options(yield_per=BATCH)):
            yield int(row[0]), row[1], row[2], row[3], row[4]


_NUMBER = {"eq": np.equal, "gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}


class _Eval:
    """The grammar of ``search.filters`` (already validated there) on a view: (mask, exact), where a
    mask of None means "unknown here" (every row may match)."""

    def __init__(self, view: ColumnView, fields: dict[str, str]) -> None:
        self.view = view
        self.fields = fields
        self.n = view.ids.shape[0]

    def node(self, spec: dict[str, Any]) -> tuple[Mask | None, bool]:
        if "field" in spec:
            mask = self.leaf(spec["field"], spec["op"], spec["value"])
            return mask, mask is not None
        ((key, value),) = spec.items()
        if key == "not":
            inner, exact = self.node(value)
            return (~inner, True) if inner is not None and exact else (None, False)
        parts = [self.node(v) for v in value]
        exact = all(e for _, e in parts)
        masks = [m for m, _ in parts if m is not None]
        if key == "and":
            return (np.logical_and.reduce(masks) if masks else None), exact
        if len(masks) < len(parts):  # or: one unknown branch makes the whole unknown
            return None, False
        return np.logical_or.reduce(masks), exact

    def leaf(self, name: str, op: str, value: Any) -> Mask | None:
        kind = self.fields[name]
        positive = {"ne": "eq", "nin": "in"}.get(op, op)
        mask = self.positive(name, kind, positive, value)
        if mask is None:
            return None
        return ~mask if positive != op or (op == "exists" and not value) else mask

    def positive(self, name: str, kind: str, op: str, value: Any) -> Mask | None:
        if name in COLUMNS and op == "exists":
            return np.ones(self.n, bool)  # a column is always there (as in SQL)
        if name == "id":
            return self.ordered(self.view.ids, op, value)
        if name == "uri":
            return None  # not held (long strings): post-filtered
        column = self.view.columns.get({"modality": _MODALITY, "source_id": _SOURCE}.get(name, name))
        if column is None:  # no item has the key
            return np.zeros(self.n, bool)
        if op == "exists":
            return column.present.copy()
        if kind == "list":
            return None
        if kind == "boolean":
            want = [int(v) for v in (value if op == "in" else [value])]
            return np.isin(column.bools, want)
        if kind in ("integer", "number"):
            return self.ordered(column.numbers, op, value)
        # strings: compare the dictionary (code point order, as SQL's BINARY / COLLATE "C"), read by code
        if op == "in":
            return column.strings(lambda v: np.isin(v, [str(x) for x in value]))
        if op == "range":
            return column.strings(lambda v: np.logical_and.reduce([_NUMBER[b](v, x) for b, x in value.items()]))
        return column.strings(lambda v: _NUMBER[op](v, value))

    def ordered(self, values: npt.NDArray[Any], op: str, value: Any) -> Mask:
        with np.errstate(invalid="ignore"):
            if op == "in":
                return np.isin(values, np.asarray(value, dtype=values.dtype))
            if op == "range":
                return np.logical_and.reduce([_NUMBER[b](values, v) for b, v in value.items()])
            return np.asarray(_NUMBER[op](values, value), dtype=bool)
