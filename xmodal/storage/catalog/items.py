"""Catalog queries about items: the states the scanner diffs against, new and moved items, statuses
and outcomes (with a manifest item's digest and metadata), and reading items back by id or URI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from xmodal.errors import NotFoundError
from xmodal.storage.catalog.engine import CatalogBase, chunks
from xmodal.storage.catalog.lexical import refresh_words, remove_words
from xmodal.storage.catalog.records import ItemOutcome, ItemState, source_values
from xmodal.storage.catalog.tables import STATUS_DELETED, STATUS_OK, STATUS_PENDING, Item, uri_key
from xmodal.storage.uris import entry_key

INSERT_CHUNK = 1000  # new items per INSERT ... RETURNING statement


def bulk_update(s: Session, rows: list[dict[str, Any]]) -> None:
    """ORM bulk UPDATE by primary key, one statement per set of columns."""
    by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_keys.setdefault(tuple(sorted(row)), []).append(row)
    for group in by_keys.values():
        s.execute(update(Item), group)


class ItemQueries(CatalogBase):
    """Items: scan states, inserts, statuses, outcomes, reads."""

    def item_states(self, collection_id: int) -> dict[str, ItemState]:
        """uri -> state of every item of the collection (deleted ones too), for the scanner to diff against."""
        out: dict[str, ItemState] = {}
        q = select(Item.id, Item.uri, Item.status, Item.size, Item.mtime_ns, Item.content_hash, Item.reason).where(
            Item.collection_id == collection_id, Item.source_id.is_(None)
        )
        with self.Session() as s:
            for row in s.execute(q).yield_per(10_000):
                out[row.uri] = ItemState(row.id, row.status, row.size, row.mtime_ns, row.content_hash, row.reason)
        return out

    def manifest_states(self, collection_id: int) -> dict[str, ItemState]:
        """Manifest key (``manifest:<id>#<column>``) -> state of every manifest item of the collection."""
        out: dict[str, ItemState] = {}
        q = select(Item.id, Item.source_id, Item.source_column, Item.status, Item.size, Item.mtime_ns,
                   Item.content_hash, Item.reason, Item.source_digest).where(
            Item.collection_id == collection_id, Item.source_id.is_not(None))
        with self.Session() as s:
            for row in s.execute(q).yield_per(10_000):
                out[entry_key(row.source_id, row.source_column or "")] = ItemState(
                    row.id, row.status, row.size, row.mtime_ns, row.content_hash, row.reason, row.source_digest)
        return out

    def add_source_items(self, collection_id: int, entries: Sequence[tuple[str, str, str, str, str]]) -> dict[str, int]:
        """Insert pending manifest items for (key, uri, modality, source id, column); returns key -> new id.
        Their digest stays empty until their first outcome, so a crash before it reads as new again."""
        rows = [
            {"collection_id": collection_id, "uri": uri, "uri_key": uri_key(key), "modality": modality,
             "status": STATUS_PENDING, "meta": {}, "source_id": source_id, "source_column": column}
            for key, uri, modality, source_id, column in entries
        ]
        out: dict[str, int] = {}
        with self.Session.begin() as s:
            batches = zip(chunks(rows, INSERT_CHUNK), chunks(entries, INSERT_CHUNK), strict=True)
            for chunk, their_entries in batches:
                ids = s.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), chunk)
                for entry, new_id in zip(their_entries, ids, strict=True):
                    out[entry[0]] = int(new_id)
        return out

    def move_source_items(self, rows: Sequence[tuple[int, str, str]]) -> None:
        """Set (id, uri, modality) of manifest items whose media moved (a new URL). Their status, vector and
        digest stay until the new media's outcome is committed."""
        if not rows:
            return
        with self.Session.begin() as s:
            bulk_update(s, [{"id": i, "uri": uri, "modality": modality} for i, uri, modality in rows])

    def add_items(self, collection_id: int, entries: Iterable[tuple[str, str]]) -> dict[str, int]:
        """Insert pending items for (uri, modality) pairs; returns uri -> new id."""
        rows = [
            {"collection_id": collection_id, "uri": uri, "uri_key": uri_key(uri), "modality": modality,
             "status": STATUS_PENDING, "meta": {}}
            for uri, modality in entries
        ]
        out: dict[str, int] = {}
        with self.Session.begin() as s:
            for chunk in chunks(rows, INSERT_CHUNK):
                ids = s.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), chunk)
                for row, new_id in zip(chunk, ids, strict=True):
                    out[row["uri"]] = int(new_id)
        return out

    def set_status(self, item_ids: Sequence[int], status: str, reason: str | None = None) -> None:
        with self.Session.begin() as s:
            for chunk in chunks(item_ids):
                s.execute(update(Item).where(Item.id.in_(chunk)).values(status=status, reason=reason))
            if status == STATUS_DELETED:
                remove_words(s, item_ids)

    def record_outcomes(self, outcomes: Sequence[ItemOutcome]) -> None:
        """Failures and unchanged-content touches, in one transaction."""
        if not outcomes:
            return
        with self.Session.begin() as s:
            if any(o.source is not None for o in outcomes):
                self._merge_source_meta(s, outcomes)
            bulk_update(s, [
                {"id": o.item_id, "status": o.status, "reason": o.reason, "content_hash": o.content_hash,
                 "size": o.size, "mtime_ns": o.mtime_ns, **source_values(o.source)}
                for o in outcomes
            ])
            refresh_words(s, [o.item_id for o in outcomes])

    def _merge_source_meta(self, s: Session, changes: Sequence[Any]) -> None:
        """Set the manifest metadata of items whose media stays as it is: ``meta`` keeps the keys the
        media's decoding gave and takes the manifest's (old manifest keys go)."""
        by_id = {c.item_id: c.source for c in changes if c.source is not None}
        rows = []
        for chunk in chunks(list(by_id)):
            for item_id, meta, old_source in s.execute(
                    select(Item.id, Item.meta, Item.source_meta).where(Item.id.in_(chunk))):
                source = by_id[int(item_id)]
                decoded = {k: v for k, v in (meta or {}).items() if k not in (old_source or {})}
                rows.append({"id": int(item_id), "meta": {**decoded, **source.meta}})
        bulk_update(s, rows)

    def update_source_meta(self, changes: Sequence[ItemOutcome]) -> None:
        """Metadata-only manifest changes: new digest and metadata, the vector kept, in one transaction."""
        if not changes:
            return
        with self.Session.begin() as s:
            self._merge_source_meta(s, changes)
            bulk_update(s, [{"id": c.item_id, **source_values(c.source)} for c in changes])
            refresh_words(s, [c.item_id for c in changes])

    def items(self, item_ids: Sequence[int], *, where: Any = None) -> dict[int, Item]:
        """Items by id; ``where`` (a SQLAlchemy condition, e.g. a compiled filter) narrows them."""
        out: dict[int, Item] = {}
        with self.Session() as s:
            for chunk in chunks(list(item_ids)):
                q = select(Item).where(Item.id.in_(chunk))
                if where is not None:
                    q = q.where(where)
                for item in s.scalars(q):
                    out[int(item.id)] = item
        return out

    def item_by_id(self, collection_id: int, item_id: int) -> Item:
        with self.Session() as s:
            item = s.get(Item, item_id)
        if item is None or item.collection_id != collection_id or item.status == STATUS_DELETED:
            raise NotFoundError(f"no item with id {item_id} in this collection")
        return item

    def items_by_uri(self, collection_id: int, uris: Sequence[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        with self.Session() as s:
            keys = [uri_key(u) for u in uris]
            for chunk in chunks(keys):
                q = select(Item).where(Item.collection_id == collection_id, Item.uri_key.in_(chunk))
                for item in s.scalars(q):
                    out[item.uri] = item
        return out

    def hidden_since(self, collection_id: int, since: datetime) -> list[int]:
        """Ids of the collection's items that stopped being servable (deleted, failed, pending) at or
        after ``since``: what an index version built before then may still hold."""
        q = select(Item.id).where(  # `status != 'ok'` as written: the partial index ix_items_collection_hidden
            Item.collection_id == collection_id, Item.status != STATUS_OK, Item.updated_at >= since,
        )
        with self.Session() as s:
            return [int(i) for i in s.scalars(q)]

    def last_change(self, collection_id: int) -> datetime | None:
        """When an item of the collection last changed (added, status, metadata): one index lookup, for
        callers that cache something derived from the items (the service's field list)."""
        with self.Session() as s:
            return s.scalar(select(func.max(Item.updated_at)).where(Item.collection_id == collection_id))

    def source_items(self, collection_ids: Sequence[int], source_id: str) -> list[Item]:
        """The servable items of a manifest row (its source id) in these collections, by collection and id."""
        q = (select(Item).where(Item.collection_id.in_(list(collection_ids)), Item.source_id == source_id,
                                Item.status == STATUS_OK).order_by(Item.collection_id, Item.id))
        with self.Session() as s:
            return list(s.scalars(q))
