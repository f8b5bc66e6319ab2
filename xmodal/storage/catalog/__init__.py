"""The SQL catalog: collections, spaces, items, shards, item vectors and index versions.

SQLAlchemy 2 models on any URL; SQLite (WAL mode) in the data dir by default, PostgreSQL in
production. Every multi-row change that must be atomic (a shard and the items it covers, an index
publish) is one transaction here. Callers never build queries themselves.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from xmodal.errors import ModelMismatchError, NotFoundError, UserError
from xmodal.storage.uris import entry_key

log = logging.getLogger(__name__)

# int64 ids everywhere; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")

STATUS_PENDING = "pending"  # scanned, not embedded yet (or its new content not decoded yet)
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DELETED = "deleted"

COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CHUNK = 500  # rows per IN (...) clause: stays under SQLite's and PostgreSQL's parameter limits


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def uri_key(uri: str) -> str:
    """A fixed-width key for unique lookup: URIs can be longer than an index row may be."""
    return hashlib.sha1(uri.encode("utf-8", "surrogatepass")).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Collection(Base):
    __tablename__ = "collections"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Space(Base):
    """One encoder model with a fixed dimension inside a collection."""

    __tablename__ = "spaces"
    __table_args__ = (UniqueConstraint("collection_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    family: Mapped[str] = mapped_column(String(32))
    model: Mapped[dict[str, Any]] = mapped_column(JSON)  # the exact model record (see encoders)
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("collection_id", "uri_key"),
        Index("ix_items_collection_updated", "collection_id", "updated_at"),  # hidden_since, per request
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    uri_key: Mapped[str] = mapped_column(String(40))
    modality: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=STATUS_PENDING)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    content_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # items from a manifest: the source's own key (a product id) and media column, the entry's digest
    # (media half + metadata half, see indexer.manifest) and its metadata as the manifest gave it
    source_id: Mapped[str | None] = mapped_column(Text, default=None, index=True)
    source_column: Mapped[str | None] = mapped_column(String(64), default=None)
    source_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    source_meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class SourceRoot(Base):
    """A real path (symlinks resolved) that a collection's local media may lie under: a source folder
    or file given to ``xmodal index``, the folder of a file a manifest named, or the target of a
    symlink the indexer was allowed to follow. The service serves files only from under these."""

    __tablename__ = "source_roots"
    __table_args__ = (UniqueConstraint("collection_id", "path_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    path_key: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))  # folder | manifest | link
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Shard(Base):
    __tablename__ = "shards"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    space: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ItemVector(Base):
    """Where the current vector of an item in a space lives, and which content it embeds."""

    __tablename__ = "item_vectors"
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard_id: Mapped[int] = mapped_column(ForeignKey("shards.id"), index=True)
    row: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))


class IndexVersion(Base):
    __tablename__ = "index_versions"
    __table_args__ = (UniqueConstraint("collection_id", "space", "version"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    space: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    status: Mapped[str] = mapped_column(String(16))  # published | superseded
    kind: Mapped[str] = mapped_column(String(32))
    n_vectors: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    fingerprint: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    build_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Alignment(Base):
    """A linear map from one space into another (``clap`` -> ``clip``), fitted on a text bank."""

    __tablename__ = "alignments"
    __table_args__ = (UniqueConstraint("collection_id", "source", "target"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(64))  # hash of both models' identities and the bank: refit when it moves
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    matrix: Mapped[bytes] = mapped_column(LargeBinary)  # float32, row-major (rows = source dim)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class ItemState:
    """What the scanner compares a file against."""

    id: int
    status: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    reason: str | None = None
    source_digest: str | None = None  # manifest items only


@dataclass(frozen=True)
class SourceFields:
    """What a manifest says about an item, written with its outcome (so that a crash before the
    outcome leaves the old digest, and the next run sees the change again)."""

    digest: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class EmbeddedItem:
    """One item's successful outcome, committed together with the shard that holds its vector."""

    item_id: int
    row: int
    content_hash: str
    size: int
    mtime_ns: int
    meta: dict[str, Any]
    modality: str | None = None  # set when decoding found it (a manifest URL without an extension)
    source: SourceFields | None = None


@dataclass(frozen=True)
class ItemOutcome:
    """An item whose processing ended without a new vector: failed, or content unchanged."""

    item_id: int
    status: str
    reason: str | None
    content_hash: str | None
    size: int | None
    mtime_ns: int | None
    source: SourceFields | None = None


def _source_values(source: SourceFields | None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The columns an outcome sets on a manifest item: its digest, its manifest metadata and, when the
    decoded media's own metadata is given, both merged into ``meta`` (the manifest's keys win)."""
    if source is None:
        return {}
    out: dict[str, Any] = {"source_digest": source.digest, "source_meta": source.meta}
    if meta is not None:
        out["meta"] = {**meta, **source.meta}
    return out


def _bulk_update(s: Session, rows: list[dict[str, Any]]) -> None:
    """ORM bulk UPDATE by primary key, one statement per set of columns."""
    by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_keys.setdefault(tuple(sorted(row)), []).append(row)
    for group in by_keys.values():
        s.execute(update(Item), group)


def _add_missing_columns(engine: Engine) -> None:
    """Bring a catalog made by an earlier xmodal up to date: columns added since (all nullable) are
    added to its tables with ``ALTER TABLE ... ADD COLUMN``, and indexes added since are created."""
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present]
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        new_indexes = [ix for ix in table.indexes if ix.name not in indexes]
        if not missing and not new_indexes:
            continue
        with engine.begin() as conn:
            for column in missing:
                assert column.nullable, f"{table.name}.{column.name} is added to old catalogs: it must be nullable"
                kind = column.type.compile(dialect=engine.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                log.info("catalog: added column %s.%s", table.name, column.name)
            for index in new_indexes:
                index.create(conn, checkfirst=True)
                log.info("catalog: added index %s", index.name)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


class Catalog:
    """Every read and write of the catalog. One instance per process."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        if self.backend == "sqlite" and parsed.database and parsed.database != ":memory:":
            db_file = Path(parsed.database)
            if not create and not db_file.exists():
                raise UserError(f"no catalog at {db_file}: run `xmodal index` first (or set --home / XMODAL_HOME)")
            db_file.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=self.backend != "sqlite")
        if self.backend == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        elif not inspect(self.engine).has_table(Collection.__tablename__):
            raise UserError(f"no xmodal catalog in {parsed.render_as_string(hide_password=True)}: run `xmodal index` first")
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # collections and spaces -------------------------------------------------------------------

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
            for chunk in _chunks(list(wanted)):
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

    # items ------------------------------------------------------------------------------------

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
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                ids = s.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), chunk)
                for entry, new_id in zip(entries[start : start + 1000], ids, strict=True):
                    out[entry[0]] = int(new_id)
        return out

    def move_source_items(self, rows: Sequence[tuple[int, str, str]]) -> None:
        """Set (id, uri, modality) of manifest items whose media moved (a new URL). Their status, vector and
        digest stay until the new media's outcome is committed."""
        if not rows:
            return
        with self.Session.begin() as s:
            _bulk_update(s, [{"id": i, "uri": uri, "modality": modality} for i, uri, modality in rows])

    def add_items(self, collection_id: int, entries: Iterable[tuple[str, str]]) -> dict[str, int]:
        """Insert pending items for (uri, modality) pairs; returns uri -> new id."""
        rows = [
            {"collection_id": collection_id, "uri": uri, "uri_key": uri_key(uri), "modality": modality,
             "status": STATUS_PENDING, "meta": {}}
            for uri, modality in entries
        ]
        out: dict[str, int] = {}
        with self.Session.begin() as s:
            for chunk in _chunks(rows, 1000):
                ids = s.scalars(insert(Item).returning(Item.id, sort_by_parameter_order=True), chunk)
                for row, new_id in zip(chunk, ids, strict=True):
                    out[row["uri"]] = int(new_id)
        return out

    def set_status(self, item_ids: Sequence[int], status: str, reason: str | None = None) -> None:
        with self.Session.begin() as s:
            for chunk in _chunks(item_ids):
                s.execute(update(Item).where(Item.id.in_(chunk)).values(status=status, reason=reason))

    def record_outcomes(self, outcomes: Sequence[ItemOutcome]) -> None:
        """Failures and unchanged-content touches, in one transaction."""
        if not outcomes:
            return
        with self.Session.begin() as s:
            if any(o.source is not None for o in outcomes):
                self._merge_source_meta(s, outcomes)
            _bulk_update(s, [
                {"id": o.item_id, "status": o.status, "reason": o.reason, "content_hash": o.content_hash,
                 "size": o.size, "mtime_ns": o.mtime_ns, **_source_values(o.source)}
                for o in outcomes
            ])

    def _merge_source_meta(self, s: Session, changes: Sequence[Any]) -> None:
        """Set the manifest metadata of items whose media stays as it is: ``meta`` keeps the keys the
        media's decoding gave and takes the manifest's (old manifest keys go)."""
        by_id = {c.item_id: c.source for c in changes if c.source is not None}
        rows = []
        for chunk in _chunks(list(by_id)):
            for item_id, meta, old_source in s.execute(
                    select(Item.id, Item.meta, Item.source_meta).where(Item.id.in_(chunk))):
                source = by_id[int(item_id)]
                decoded = {k: v for k, v in (meta or {}).items() if k not in (old_source or {})}
                rows.append({"id": int(item_id), "meta": {**decoded, **source.meta}})
        _bulk_update(s, rows)

    def update_source_meta(self, changes: Sequence[ItemOutcome]) -> None:
        """Metadata-only manifest changes: new digest and metadata, the vector kept, in one transaction."""
        if not changes:
            return
        with self.Session.begin() as s:
            self._merge_source_meta(s, changes)
            _bulk_update(s, [{"id": c.item_id, **_source_values(c.source)} for c in changes])

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
            for chunk in _chunks(ids):
                s.execute(
                    delete(ItemVector).where(ItemVector.item_id.in_(chunk), ItemVector.space == space)
                )
            s.execute(
                insert(ItemVector),
                [{"item_id": e.item_id, "space": space, "shard_id": shard.id, "row": e.row,
                  "content_hash": e.content_hash} for e in items],
            )
            _bulk_update(s, [
                {"id": e.item_id, "status": STATUS_OK, "reason": None, "content_hash": e.content_hash,
                 "size": e.size, "mtime_ns": e.mtime_ns, "meta": e.meta,
                 **({"modality": e.modality} if e.modality else {}), **_source_values(e.source, e.meta)}
                for e in items
            ])
            return int(shard.id)

    def items_needing_vectors(self, collection_id: int, space: str, modalities: Iterable[str]) -> list[int]:
        """Ok items of the space's modalities whose current content has no vector there."""
        q = (
            select(Item.id)
            .outerjoin(ItemVector, (ItemVector.item_id == Item.id) & (ItemVector.space == space))
            .where(
                Item.collection_id == collection_id,
                Item.status == STATUS_OK,
                Item.modality.in_(list(modalities)),
                (ItemVector.item_id.is_(None)) | (ItemVector.content_hash != Item.content_hash),
            )
            .order_by(Item.id)
        )
        with self.Session() as s:
            return [int(i) for i in s.scalars(q)]

    def items(self, item_ids: Sequence[int], *, where: Any = None) -> dict[int, Item]:
        """Items by id; ``where`` (a SQLAlchemy condition, e.g. a compiled filter) narrows them."""
        out: dict[int, Item] = {}
        with self.Session() as s:
            for chunk in _chunks(list(item_ids)):
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
            for chunk in _chunks(keys):
                q = select(Item).where(Item.collection_id == collection_id, Item.uri_key.in_(chunk))
                for item in s.scalars(q):
                    out[item.uri] = item
        return out

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

    def hidden_since(self, collection_id: int, since: datetime) -> list[int]:
        """Ids of the collection's items that stopped being servable (deleted, failed, pending) at or
        after ``since``: what an index version built before then may still hold."""
        q = select(Item.id).where(
            Item.collection_id == collection_id, Item.status != STATUS_OK, Item.updated_at >= since,
        )
        with self.Session() as s:
            return [int(i) for i in s.scalars(q)]

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
            items = sorted({int(i) for chunk in _chunks(list(shard_ids)) for i in s.scalars(
                select(ItemVector.item_id).where(ItemVector.shard_id.in_(chunk)))})
            for chunk in _chunks(list(shard_ids)):
                s.execute(delete(ItemVector).where(ItemVector.shard_id.in_(chunk)))
                s.execute(delete(Shard).where(Shard.id.in_(chunk)))
            for chunk in _chunks(items):
                s.execute(update(Item).where(Item.id.in_(chunk)).values(status=STATUS_PENDING, reason=reason))
            return items

    def forget(self, *, index_version_ids: Sequence[int] = (), shard_ids: Sequence[int] = ()) -> None:
        """Delete the rows of superseded index versions and of shards no vector row points at (gc)."""
        with self.Session.begin() as s:
            for chunk in _chunks(list(index_version_ids)):
                s.execute(delete(IndexVersion).where(IndexVersion.id.in_(chunk), IndexVersion.status != "published"))
            for chunk in _chunks(list(shard_ids)):
                live = select(ItemVector.shard_id).where(ItemVector.shard_id.in_(chunk))
                s.execute(delete(Shard).where(Shard.id.in_(chunk), Shard.id.not_in(live)))

    def index_versions(self, collection_id: int) -> list[IndexVersion]:
        """Every index version the catalog records (published and superseded)."""
        with self.Session() as s:
            return list(s.scalars(select(IndexVersion).where(IndexVersion.collection_id == collection_id)))

    # index versions ---------------------------------------------------------------------------

    def published_index(self, collection_id: int, space: str) -> IndexVersion | None:
        q = select(IndexVersion).where(
            IndexVersion.collection_id == collection_id, IndexVersion.space == space,
            IndexVersion.status == "published",
        )
        with self.Session() as s:
            return s.scalar(q)

    def next_index_version(self, collection_id: int, space: str) -> int:
        q = select(func.max(IndexVersion.version)).where(
            IndexVersion.collection_id == collection_id, IndexVersion.space == space
        )
        with self.Session() as s:
            return int(s.scalar(q) or 0) + 1

    def publish_index(
        self, collection_id: int, space: str, version: int, path: str, kind: str, n_vectors: int,
        nbytes: int, fingerprint: str, summary: dict[str, Any], build_s: float,
    ) -> None:
        """Make a written index version the served one, superseding the previous, atomically."""
        with self.Session.begin() as s:
            s.execute(
                update(IndexVersion)
                .where(IndexVersion.collection_id == collection_id, IndexVersion.space == space,
                       IndexVersion.status == "published")
                .values(status="superseded")
            )
            s.add(IndexVersion(
                collection_id=collection_id, space=space, version=version, path=path, status="published",
                kind=kind, n_vectors=n_vectors, bytes=nbytes, fingerprint=fingerprint, summary=summary,
                build_s=build_s,
            ))

    # stats ------------------------------------------------------------------------------------

    def counts(self, collection_id: int) -> dict[str, dict[str, int]]:
        by_status: dict[str, int] = {}
        by_modality: dict[str, int] = {}
        with self.Session() as s:
            q = (
                select(Item.status, Item.modality, func.count())
                .where(Item.collection_id == collection_id)
                .group_by(Item.status, Item.modality)
            )
            for status, modality, n in s.execute(q):
                by_status[status] = by_status.get(status, 0) + int(n)
                if status != STATUS_DELETED:
                    by_modality[modality] = by_modality.get(modality, 0) + int(n)
        return {"status": by_status, "modality": by_modality}

    def failures(self, collection_id: int, limit: int | None = None) -> list[tuple[str, str]]:
        q = (
            select(Item.uri, Item.reason)
            .where(Item.collection_id == collection_id, Item.status == STATUS_FAILED)
            .order_by(Item.uri)
        )
        if limit is not None:
            q = q.limit(limit)
        with self.Session() as s:
            return [(r[0], r[1] or "") for r in s.execute(q)]


def _live(collection_id: int, space: str) -> tuple[Any, ...]:
    """An ok item of the collection whose vector in ``space`` embeds its current content."""
    return (Item.collection_id == collection_id, Item.status == STATUS_OK, ItemVector.space == space,
            ItemVector.content_hash == Item.content_hash)


def check_collection_name(name: str) -> str:
    """Collection names become file and folder names: letters, digits, '_', '-', '.', nothing else."""
    if not COLLECTION_NAME_RE.match(name):
        raise UserError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def check_same_model(recorded: dict[str, Any], given: dict[str, Any], *, collection: str | None = None) -> None:
    """A collection is only ever used with the model it was indexed with (family and identity)."""
    if recorded.get("family", given.get("family")) == given.get("family", recorded.get("family")) and (
        recorded.get("identity") == given.get("identity")
    ):
        return
    which = f"collection {collection!r}" if collection else "this collection"
    raise ModelMismatchError(
        f"{which} was indexed with {describe_model(recorded)}, not {describe_model(given)}: "
        "use the same model, or index into a new collection"
    )


def describe_model(model: dict[str, Any]) -> str:
    """One short phrase for an encoder record, for error messages."""
    name = model.get("model", "?")
    pretrained = model.get("pretrained")
    return f"{name} ({pretrained})" if pretrained else str(name)
