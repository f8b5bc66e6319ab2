"""The SQL catalog: collections, spaces, items, shards, item vectors and index versions.

SQLAlchemy 2 models on any URL; SQLite (WAL mode) in the data dir by default, PostgreSQL in
production. Every multi-row change that must be atomic (a shard and the items it covers, an index
publish) is one transaction here. Callers never build queries themselves: they call :class:`Catalog`
methods (a compiled filter may narrow ``Catalog.items``). ``Catalog.Session`` stays reachable for
tests and for ``search.filters``, which samples item metadata through it.

The package, by job:

- :mod:`.tables`: the SQLAlchemy tables, item statuses (``STATUS_*``), ``uri_key``;
- :mod:`.records`: what the pipeline passes in and out (``ItemState``, ``SourceFields``,
  ``EmbeddedItem``, ``ItemOutcome``) and the columns an outcome sets;
- :mod:`.migrations`: columns and indexes added to catalogs made by an earlier xmodal;
- :mod:`.engine`: the one place that creates the engine (SQLite pragmas) and sessions;
- :mod:`.spaces`, :mod:`.items`, :mod:`.vectors`, :mod:`.versions`: the queries, one mixin per
  concern, assembled into ``Catalog`` by :mod:`.repository`;
- :mod:`.policy`: collection names, and which model a collection may be used with.

The catalog imports nothing of ``xmodal.indexer`` (manifest entry keys come from
``xmodal.storage.uris``). Everything other code imports is re-exported here.
"""

from xmodal.storage.catalog.engine import CHUNK
from xmodal.storage.catalog.policy import (
    COLLECTION_NAME_RE,
    check_collection_name,
    check_same_model,
    describe_model,
)
from xmodal.storage.catalog.records import EmbeddedItem, ItemOutcome, ItemState, SourceFields
from xmodal.storage.catalog.repository import Catalog
from xmodal.storage.catalog.tables import (
    INDEX_PUBLISHED,
    INDEX_SUPERSEDED,
    STATUS_DELETED,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    Alignment,
    Base,
    BigId,
    Collection,
    IndexVersion,
    Item,
    ItemVector,
    Shard,
    SourceRoot,
    Space,
    uri_key,
    utcnow,
)

__all__ = [
    "CHUNK",
    "COLLECTION_NAME_RE",
    "INDEX_PUBLISHED",
    "INDEX_SUPERSEDED",
    "STATUS_DELETED",
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_PENDING",
    "Alignment",
    "Base",
    "BigId",
    "Catalog",
    "Collection",
    "EmbeddedItem",
    "IndexVersion",
    "Item",
    "ItemOutcome",
    "ItemState",
    "ItemVector",
    "Shard",
    "SourceFields",
    "SourceRoot",
    "Space",
    "check_collection_name",
    "check_same_model",
    "describe_model",
    "uri_key",
    "utcnow",
]
