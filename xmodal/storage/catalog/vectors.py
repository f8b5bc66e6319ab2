"""Catalog queries about shards and item vectors: committing a shard with the items it covers, which
items still need a vector in a space, where an item's vector lives, the live vectors a build indexes,
and the bookkeeping of ``xmodal verify`` and ``xmodal gc`` (dropping lost shards, forgetting rows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update

from xmodal.storage.catalog.engine import CatalogBase, chunks
from xmodal.storage.catalog.items import bulk_update
from xmodal.storage.catalog.lexical import refresh_words
from xmodal.storage.catalog.records import EmbeddedItem, source_values
from xmodal.storage.catalog.tables import (
    INDEX_PUBLISHED,
    STATUS_OK,
    STATUS_PENDING,
    IndexVersion,
    Item,
    ItemVector,
    Shard,
)


class ShardQueries(CatalogBase):
    """Shards and item vectors."""

    def commit_shard(
        self, collection_id: int, space: str, path: str, rows: int, sha256: str, nbytes: int,
        items: Sequence[EmbeddedItem],
    ) -> int:
        """Record a shard (already renamed into place) and the items it covers, atomically."""
        with self.Session.begin() as s:
            shard = Shard(collection_id=collection_id, space=space, path=path, rows=rows, sha256=sha256, bytes=nbytes)
            s.add(shard)
            s.flush()
            ids = [e.item_id for e in items]
            for chunk in chunks(ids):
                s.execute(
                    delete(ItemVector).where(ItemVector.item_id.in_(chunk), ItemVector.space == space)
                )
            s.execute(
                insert(ItemVector),
                [{"item_id": e.item_id, "space": space, "shard_id": shard.id, "row": e.row,
                  "content_hash": e.content_hash} for e in items],
            )
            bulk_update(s, [
                {"id": e.item_id, "status": STATUS_OK, "reason": None, "content_hash": e.content_hash,
                 "size": e.size, "mtime_ns": e.mtime_ns, "meta": e.meta,
                 **({"modality": e.modality} if e.modality else {}), **source_values(e.source, e.meta)}
                for e in items
            ])
            refresh_words(s, ids, {e.item_id: e.text for e in items})
            return int(shard.id)

    def items_needing_vectors(self, collection_id: int, space: str, modalities: Iterable[str],
                              only_if: Iterable[tuple[str, str]] = ()) -> list[int]:
        """Ok items of the space's modalities whose current content has no vector there; ``only_if``: (modality,
        metadata flag) pairs whose items need one only when the flag is true (a video with sound)."""
        q = (
            select(Item.id)
            .outerjoin(ItemVector, (ItemVector.item_id == Item.id) & (ItemVector.space == space))
            .where(
                Item.collection_id == collection_id,
                Item.status == STATUS_OK,
                Item.modality.in_(list(modalities)),
                (ItemVector.item_id.is_(None)) | (ItemVector.content_hash != Item.content_hash),
                *[or_(Item.modality != m, Item.meta[flag].as_boolean().is_(True)) for m, flag in only_if],
            )
            .order_by(Item.id)
        )
        with self.Session() as s:
            return [int(i) for i in s.scalars(q)]

    def vector_location(self, item_id: int, space: str) -> tuple[str, int] | None:
        """(shard path, row) of the item's current vector in the space."""
        q = (
            select(Shard.path, ItemVector.row)
            .join(Shard, Shard.id == ItemVector.shard_id)
            .where(ItemVector.item_id == item_id, ItemVector.space == space)
        )
        with self.Session() as s:
            row = s.execute(q).first()
        return (row.path, int(row.row)) if row else None

    def live_vectors(self, collection_id: int, space: str) -> list[tuple[int, str, int, int, str]]:
        """(item id, modality, shard id, row, shard path) of every ok item with a current vector."""
        q = (
            select(ItemVector.item_id, Item.modality, ItemVector.shard_id, ItemVector.row, Shard.path)
            .join(Item, Item.id == ItemVector.item_id)
            .join(Shard, Shard.id == ItemVector.shard_id)
            .where(*_live(collection_id, space))
            .order_by(ItemVector.shard_id, ItemVector.row)
        )
        with self.Session() as s:
            return [(int(r[0]), r[1], int(r[2]), int(r[3]), r[4]) for r in s.execute(q)]

    def live_counts(self, collection_id: int, space: str) -> dict[str, int]:
        """modality -> number of ok items with a current vector in ``space`` (what a build would index)."""
        q = (
            select(Item.modality, func.count())
            .join(ItemVector, ItemVector.item_id == Item.id)
            .where(*_live(collection_id, space))
            .group_by(Item.modality)
        )
        with self.Session() as s:
            return {str(m): int(n) for m, n in s.execute(q)}

    def shard_records(self, collection_id: int, *, unreferenced: bool = False) -> list[Shard]:
        """Every shard the catalog records for the collection (all spaces); with ``unreferenced``, only
        those no vector row points at any more."""
        q = select(Shard).where(Shard.collection_id == collection_id)
        if unreferenced:
            q = q.where(Shard.id.not_in(select(ItemVector.shard_id)))
        with self.Session() as s:
            return list(s.scalars(q))

    def vector_rows(self, collection_id: int) -> list[tuple[int, str, str, int, int, bool]]:
        """(item id, item status, space, shard id, row, content hash matches) of every vector row."""
        q = (
            select(ItemVector.item_id, Item.status, ItemVector.space, ItemVector.shard_id, ItemVector.row,
                   ItemVector.content_hash == Item.content_hash)
            .join(Item, Item.id == ItemVector.item_id)
            .where(Item.collection_id == collection_id)
        )
        with self.Session() as s:
            return [(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), bool(r[5])) for r in s.execute(q)]

    def drop_shards(self, shard_ids: Sequence[int], reason: str) -> list[int]:
        """Forget shards whose file is lost: their vector rows go, their items become ``pending`` (to be
        embedded again from their media), in one transaction. Returns the items."""
        if not shard_ids:
            return []
        with self.Session.begin() as s:
            items = sorted({int(i) for chunk in chunks(list(shard_ids)) for i in s.scalars(
                select(ItemVector.item_id).where(ItemVector.shard_id.in_(chunk)))})
            for chunk in chunks(list(shard_ids)):
                s.execute(delete(ItemVector).where(ItemVector.shard_id.in_(chunk)))
                s.execute(delete(Shard).where(Shard.id.in_(chunk)))
            for chunk in chunks(items):
                s.execute(update(Item).where(Item.id.in_(chunk)).values(status=STATUS_PENDING, reason=reason))
            return items

    def forget(self, *, index_version_ids: Sequence[int] = (), shard_ids: Sequence[int] = ()) -> None:
        """Delete the rows of superseded index versions and of shards no vector row points at (gc)."""
        with self.Session.begin() as s:
            for chunk in chunks(list(index_version_ids)):
                s.execute(delete(IndexVersion).where(IndexVersion.id.in_(chunk),
                                                     IndexVersion.status != INDEX_PUBLISHED))
            for chunk in chunks(list(shard_ids)):
                live = select(ItemVector.shard_id).where(ItemVector.shard_id.in_(chunk))
                s.execute(delete(Shard).where(Shard.id.in_(chunk), Shard.id.not_in(live)))


def _live(collection_id: int, space: str) -> tuple[Any, ...]:
    """An ok item of the collection whose vector in ``space`` embeds its current content."""
    return (Item.collection_id == collection_id, Item.status == STATUS_OK, ItemVector.space == space,
            ItemVector.content_hash == Item.content_hash)
