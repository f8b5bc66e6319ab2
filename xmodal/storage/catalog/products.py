"""Catalog queries about products (a manifest's rows): how a collection's servable items divide into rows,
and every servable item of a page's rows at once (``search.products`` groups results by them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import distinct, func, select

from xmodal.storage.catalog.engine import CatalogBase, chunks
from xmodal.storage.catalog.tables import STATUS_OK, Item


@dataclass(frozen=True)
class SourceCounts:
    items: int  # servable items of the collection
    manifest_items: int  # of which a manifest row gave (they have a source id)
    sources: int  # distinct source ids among them

    @property
    def per_source(self) -> float:
        """Items per product: a folder item is a product of its own."""
        groups = self.sources + self.items - self.manifest_items
        return self.items / groups if groups else 1.0


class ProductQueries(CatalogBase):
    """Products: counts of rows and items, the items of several rows."""

    def source_counts(self, collection_id: int) -> SourceCounts:
        q = select(func.count(), func.count(Item.source_id), func.count(distinct(Item.source_id))).where(
            Item.collection_id == collection_id, Item.status == STATUS_OK)
        with self.Session() as s:
            items, manifest_items, sources = s.execute(q).one()
        return SourceCounts(int(items), int(manifest_items), int(sources))

    def source_columns(self, collection_id: int) -> list[str]:
        """The media columns the collection's servable manifest items came from."""
        q = select(Item.source_column).distinct().where(Item.collection_id == collection_id, Item.status == STATUS_OK,
                                                        Item.source_column.is_not(None))
        with self.Session() as s:
            return sorted(str(c) for c in s.scalars(q))

    def items_of_sources(self, collection_id: int, source_ids: Sequence[str]) -> dict[str, list[Item]]:
        """source id -> its servable items, by id (rows with none are absent)."""
        out: dict[str, list[Item]] = {}
        with self.Session() as s:
            for chunk in chunks(list(dict.fromkeys(source_ids))):
                q = (select(Item).where(Item.collection_id == collection_id, Item.source_id.in_(chunk),
                                        Item.status == STATUS_OK).order_by(Item.id))
                for item in s.scalars(q):
                    out.setdefault(str(item.source_id), []).append(item)
        return out
