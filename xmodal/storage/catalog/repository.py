"""``Catalog``: the catalog's one repository class, assembled from its query mixins.

Opening a catalog (engine, sessions, migrations) is :class:`~.engine.CatalogBase`; each mixin holds the
queries of one concern and shares that engine and session factory:

- :class:`~.spaces.CollectionQueries`: collections, spaces, alignments, source roots;
- :class:`~.items.ItemQueries`: scan states, new items, statuses and outcomes, reading items;
- :class:`~.vectors.ShardQueries`: shards and item vectors, verify and gc bookkeeping;
- :class:`~.versions.IndexQueries`: index versions and stats;
- :class:`~.lexical.LexicalQueries`: the full-text index (created and filled on opening), a source id's items;
- :class:`~.products.ProductQueries`: how items divide into manifest rows, the items of a page's rows.
"""

from __future__ import annotations

from xmodal.storage.catalog.items import ItemQueries
from xmodal.storage.catalog.lexical import LexicalQueries
from xmodal.storage.catalog.products import ProductQueries
from xmodal.storage.catalog.spaces import CollectionQueries
from xmodal.storage.catalog.vectors import ShardQueries
from xmodal.storage.catalog.versions import IndexQueries


class Catalog(CollectionQueries, ItemQueries, ShardQueries, IndexQueries, LexicalQueries, ProductQueries):
    """Every read and write of the catalog. One instance per process."""
