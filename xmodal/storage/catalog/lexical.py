"""The catalog's full-text index: words of an item's text and of its product's fields, for keyword, SKU and
brand matches beside the vectors.

What an item's row holds (two columns):

- ``fields``: a manifest item's source id and every string (or list of strings) of its manifest metadata
  (title, brand, category, tags ..., a short text media column too: the manifest reader copies it into the
  row's metadata); the same for every item of a product. A collection may choose the columns instead
  (``xmodal index --lexical title,brand``, kept in the collection's ``settings`` as ``lexical_fields``): then
  only those columns' strings, and whole numbers (an EAN typed as an int), beside the source id, which is
  always there. Changing the choice writes every item's row again in that transaction
  (:meth:`LexicalQueries.set_lexical_fields`); no vector changes;
- ``body``: a text item's text (the whole text as decoded, at most :data:`MAX_BODY_CHARS`), or, when the
  text is not at hand (a catalog indexed before this index existed, the Ray engine), its title and snippet.

Both are stored *tokenised* (:func:`tokens`): lower case, NFKC, split into runs of letters and runs of
digits, and each word with more than one part also as one joined token, so ``SKU-000123`` is ``sku000123
sku 000123`` and ``XJ900`` is ``xj900 xj 900``: a SKU or model number matches exactly, and its parts
match too. Python makes the tokens, so SQLite and PostgreSQL see the same words.

Where it lives, by dialect:

- SQLite: an FTS5 virtual table ``item_lexical(fields, body)`` whose rowid is the item id, one table for
  every collection (the collection is checked with the status, after the index ranked its candidates:
  an unindexed column is read row by row, and a word naming the collection makes every query walk the
  whole collection's list); scored by ``bm25`` (fields weighted 2, body 1), reported as ``-bm25`` (higher
  is better);
- PostgreSQL: a table ``item_lexical(item_id, collection_id, fields, body, terms)`` where ``terms`` is a
  generated ``tsvector`` (the ``simple`` configuration: no stemming; fields weight A, body D) under a GIN
  index; scored by ``ts_rank`` (weights {0.5, 0.5, 0.5, 1}, normalised by log length).

The choice governs ``fields`` only: a text item (a text media column's own item) is always found by its
``body``, whichever columns are chosen.

The rows are written by :func:`refresh_words` inside the catalog's own transactions (shard commits, outcomes,
metadata-only updates) and removed with deletes, so what a search finds is what the catalog says at once.
A row whose item is not ``ok`` stays until the item is deleted; searches join ``items`` and keep ``ok``
items only. A catalog made before this index gets it when it is next opened for writing (an ``xmodal
index`` run), filled from the items as they are (:func:`ensure`).
"""

from __future__ import annotations

import functools
import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    String,
    bindparam,
    column,
    delete,
    false,
    func,
    insert,
    inspect,
    literal_column,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.orm import Session

from xmodal.storage.catalog.engine import CatalogBase, chunks
from xmodal.storage.catalog.tables import STATUS_DELETED, STATUS_OK, Collection, Item

log = logging.getLogger(__name__)

TABLE = "item_lexical"
MAX_BODY_CHARS = 100_000  # of a text's start (a tsvector holds at most 1 MB)
_PARTS = re.compile(r"[^\W\d_]+|\d+")

# SQLite: the FTS5 table (rowid = item id); PostgreSQL: a plain table with a generated tsvector
fts = table(TABLE, column("rowid"), column("fields"), column("body"))
pg = table(TABLE, column("item_id"), column("collection_id"), column("fields"), column("body"), column("terms"))

_SQLITE_DDL = (f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(fields, body, "
               "tokenize = 'unicode61 remove_diacritics 2')",)
_PG_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (item_id BIGINT PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE, "
    "collection_id BIGINT NOT NULL, fields TEXT NOT NULL DEFAULT '', body TEXT NOT NULL DEFAULT '', "
    "terms tsvector GENERATED ALWAYS AS (setweight(to_tsvector('simple', fields), 'A') || "
    "setweight(to_tsvector('simple', body), 'D')) STORED)",
    f"CREATE INDEX IF NOT EXISTS ix_{TABLE}_terms ON {TABLE} USING gin (terms)",
    f"CREATE INDEX IF NOT EXISTS ix_{TABLE}_collection ON {TABLE} (collection_id)",
)
# a query equal to a source id finds its row by these (case-insensitive; ASCII letters only on SQLite)
_SOURCE_DDL = {
    "sqlite": "CREATE INDEX IF NOT EXISTS ix_items_source_nocase ON items (collection_id, source_id COLLATE NOCASE)",
    "postgresql": "CREATE INDEX IF NOT EXISTS ix_items_source_lower ON items (collection_id, lower(source_id))",
}
FIELDS_SETTING = "lexical_fields"  # the collection setting: the manifest columns chosen (absent: every string)
PG_WEIGHTS = "{0.5, 0.5, 0.5, 1.0}"  # D, C, B, A: fields (A) count twice the body (D), as on SQLite


def tokens(value: str) -> list[str]:
    """The index's words of ``value`` (see the module docstring): ``"SKU-000123"`` ->
    ``["sku000123", "sku", "000123"]``."""
    out: list[str] = []
    for word in unicodedata.normalize("NFKC", value).casefold().split():
        parts = _PARTS.findall(word)
        if len(parts) > 1:
            out.append("".join(parts))
        out.extend(parts)
    return out


def query_terms(value: str) -> list[str]:
    """What a query looks for, one term per word: the joined token of a word of several parts (a SKU must
    match as a whole), else the word; duplicates once."""
    out: dict[str, None] = {}
    for word in unicodedata.normalize("NFKC", value).casefold().split():
        parts = _PARTS.findall(word)
        if parts:
            out["".join(parts)] = None
    return list(out)


def field_text(source_id: str | None, source_meta: Mapping[str, Any] | None,
               chosen: Sequence[str] | None = None) -> str:
    """The tokenised ``fields`` column: the source id and the manifest's string values (lists of strings too),
    of every column, or of the ``chosen`` ones only (their whole numbers too)."""
    words: list[str] = []
    if source_id:
        words += tokens(source_id)
    meta = source_meta or {}
    for key in (meta if chosen is None else [c for c in chosen if c in meta]):
        value = meta[key]
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                words += tokens(v)
            elif chosen is not None and isinstance(v, int) and not isinstance(v, bool):
                words += tokens(str(v))
    return " ".join(words)


def chosen_fields(s: Session, collection_ids: Iterable[int]) -> dict[int, list[str] | None]:
    """Each collection's chosen columns (None: every string column, the default)."""
    out: dict[int, list[str] | None] = {}
    for chunk in chunks(sorted(set(collection_ids))):
        for cid, settings in s.execute(select(Collection.id, Collection.settings).where(Collection.id.in_(chunk))):
            fields = (settings or {}).get(FIELDS_SETTING)
            out[int(cid)] = [str(f) for f in fields] if isinstance(fields, list) else None
    return out


def body_text(value: str) -> str:
    return " ".join(tokens(value[:MAX_BODY_CHARS]))


def fallback_body(modality: str, meta: Mapping[str, Any] | None) -> str:
    """A text item's body when its text is not at hand: the title and snippet its decoding recorded."""
    if modality != "text" or not meta:
        return ""
    return body_text(" ".join(str(meta.get(k) or "") for k in ("title", "snippet")))


# writing -------------------------------------------------------------------------------------------


def refresh_words(s: Session, item_ids: Iterable[int], bodies: Mapping[int, str | None] | None = None) -> None:
    """Rewrite the rows of these items from the ``items`` table as this transaction sees it: fields from the
    source id and manifest metadata (the collection's chosen columns, when it chose); the body from ``bodies`` (a text's whole text), else the row's own,
    else the title and snippet. A deleted item's row goes."""
    bodies = bodies or {}
    dialect = s.get_bind().dialect.name
    for chunk in chunks(sorted(set(item_ids))):
        if not chunk:
            continue
        old = {int(i): str(b) for i, b in s.execute(_rows_body(dialect, chunk))}
        _delete(s, dialect, chunk)
        items = list(s.execute(select(Item.id, Item.collection_id, Item.status, Item.modality, Item.source_id,
                                      Item.source_meta, Item.meta).where(Item.id.in_(chunk))))
        choice = chosen_fields(s, {int(row.collection_id) for row in items})
        rows = []
        for item_id, collection_id, status, modality, source_id, source_meta, meta in items:
            if status == STATUS_DELETED:
                continue
            given = bodies.get(int(item_id))
            body = body_text(given) if given else old.get(int(item_id)) or fallback_body(modality, meta)
            fields = field_text(source_id, source_meta, choice.get(int(collection_id)))
            if fields or body:
                rows.append((int(item_id), int(collection_id), fields, body))
        _insert(s, dialect, rows)


def remove_words(s: Session, item_ids: Sequence[int]) -> None:
    """Drop the rows of these items (deleted)."""
    dialect = s.get_bind().dialect.name
    for chunk in chunks(list(item_ids)):
        _delete(s, dialect, chunk)


def _rows_body(dialect: str, ids: Sequence[int]) -> Any:
    if dialect == "sqlite":
        return select(fts.c.rowid, fts.c.body).where(fts.c.rowid.in_(ids))
    return select(pg.c.item_id, pg.c.body).where(pg.c.item_id.in_(ids))


def _delete(s: Session, dialect: str, ids: Sequence[int]) -> None:
    if dialect == "sqlite":
        s.execute(delete(fts).where(fts.c.rowid.in_(ids)))
    else:
        s.execute(delete(pg).where(pg.c.item_id.in_(ids)))


def _insert(s: Session, dialect: str, rows: Sequence[tuple[int, int, str, str]]) -> None:
    if not rows:
        return
    if dialect == "sqlite":
        s.execute(insert(fts), [{"rowid": i, "fields": f, "body": b} for i, _, f, b in rows])
    else:
        s.execute(insert(pg), [{"item_id": i, "collection_id": c, "fields": f, "body": b} for i, c, f, b in rows])


# the table -----------------------------------------------------------------------------------------


def exists(engine: Engine) -> bool:
    return inspect(engine).has_table(TABLE)


def ensure(engine: Engine) -> None:
    """Create the index where it is missing and fill it from the items the catalog holds (a catalog made
    before it existed): one transaction."""
    if exists(engine):
        with engine.begin() as conn:
            conn.exec_driver_sql(_SOURCE_DDL[engine.dialect.name])
        return
    t0 = time.perf_counter()
    with Session(engine) as s, s.begin():
        for ddl in (*(_SQLITE_DDL if engine.dialect.name == "sqlite" else _PG_DDL), _SOURCE_DDL[engine.dialect.name]):
            s.execute(text(ddl))
        ids = [int(i) for i in s.scalars(select(Item.id).where(Item.status != STATUS_DELETED).order_by(Item.id))]
        refresh_words(s, ids)
    if ids:
        log.info("catalog: full-text index built over %d items in %.1f s", len(ids), time.perf_counter() - t0)


# reading -------------------------------------------------------------------------------------------


class LexicalQueries(CatalogBase):
    """Searching the full-text index, and finding a manifest row by its own id. Opening a catalog for
    writing creates (and fills) the index where it is missing."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        super().__init__(url, create=create)
        if create:
            ensure(self.engine)
        self.lexical = exists(self.engine)  # False: a catalog made before it, not yet opened by `xmodal index`

    def lexical_fields(self, collection_id: int) -> list[str] | None:
        """The manifest columns the collection chose for its items' words (None: every string column)."""
        with self.Session() as s:
            return chosen_fields(s, [collection_id]).get(collection_id)

    def set_lexical_fields(self, collection_id: int, fields: Sequence[str] | None) -> bool:
        """Choose the manifest columns whose words every item of a product carries (None: every string column,
        the default). When the choice changes, every item of the collection gets its words again in the
        same transaction (bodies kept, no vector touched). Whether it changed."""
        wanted = None if fields is None else list(dict.fromkeys(fields))
        with self.Session.begin() as s:
            row = s.get(Collection, collection_id, with_for_update=True)
            if row is None:
                raise ValueError(f"no collection with id {collection_id}")
            settings = dict(row.settings or {})
            if settings.get(FIELDS_SETTING) == wanted:
                return False
            if wanted is None:
                settings.pop(FIELDS_SETTING, None)
            else:
                settings[FIELDS_SETTING] = wanted
            row.settings = settings or None
            s.flush()
            if self.lexical:
                refresh_words(s, [int(i) for i in s.scalars(select(Item.id).where(
                    Item.collection_id == collection_id, Item.status != STATUS_DELETED))])
        log.info("catalog: lexical fields of collection %d now %s", collection_id, wanted or "every string column")
        return True

    def has_lexical(self, collection_id: int) -> bool:
        """Whether any item of the collection has words in the index."""
        if not self.lexical:
            return False
        q = (select(Item.id).join(fts, fts.c.rowid == Item.id).where(Item.collection_id == collection_id)
             if self.backend == "sqlite" else select(pg.c.item_id).where(pg.c.collection_id == collection_id))
        with self.Session() as s:
            return s.execute(q.limit(1)).first() is not None

    def lexical_search(self, collection_id: int, terms: Sequence[str], *, limit: int, where: Any = None,
                       modality: str | None = None, bound: int | None = None) -> list[tuple[Item, float | None]]:
        """The ``ok`` items of the collection whose words hold the ``terms``, at most ``limit``: those with
        all of them first, then those with any, each group best score first (ties by id); ``where`` (a
        compiled filter) and ``modality`` narrow them. The index ranks its best candidates on its own (a
        common word's thousands of matches are scored inside it; with ``bound``, only the newest ``bound``
        of them: :func:`best`), their ids are then narrowed, and only the page's items are read."""
        if not terms or not self.lexical:
            return []
        chosen: list[tuple[int, float | None]] = []
        with self.Session() as s:
            for every in ((True, False) if len(terms) > 1 else (False,)):
                chosen += self._best_ok(s, terms, every, collection_id, limit - len(chosen), where, modality,
                                        {i for i, _ in chosen}, bound)
                if len(chosen) >= limit:
                    break
            items = {int(it.id): it for it in s.scalars(_ITEMS, {"ids": [i for i, _ in chosen]})}
        return [(items[i], v) for i, v in chosen]

    def _best_ok(self, s: Any, terms: Sequence[str], every: bool, collection_id: int, limit: int, where: Any,
                 modality: str | None, skip: set[int], bound: int | None = None) -> list[tuple[int, float | None]]:
        """(id, score) of the best ``limit`` rows that hold all (``every``) or any of ``terms`` whose items
        are ok and pass the filters, ``skip`` left out; looks further (x4) when too many drop out. With
        ``bound`` on SQLite, words with at least ``bound`` matches list their newest first, unscored (None):
        see :func:`best`."""
        if bound is not None and self.backend == "sqlite":
            words = _fts_words(terms, every)
            edge = s.scalar(_EDGE, {"words": words, "skip": bound - 1})
            if edge is not None:  # the index's own order, so the items' conditions join in the same statement
                q = _NEWEST_OK.where(where) if where is not None else _NEWEST_OK
                if modality is not None:
                    q = q.where(Item.modality == modality)
                found = s.scalars(q, {"words": words, "edge": edge, "cid": collection_id, "n": limit + len(skip)})
                newest: list[tuple[int, float | None]] = [(int(i), None) for i in found if int(i) not in skip]
                return newest[:limit]
            bound = None  # fewer matches than the bound: every one scored, as unbounded
        fetch = max(4 * (limit + len(skip)), 64)
        while True:
            top = [(int(i), float(v)) for i, v in s.execute(*best(self.backend, terms, every, collection_id, fetch,
                                                                  bound)) if int(i) not in skip]
            q = _OK_AMONG
            if where is not None:
                q = q.where(where)
            if modality is not None:
                q = q.where(Item.modality == modality)
            kept = {int(i) for i in s.scalars(q, {"ids": [i for i, _ in top], "cid": collection_id})}
            chosen = sorted(((i, v) for i, v in top if i in kept), key=lambda p: (-p[1], p[0]))[:limit]
            if len(chosen) >= limit or len(top) + len(skip) < fetch:
                return cast(list[tuple[int, float | None]], chosen)  # scored: no None
            fetch *= 4

    def items_of_source(self, collection_id: int, value: str, *, where: Any = None,
                        modality: str | None = None) -> list[Item]:
        """The ``ok`` items of the manifest row whose source id is ``value`` (case-insensitive), by id."""
        value = value.strip()
        if not value:
            return []
        q = _of_source(self.backend)
        if where is not None:
            q = q.where(where)
        if modality is not None:
            q = q.where(Item.modality == modality)
        with self.Session() as s:
            return list(s.scalars(q, {"cid": collection_id, "value": value, "lower": value.lower()}))


    def _same_source(self, value: str) -> Any:
        return (Item.source_id.collate("NOCASE") == value if self.backend == "sqlite"
                else or_(func.lower(Item.source_id) == value.lower(), Item.source_id == value))

    def words_match(self, collection_id: int, text: str) -> Any:
        """A condition on items: what a lexical search for ``text`` finds, every match and not a page of them
        (the items whose words hold any of the query's terms, and the source id's own items), for counting."""
        terms = query_terms(text)
        found: list[Any] = [self._same_source(text.strip())] if text.strip() else []
        if terms and self.lexical:
            if self.backend == "sqlite":
                found.append(Item.id.in_(select(fts.c.rowid).where(
                    literal_column(TABLE).op("MATCH")(_fts_words(terms, every=False)))))
            else:
                query = _tsquery(terms, every=False)
                found.append(Item.id.in_(select(pg.c.item_id).where(pg.c.terms.op("@@")(query),
                                                                    pg.c.collection_id == collection_id)))
        return or_(*found) if found else false()


@functools.cache
def _of_source(dialect: str) -> Any:
    """The ``ok`` items whose source id is ``:value`` (case-insensitive), built once (see :func:`best`)."""
    value = bindparam("value", type_=String)
    same = (Item.source_id.collate("NOCASE") == value if dialect == "sqlite"
            else or_(func.lower(Item.source_id) == bindparam("lower", type_=String), Item.source_id == value))
    return (select(Item).where(Item.collection_id == bindparam("cid"), Item.status == STATUS_OK, same)
            .order_by(Item.id))


def best(dialect: str, terms: Sequence[str], every: bool, collection_id: int, n: int,
         bound: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(statement, its parameters): (item id, score: higher is better) of the ``n`` best rows holding all
    (``every``) or any of ``terms`` (:func:`query_terms`), from the index alone (on SQLite of every
    collection: the caller checks it). ``bound`` (PostgreSQL): score only the newest ``bound`` such rows
    (highest ids), not every one: a common word's thousands of matches cost a score each (ts_rank), the
    newest few hundred a fixed amount. SQLite bounds otherwise (``LexicalQueries._best_ok``): FTS5's bm25
    first counts every match of each word for its weight (4.5 ms for two common words at a million items),
    whatever rows it then scores, so words with at least ``bound`` matches list their newest, unscored."""
    words = _fts_words(terms, every) if dialect == "sqlite" else (" & " if every else " | ").join(terms)
    params = {"words": words, "n": n, "cid": collection_id, **({"skip": bound - 1} if bound is not None else {})}
    return _best_statement(dialect, bound is not None and dialect != "sqlite"), params


@functools.cache
def _best_statement(dialect: str, bounded: bool) -> Any:
    """:func:`best`'s statement, built once (a query's values are bound parameters): building one costs
    more Python than the SQL of a rare word takes to run."""
    words, n, skip = bindparam("words", type_=String), bindparam("n", type_=Integer), bindparam("skip", type_=Integer)
    if dialect == "sqlite":
        whole: Any = literal_column(TABLE)
        score = -func.bm25(whole, 2.0, 1.0)
        match = whole.op("MATCH")(words)
        return select(fts.c.rowid, score).where(match).order_by(score.desc()).limit(n)  # bounded: best()
    query = func.to_tsquery("simple", words)
    rank = func.ts_rank(literal_column(f"'{PG_WEIGHTS}'::float4[]"), pg.c.terms, query, 1)
    found = [pg.c.terms.op("@@")(query), pg.c.collection_id == bindparam("cid", type_=BigInteger)]
    q = select(pg.c.item_id, rank).where(*found)
    if bounded:
        q = q.where(pg.c.item_id >= func.coalesce(select(pg.c.item_id).where(*found).order_by(pg.c.item_id.desc())
                                                  .offset(skip).limit(1).scalar_subquery(), 0))
    return q.order_by(rank.desc()).limit(n)


# the other statements of a lexical search, built once: the candidates' ids narrowed; items by id; on SQLite
# the id of the :skip + 1-th newest row matching :words (None: fewer), and the ok items of the collection among
# the rows from :edge on, newest first (the index's own order: it stops at :n)
_MATCH = literal_column(TABLE).op("MATCH")(bindparam("words", type_=String))
_EDGE = select(fts.c.rowid).where(_MATCH).order_by(fts.c.rowid.desc()).offset(bindparam("skip", type_=Integer)).limit(1)
_NEWEST_OK = (select(fts.c.rowid).join_from(fts, Item, Item.id == fts.c.rowid)
              .where(_MATCH, fts.c.rowid >= bindparam("edge", type_=BigInteger), Item.collection_id == bindparam("cid"),
                     Item.status == STATUS_OK).order_by(fts.c.rowid.desc()).limit(bindparam("n", type_=Integer)))
_OK_AMONG = select(Item.id).where(Item.id.in_(bindparam("ids", expanding=True)),
                                  Item.collection_id == bindparam("cid"), Item.status == STATUS_OK)
_ITEMS = select(Item).where(Item.id.in_(bindparam("ids", expanding=True)))


def _fts_words(terms: Sequence[str], every: bool) -> str:
    """An FTS5 query holding all (``every``) or any of ``terms``, each quoted."""
    return (" AND " if every else " OR ").join('"' + t.replace('"', '""') + '"' for t in terms)


def _tsquery(terms: Sequence[str], every: bool) -> Any:
    """A tsquery holding all (``every``) or any of ``terms`` (letters and digits only: :func:`query_terms`)."""
    return func.to_tsquery("simple", (" & " if every else " | ").join(terms))
