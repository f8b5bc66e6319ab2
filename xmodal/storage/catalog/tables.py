"""The catalog's tables: SQLAlchemy 2 declarative models, one class per table, and item statuses.

Ids are int64 everywhere (``BigId``: SQLite only auto-increments an INTEGER PRIMARY KEY). URIs and
paths are looked up by ``uri_key``, a fixed-width SHA-1, since they can be longer than an index row
may be. A column added here later must be nullable: :mod:`.migrations` adds it to older catalogs.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# int64 ids everywhere; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer, "sqlite")

STATUS_PENDING = "pending"  # scanned, not embedded yet (or its new content not decoded yet)
STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_DELETED = "deleted"

INDEX_PUBLISHED = "published"  # the one served version of a (collection, space)
INDEX_SUPERSEDED = "superseded"  # an older version, kept until gc removes it


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
    # what a run chose for the whole collection and later runs keep: {"lexical_fields": [...]} (see .lexical)
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


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
        Index("ix_items_collection_updated", "collection_id", "updated_at"),  # last_change, per request
        # hidden_since, per vector search: a partial index of the items that are not ok (few), so a run that
        # touched every item (all updated since the version's build began) costs no scan of them
        Index("ix_items_collection_hidden", "collection_id", "updated_at",
              sqlite_where=text("status != 'ok'"), postgresql_where=text("status != 'ok'")),
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
    status: Mapped[str] = mapped_column(String(16))  # INDEX_PUBLISHED | INDEX_SUPERSEDED
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

