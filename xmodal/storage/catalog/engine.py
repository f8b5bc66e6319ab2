"""The one place that opens a catalog: the engine, its sessions, and what every query module shares.

``CatalogBase`` turns a database URL into an engine and a ``Session`` factory (``expire_on_commit=False``,
so rows read in a transaction stay usable after it). A SQLite file is created in its folder when
``create`` is set and refused when missing otherwise; each SQLite connection runs in WAL mode with
foreign keys on and a 30 s busy timeout. With ``create`` the tables are made and an older catalog is
brought up to date (:mod:`.migrations`); without it, a database with no catalog is refused. Server
databases (PostgreSQL) get ``pool_pre_ping``. The query mixins of :mod:`.repository` build on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from xmodal.errors import UserError
from xmodal.storage.catalog.migrations import add_missing_columns
from xmodal.storage.catalog.tables import Base, Collection

CHUNK = 500  # rows per IN (...) clause: stays under SQLite's and PostgreSQL's parameter limits


def chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``seq`` in slices of at most ``size``: one IN (...) clause or one INSERT each."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class CatalogBase:
    """A connection to a catalog: ``url``, ``backend`` (the dialect's name), ``engine``, ``Session``."""

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
            event.listen(self.engine, "connect", sqlite_pragmas)
        if create:
            Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine)
        elif not inspect(self.engine).has_table(Collection.__tablename__):
            raise UserError(f"no xmodal catalog in {parsed.render_as_string(hide_password=True)}: run `xmodal index` first")
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()
