"""Catalog queries about collections as a whole: the collection rows (renamed or dropped in one
transaction), their spaces (each space's exact model, checked against the model a caller brings), the
alignments between spaces, and the source roots the collection's local media may be served from."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import String, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from xmodal.errors import ConflictError, NotFoundError
from xmodal.storage.catalog.engine import CatalogBase, chunks
from xmodal.storage.catalog.policy import check_collection_name, check_same_model
from xmodal.storage.catalog.tables import (
    Alignment,
    Collection,
    IndexVersion,
    Item,
    ItemVector,
    Shard,
    SourceRoot,
    Space,
    uri_key,
)


class CollectionQueries(CatalogBase):
    """Collections, spaces, alignments and source roots."""

    def collection_id(self, name: str, *, create: bool = False) -> int:
        check_collection_name(name)
        try:
            with self.Session.begin() as s:
                found = s.scalar(select(Collection.id).where(Collection.name == name))
                if found is not None:
                    return int(found)
                if not create:
                    names = self.collection_names(s)
                    known = ", ".join(names) if names else "none yet: run `xmodal index` first"
                    raise NotFoundError(f"no collection named {name!r} (collections: {known})")
                row = Collection(name=name)
                s.add(row)
                s.flush()
                return int(row.id)
        except IntegrityError:  # a concurrent creator won the race: read theirs
            return self.collection_id(name)

    def collection_names(self, s: Session | None = None) -> list[str]:
        if s is None:
            with self.Session() as own:
                return self.collection_names(own)
        return list(s.scalars(select(Collection.name).order_by(Collection.name)))

    def rename_collection(self, old: str, new: str, *, old_prefix: str, new_prefix: str) -> None:
        """Rename a collection, and the data-dir paths its shards and index versions record (``old_prefix``,
        e.g. ``collections/old/``, becomes ``new_prefix``), in one transaction."""
        check_collection_name(new)
        cid = self.collection_id(old)
        with self.Session.begin() as s:
            if s.scalar(select(Collection.id).where(Collection.name == new)) is not None:
                raise ConflictError(f"a collection named {new!r} exists already")
            s.execute(update(Collection).where(Collection.id == cid).values(name=new))
            for table in (Shard, IndexVersion):
                s.execute(update(table).where(table.collection_id == cid, table.path.startswith(old_prefix,
                                                                                                autoescape=True))
                          .values(path=literal(new_prefix, String).concat(
                              func.substr(table.path, len(old_prefix) + 1, type_=String))))

    def drop_collection(self, name: str) -> None:
        """Remove a collection and every row of it (items, vectors, shards, versions, spaces, alignments,
        roots) in one transaction; its files are the caller's to remove."""
        cid = self.collection_id(name)
        with self.Session.begin() as s:
            s.execute(delete(ItemVector).where(ItemVector.item_id.in_(select(Item.id).where(Item.collection_id == cid))))
            for table in (Item, Shard, IndexVersion, Alignment, SourceRoot, Space):
                s.execute(delete(table).where(table.collection_id == cid))
            s.execute(delete(Collection).where(Collection.id == cid))

    def spaces(self, collection_id: int) -> list[Space]:
        with self.Session() as s:
            return list(s.scalars(select(Space).where(Space.collection_id == collection_id).order_by(Space.name)))

    def ensure_space(self, collection_id: int, name: str, family: str, model: dict[str, Any], dim: int) -> Space:
        """Record the space's model, or check that the recorded one is the same model."""
        with self.Session.begin() as s:
            space = s.scalar(select(Space).where(Space.collection_id == collection_id, Space.name == name))
            if space is None:
                space = Space(collection_id=collection_id, name=name, family=family, model=model, dim=dim)
                s.add(space)
                return space
            check_same_model({**space.model, "family": space.family}, {**model, "family": family})
            return space

    def alignment(self, collection_id: int, source: str, target: str) -> Alignment | None:
        with self.Session() as s:
            return s.scalar(select(Alignment).where(
                Alignment.collection_id == collection_id, Alignment.source == source, Alignment.target == target))

    def save_alignment(self, collection_id: int, source: str, target: str, key: str, matrix: Any,
                       metrics: dict[str, Any]) -> None:
        """Replace the collection's source -> target alignment, in one transaction."""
        import numpy as np

        m = np.ascontiguousarray(matrix, dtype=np.float32)
        with self.Session.begin() as s:
            s.execute(delete(Alignment).where(
                Alignment.collection_id == collection_id, Alignment.source == source, Alignment.target == target))
            s.add(Alignment(collection_id=collection_id, source=source, target=target, key=key,
                            rows=int(m.shape[0]), cols=int(m.shape[1]), matrix=m.tobytes(), metrics=metrics))

    # source roots -----------------------------------------------------------------------------

    def record_roots(self, collection_id: int, roots: Iterable[tuple[str, str]]) -> None:
        """Remember (real path, kind) pairs as roots of the collection's local media (kept if known)."""
        wanted = {uri_key(path): (path, kind) for path, kind in roots}
        if not wanted:
            return
        with self.Session.begin() as s:
            known: set[str] = set()
            for chunk in chunks(list(wanted)):
                known.update(s.scalars(select(SourceRoot.path_key).where(
                    SourceRoot.collection_id == collection_id, SourceRoot.path_key.in_(chunk))))
            rows = [{"collection_id": collection_id, "path": path, "path_key": key, "kind": kind}
                    for key, (path, kind) in wanted.items() if key not in known]
            if rows:
                s.execute(insert(SourceRoot), rows)

    def source_roots(self, collection_id: int) -> list[str]:
        """The real paths the collection's local media may lie under (see :class:`SourceRoot`)."""
        with self.Session() as s:
            return list(s.scalars(select(SourceRoot.path).where(SourceRoot.collection_id == collection_id)
                                  .order_by(SourceRoot.path)))
