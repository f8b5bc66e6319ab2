"""Catalog queries for browsing: matching items in a stated order, how many match, and counts per value.

The caller (``search.browse``) builds the conditions and the typed field values (``search.filters``: the
per-dialect JSON access lives there, once); these queries add the collection and ``ok`` status and run them.

Counting takes ``by_source``: count products rather than items, i.e. distinct source ids, an item without
one (a file, not a manifest row) counting as itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, case, cast, func, select, true

from xmodal.storage.catalog.engine import CatalogBase
from xmodal.storage.catalog.tables import STATUS_OK, Item


def _how_many(source_id: Any, by_source: bool) -> Any:
    """COUNT(*), or the number of products: distinct source ids plus the items that have none."""
    if not by_source:
        return func.count()
    return func.count(source_id.distinct()) + func.coalesce(func.sum(case((source_id.is_(None), 1), else_=0)), 0)


class FacetQueries(CatalogBase):
    """Browsing, totals and facet counts over a collection's ``ok`` items."""

    @staticmethod
    def _scope(collection_id: int, where: Any) -> list[Any]:
        conditions = [Item.collection_id == collection_id, Item.status == STATUS_OK]
        return conditions if where is None else [*conditions, where]

    def browse_ids(self, collection_id: int, *, where: Any = None, order_by: Sequence[Any] = (), limit: int,
                   offset: int = 0, by_source: bool = False) -> list[int]:
        """Ids of the collection's ``ok`` items matching ``where``, in ``order_by`` then by id, from ``offset``;
        ``by_source``: one per product, its first matching item (an item without a source id is its own)."""
        scope = self._scope(collection_id, where)
        if by_source:
            row = func.coalesce(Item.source_id, cast(Item.id, String))
            scope.append(Item.id.in_(select(func.min(Item.id)).where(*scope).group_by(row)))
        q = select(Item.id).where(*scope).order_by(*order_by, Item.id.asc()).limit(limit).offset(offset)
        with self.Session() as s:
            return [int(i) for i in s.scalars(q)]

    def count_items(self, collection_id: int, *, where: Any = None, by_source: bool = False) -> int:
        """How many ``ok`` items (or products, ``by_source``) of the collection match ``where``."""
        q = select(_how_many(Item.source_id, by_source)).where(*self._scope(collection_id, where))
        with self.Session() as s:
            return int(s.execute(q).scalar_one() or 0)

    def facet_counts(self, collection_id: int, value: ColumnElement[Any], *, where: Any = None,
                     keep: Any = None, joined: Any = None, by_source: bool = False,
                     limit: int = 20) -> tuple[list[tuple[Any, int]], int]:
        """Counts per value of ``value`` (a typed field value, or a list's element: its table function
        ``joined`` to each item, the condition ``keep``) over the ``ok`` items matching ``where``: the ``limit``
        most frequent (ties by value) and what the other values count together. Items without a value count
        nowhere. ``by_source``: each value counts products."""
        conditions = [*self._scope(collection_id, where), value.is_not(None)]
        if keep is not None:
            conditions.append(keep)
        # grouped by the inner query's column: PostgreSQL would not match two copies of a parameterised value
        inner_q = select(value.label("v"), Item.source_id.label("source_id")).select_from(Item)
        if joined is not None:
            inner_q = inner_q.join(joined, true())
        inner = inner_q.where(*conditions).subquery()
        n = _how_many(inner.c.source_id, by_source).label("n")
        groups = select(inner.c.v, n).group_by(inner.c.v)
        top = groups.order_by(n.desc(), inner.c.v.asc()).limit(limit)
        every = groups.subquery()
        with self.Session() as s:
            rows = [(v, int(c)) for v, c in s.execute(top)]
            counted = int(s.execute(select(func.coalesce(func.sum(every.c.n), 0))).scalar_one())
        return rows, counted - sum(c for _, c in rows)

    def sort_values(self, ids: Sequence[int], values: Sequence[ColumnElement[Any]]) -> dict[int, tuple[Any, ...]]:
        """id -> the ``values`` (typed field values) of each of these items, in one query."""
        if not ids:
            return {}
        q = select(Item.id, *values).where(Item.id.in_(list(ids)))
        with self.Session() as s:
            return {int(row[0]): tuple(row[1:]) for row in s.execute(q)}
