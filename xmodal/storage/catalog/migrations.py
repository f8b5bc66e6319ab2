"""Bringing a catalog made by an earlier xmodal up to date, when a :class:`Catalog` opens it.

``Base.metadata.create_all`` creates missing tables but never alters existing ones, so columns and
indexes added to :mod:`.tables` since are added here: a column with ``ALTER TABLE ... ADD COLUMN`` (it
must be nullable, so that existing rows stay valid), an index with ``CREATE INDEX``. Each table's
changes are one transaction.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, inspect

from xmodal.storage.catalog.tables import Base

log = logging.getLogger(__name__)


def add_missing_columns(engine: Engine) -> None:
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
