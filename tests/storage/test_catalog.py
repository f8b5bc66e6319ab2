"""The SQL catalog on SQLite and (when XMODAL_TEST_DATABASE_URL is set) PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from xmodal.errors import ModelMismatchError, UserError
from xmodal.storage.catalog import (
    STATUS_DELETED,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    Catalog,
    EmbeddedItem,
    IndexVersion,
    ItemOutcome,
    ItemVector,
    Shard,
    uri_key,
)

pytestmark = pytest.mark.backends  # the catalog's own SQL: SQLite and PostgreSQL

H1 = "1" * 64
H2 = "2" * 64
MODEL_A = {"family": "open_clip", "model": "ViT-B-32", "pretrained": "a", "identity": "ViT-B-32|a"}
MODEL_B = {"family": "open_clip", "model": "ViT-B-32", "pretrained": "b", "identity": "ViT-B-32|b"}


@pytest.fixture
def catalog(database_url: str) -> Iterator[Catalog]:
    cat = Catalog(database_url)
    yield cat
    cat.close()


@pytest.fixture
def cid(catalog: Catalog) -> int:
    return catalog.collection_id("media", create=True)


def embedded(item_id: int, row: int, content_hash: str = H1, **meta: object) -> EmbeddedItem:
    return EmbeddedItem(item_id=item_id, row=row, content_hash=content_hash, size=100 + item_id,
                        mtime_ns=1_700_000_000_000_000_000 + item_id, meta=dict(meta))


def shard_count(catalog: Catalog) -> int:
    with catalog.Session() as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(Shard)) or 0)


def vector_rows(catalog: Catalog) -> list[tuple[int, str, int, int, str]]:
    with catalog.Session() as s:
        q = sa.select(ItemVector.item_id, ItemVector.space, ItemVector.shard_id, ItemVector.row,
                      ItemVector.content_hash).order_by(ItemVector.item_id, ItemVector.space)
        return [tuple(r) for r in s.execute(q)]  # type: ignore[misc]


# collections ----------------------------------------------------------------------------------


def test_collection_create_then_get(catalog: Catalog) -> None:
    a = catalog.collection_id("media", create=True)
    b = catalog.collection_id("notes.v2", create=True)
    assert a != b
    assert catalog.collection_id("media") == a
    assert catalog.collection_id("media", create=True) == a
    assert catalog.collection_names() == ["media", "notes.v2"]


@pytest.mark.parametrize("name", ["", "-leading-dash", ".hidden", "has space", "slash/name", "x" * 65, "ümlaut",
                                  "semi;colon"])
def test_invalid_collection_names_are_refused(catalog: Catalog, name: str) -> None:
    with pytest.raises(UserError, match="invalid collection name"):
        catalog.collection_id(name, create=True)
    assert catalog.collection_names() == []


def test_longest_valid_collection_name(catalog: Catalog) -> None:
    name = "a" + "b" * 63
    cid = catalog.collection_id(name, create=True)
    assert catalog.collection_id(name) == cid


def test_unknown_collection_lists_known_ones(catalog: Catalog) -> None:
    with pytest.raises(UserError, match="none yet"):
        catalog.collection_id("media")
    catalog.collection_id("photos", create=True)
    catalog.collection_id("docs", create=True)
    with pytest.raises(UserError) as info:
        catalog.collection_id("media")
    assert "'media'" in str(info.value)
    assert "docs, photos" in str(info.value)
    assert catalog.collection_names() == ["docs", "photos"]  # the failed lookup created nothing


def test_concurrent_get_or_create_returns_one_id(database_url: str) -> None:
    Catalog(database_url).close()  # tables exist before the racers start
    n = 8
    catalogs = [Catalog(database_url) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer(cat: Catalog) -> None:
        try:
            barrier.wait(timeout=30)
            got = cat.collection_id("race", create=True)
            with lock:
                results.append(got)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=racer, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(results) == n and len(set(results)) == 1
        assert catalogs[0].collection_names() == ["race"]
    finally:
        for c in catalogs:
            c.close()


# items ----------------------------------------------------------------------------------------


def test_add_items_returns_ids_in_input_order(catalog: Catalog, cid: int) -> None:
    uris = [f"/photos/{i:03d}.jpg" for i in range(25)][::-1]  # not sorted: order is the input's
    ids = catalog.add_items(cid, [(u, "image") for u in uris])
    assert list(ids) == uris
    values = [ids[u] for u in uris]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(isinstance(v, int) for v in values)
    states = catalog.item_states(cid)
    assert {u: s.id for u, s in states.items()} == ids  # stable: read back unchanged
    assert all(s.status == STATUS_PENDING and s.size is None and s.content_hash is None for s in states.values())
    more = catalog.add_items(cid, [("/notes/a.txt", "text")])
    assert more["/notes/a.txt"] > max(values)
    assert catalog.add_items(cid, []) == {}


def test_add_items_more_than_one_batch(catalog: Catalog, cid: int) -> None:
    uris = [f"/many/{i:05d}.png" for i in range(2300)]  # > the 1000-row insert chunk
    ids = catalog.add_items(cid, [(u, "image") for u in uris])
    values = [ids[u] for u in uris]
    assert values == sorted(values) and len(set(values)) == 2300
    found = catalog.items_by_uri(cid, uris)  # > the 500-key IN chunk
    assert {u: it.id for u, it in found.items()} == ids


def test_ids_are_int64_and_never_reused(catalog: Catalog, cid: int) -> None:
    first = catalog.add_items(cid, [("/a.jpg", "image")])["/a.jpg"]
    big = 2**40
    with catalog.engine.begin() as conn:
        if catalog.backend == "sqlite":
            conn.execute(sa.text("UPDATE sqlite_sequence SET seq = :v WHERE name = 'items'"), {"v": big})
        else:
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('items', 'id'), :v)"), {"v": big})
    ids = catalog.add_items(cid, [("/b.jpg", "image"), ("/c.jpg", "image")])
    assert ids == {"/b.jpg": big + 1, "/c.jpg": big + 2}
    assert catalog.item_by_id(cid, big + 2).uri == "/c.jpg"
    assert catalog.item_states(cid)["/b.jpg"].id == big + 1
    # a removed row's id is not handed out again (FAISS indexes hold catalog ids)
    with catalog.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM items WHERE id = :i"), {"i": big + 2})
    again = catalog.add_items(cid, [("/d.jpg", "image")])["/d.jpg"]
    assert again == big + 3
    assert first < big


@pytest.mark.parametrize("uri", [
    "/p/" + "very-long-folder-name/" * 200 + "x.jpg",  # > 3000 characters
    "/p/" + "é" * 2000 + ".jpg",  # long in bytes too
    "/p/日本語 フォルダ/写真 😀.jpg",
    "/p/line\nbreak\tand\rreturn.txt",
    "/p/quotes ' \" ; -- drop table items; %_ \\ back.jpg",
    "file:///p/caf%E9.jpg",
])
def test_uris_of_any_characters(catalog: Catalog, cid: int, uri: str) -> None:
    ids = catalog.add_items(cid, [(uri, "image"), (uri + ".2", "image")])
    assert catalog.item_states(cid)[uri].id == ids[uri]
    found = catalog.items_by_uri(cid, [uri])
    assert list(found) == [uri] and found[uri].id == ids[uri] and found[uri].uri == uri
    assert catalog.item_by_id(cid, ids[uri]).uri == uri
    assert len(uri_key(uri)) == 40


def test_uri_is_unique_per_collection_only(catalog: Catalog, cid: int) -> None:
    other = catalog.collection_id("other", create=True)
    a = catalog.add_items(cid, [("/same.jpg", "image")])["/same.jpg"]
    b = catalog.add_items(other, [("/same.jpg", "image")])["/same.jpg"]
    assert a != b
    assert catalog.items_by_uri(other, ["/same.jpg"])["/same.jpg"].id == b
    with pytest.raises(UserError, match="no item with id"):
        catalog.item_by_id(other, a)  # an id from another collection is not found here
    with pytest.raises(sa.exc.IntegrityError):
        catalog.add_items(cid, [("/same.jpg", "image")])
    assert len(catalog.item_states(cid)) == 1


def test_the_unique_index_is_on_the_fixed_width_key(catalog: Catalog) -> None:
    inspector = sa.inspect(catalog.engine)
    uniques = [sorted(c["column_names"]) for c in inspector.get_unique_constraints("items")]
    uniques += [sorted(i["column_names"]) for i in inspector.get_indexes("items") if i["unique"]]
    assert ["collection_id", "uri_key"] in uniques
    assert not any("uri" in cols for cols in uniques)  # the URI itself (unbounded text) is not indexed


def test_uri_keys_differ_for_similar_uris() -> None:
    assert uri_key("/a/b.jpg") != uri_key("/a/b.JPG")
    assert uri_key("/a/b.jpg") == uri_key("/a/b.jpg")


# spaces ---------------------------------------------------------------------------------------


def test_ensure_space_records_then_refuses_another_model(catalog: Catalog, cid: int) -> None:
    space = catalog.ensure_space(cid, "clip", "open_clip", MODEL_A, 512)
    assert (space.name, space.family, space.dim, space.model) == ("clip", "open_clip", 512, MODEL_A)
    again = catalog.ensure_space(cid, "clip", "open_clip", {**MODEL_A, "checkpoint": {"path": "/moved"}}, 512)
    assert again.id == space.id and again.model == MODEL_A  # same identity: the record is kept
    with pytest.raises(ModelMismatchError) as info:
        catalog.ensure_space(cid, "clip", "open_clip", MODEL_B, 512)
    assert "ViT-B-32 (a)" in str(info.value) and "ViT-B-32 (b)" in str(info.value)
    with pytest.raises(ModelMismatchError):
        catalog.ensure_space(cid, "clip", "other_family", MODEL_A, 512)
    assert [s.model for s in catalog.spaces(cid)] == [MODEL_A]
    other = catalog.collection_id("other", create=True)
    assert catalog.ensure_space(other, "clip", "open_clip", MODEL_B, 512).model == MODEL_B  # per collection


# shards and vectors ---------------------------------------------------------------------------


def test_commit_shard_sets_items_ok_and_writes_vectors(catalog: Catalog, cid: int) -> None:
    ids = catalog.add_items(cid, [("/a.jpg", "image"), ("/b.txt", "text"), ("/c.jpg", "image")])
    a, b, c = ids["/a.jpg"], ids["/b.txt"], ids["/c.jpg"]
    shard = catalog.commit_shard(cid, "clip", "collections/media/shards/clip/s1.parquet", 2, "f" * 64, 1234,
                                 [embedded(a, 0, width=160, height=120), embedded(b, 1, H2, chars=5)])
    items = catalog.items([a, b, c])
    assert items[a].status == STATUS_OK and items[a].reason is None
    assert (items[a].content_hash, items[a].size, items[a].mtime_ns) == (H1, 100 + a, 1_700_000_000_000_000_000 + a)
    assert items[a].meta == {"width": 160, "height": 120}
    assert items[b].content_hash == H2 and items[b].meta == {"chars": 5}
    assert items[c].status == STATUS_PENDING
    assert vector_rows(catalog) == [(a, "clip", shard, 0, H1), (b, "clip", shard, 1, H2)]
    with catalog.Session() as s:
        row = s.get(Shard, shard)
        assert row is not None
        assert (row.space, row.path, row.rows, row.sha256, row.bytes) == (
            "clip", "collections/media/shards/clip/s1.parquet", 2, "f" * 64, 1234)
    assert catalog.vector_location(a, "clip") == ("collections/media/shards/clip/s1.parquet", 0)
    assert catalog.vector_location(c, "clip") is None
    assert catalog.live_vectors(cid, "clip") == [
        (a, "image", shard, 0, "collections/media/shards/clip/s1.parquet"),
        (b, "text", shard, 1, "collections/media/shards/clip/s1.parquet"),
    ]


def test_reembed_replaces_the_vector_row(catalog: Catalog, cid: int) -> None:
    ids = catalog.add_items(cid, [("/a.jpg", "image"), ("/b.jpg", "image")])
    a, b = ids["/a.jpg"], ids["/b.jpg"]
    s1 = catalog.commit_shard(cid, "clip", "s1.parquet", 2, "1" * 64, 10, [embedded(a, 0), embedded(b, 1)])
    s2 = catalog.commit_shard(cid, "clip", "s2.parquet", 1, "2" * 64, 10, [embedded(a, 0, H2, v=2)])
    assert s2 != s1
    assert vector_rows(catalog) == [(a, "clip", s2, 0, H2), (b, "clip", s1, 1, H1)]
    live = catalog.live_vectors(cid, "clip")
    assert sorted((i, shard, row) for i, _, shard, row, _ in live) == [(a, s2, 0), (b, s1, 1)]
    assert catalog.items([a])[a].meta == {"v": 2}
    # another space holds its own row for the same item
    s3 = catalog.commit_shard(cid, "clap", "s3.parquet", 1, "3" * 64, 10, [embedded(a, 0, H2)])
    assert catalog.vector_location(a, "clip") == ("s2.parquet", 0)
    assert catalog.vector_location(a, "clap") == ("s3.parquet", 0)
    assert [r[0] for r in catalog.live_vectors(cid, "clap")] == [a]
    assert s3 not in {s1, s2}


def test_changed_content_is_not_live_until_reembedded(catalog: Catalog, cid: int) -> None:
    ids = catalog.add_items(cid, [("/a.jpg", "image"), ("/b.txt", "text"), ("/c.jpg", "image")])
    a, b, c = ids["/a.jpg"], ids["/b.txt"], ids["/c.jpg"]
    catalog.commit_shard(cid, "clip", "s1.parquet", 2, "1" * 64, 10, [embedded(a, 0), embedded(b, 1)])
    assert catalog.items_needing_vectors(cid, "clip", ["image", "text"]) == []
    # the file changed: the catalog learns its new hash before a vector for it exists
    catalog.record_outcomes([ItemOutcome(a, STATUS_OK, None, H2, 999, 5)])
    assert [r[0] for r in catalog.live_vectors(cid, "clip")] == [b]
    assert catalog.items_needing_vectors(cid, "clip", ["image", "text"]) == [a]
    assert catalog.items_needing_vectors(cid, "clip", ["text"]) == []  # modality filter
    assert catalog.items_needing_vectors(cid, "clap", ["image", "text"]) == sorted([a, b])  # no vectors there
    s2 = catalog.commit_shard(cid, "clip", "s2.parquet", 1, "2" * 64, 10, [embedded(a, 0, H2)])
    assert catalog.items_needing_vectors(cid, "clip", ["image", "text"]) == []
    assert (a, "image", s2, 0, "s2.parquet") in catalog.live_vectors(cid, "clip")
    # pending and failed items never need a vector, nor are live
    catalog.set_status([c], STATUS_FAILED, "truncated")
    catalog.set_status([b], STATUS_PENDING)
    assert catalog.items_needing_vectors(cid, "clip", ["image", "text"]) == []
    assert [r[0] for r in catalog.live_vectors(cid, "clip")] == [a]


def test_commit_shard_failure_is_atomic(catalog: Catalog, cid: int) -> None:
    a = catalog.add_items(cid, [("/a.jpg", "image")])["/a.jpg"]
    s1 = catalog.commit_shard(cid, "clip", "s1.parquet", 1, "1" * 64, 10, [embedded(a, 0)])
    before = catalog.items([a])[a]
    missing = a + 10_000
    with pytest.raises(sa.exc.IntegrityError):
        catalog.commit_shard(cid, "clip", "s2.parquet", 2, "2" * 64, 10,
                             [embedded(a, 0, H2, changed=True), embedded(missing, 1, H2)])
    assert shard_count(catalog) == 1
    assert vector_rows(catalog) == [(a, "clip", s1, 0, H1)]
    after = catalog.items([a])[a]
    assert (after.status, after.content_hash, after.size, after.mtime_ns, after.meta) == (
        before.status, before.content_hash, before.size, before.mtime_ns, before.meta)
    assert catalog.items([missing]) == {}
    # the catalog is still usable afterwards
    s3 = catalog.commit_shard(cid, "clip", "s3.parquet", 1, "3" * 64, 10, [embedded(a, 0, H2)])
    assert vector_rows(catalog) == [(a, "clip", s3, 0, H2)]


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "catalog.sqlite"
    cat = Catalog(f"sqlite:///{db}")  # creates the folder
    try:
        with cat.engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() > 0
        assert db.is_file() and Path(f"{db}-wal").exists()
    finally:
        cat.close()


# outcomes and counts --------------------------------------------------------------------------


def test_failures_and_counts(catalog: Catalog, cid: int) -> None:
    ids = catalog.add_items(cid, [("/z.jpg", "image"), ("/a.jpg", "image"), ("/m.txt", "text"),
                                  ("/ok.jpg", "image"), ("/gone.txt", "text"), ("/gone.jpg", "image")])
    catalog.record_outcomes([
        ItemOutcome(ids["/z.jpg"], STATUS_FAILED, "truncated image", "9" * 64, 12, 34),
        ItemOutcome(ids["/a.jpg"], STATUS_FAILED, "not a regular file", None, None, None),
        ItemOutcome(ids["/m.txt"], STATUS_FAILED, "not UTF-8", None, 3, 4),
    ])
    catalog.record_outcomes([])  # nothing to do is fine
    catalog.commit_shard(cid, "clip", "s.parquet", 1, "1" * 64, 1, [embedded(ids["/ok.jpg"], 0)])
    catalog.set_status([ids["/gone.txt"], ids["/gone.jpg"]], STATUS_DELETED)
    assert catalog.failures(cid) == [
        ("/a.jpg", "not a regular file"), ("/m.txt", "not UTF-8"), ("/z.jpg", "truncated image")]
    assert catalog.failures(cid, limit=1) == [("/a.jpg", "not a regular file")]
    z = catalog.items([ids["/z.jpg"]])[ids["/z.jpg"]]
    assert (z.content_hash, z.size, z.mtime_ns) == ("9" * 64, 12, 34)
    assert catalog.counts(cid) == {
        "status": {STATUS_FAILED: 3, STATUS_OK: 1, STATUS_DELETED: 2},
        "modality": {"image": 3, "text": 1},
    }
    with pytest.raises(UserError):
        catalog.item_by_id(cid, ids["/gone.jpg"])  # deleted items are not found by id
    # a deleted item keeps its id and its state for the scanner
    assert catalog.item_states(cid)["/gone.jpg"].id == ids["/gone.jpg"]
    assert catalog.item_states(cid)["/gone.jpg"].status == STATUS_DELETED
    other = catalog.collection_id("other", create=True)
    assert catalog.counts(other) == {"status": {}, "modality": {}}
    assert catalog.failures(other) == []


def test_a_retried_failure_clears_its_reason(catalog: Catalog, cid: int) -> None:
    a = catalog.add_items(cid, [("/a.jpg", "image")])["/a.jpg"]
    catalog.record_outcomes([ItemOutcome(a, STATUS_FAILED, "truncated", None, 1, 2)])
    catalog.commit_shard(cid, "clip", "s.parquet", 1, "1" * 64, 1, [embedded(a, 0)])
    item = catalog.items([a])[a]
    assert (item.status, item.reason) == (STATUS_OK, None)
    assert catalog.failures(cid) == []


# index versions -------------------------------------------------------------------------------


def publish(catalog: Catalog, cid: int, space: str, version: int) -> None:
    catalog.publish_index(cid, space, version, f"indexes/{space}/v{version:06d}", "flat", 10 * version,
                          1000, f"{version:064d}", {"recall_at_10": 1.0}, 0.5)


def published(catalog: Catalog, cid: int, space: str) -> list[int]:
    with catalog.Session() as s:
        q = sa.select(IndexVersion.version).where(
            IndexVersion.collection_id == cid, IndexVersion.space == space, IndexVersion.status == "published")
        return list(s.scalars(q))


def test_publish_supersedes_previous_version(catalog: Catalog, cid: int) -> None:
    assert catalog.published_index(cid, "clip") is None
    assert catalog.next_index_version(cid, "clip") == 1
    publish(catalog, cid, "clip", 1)
    assert catalog.next_index_version(cid, "clip") == 2
    publish(catalog, cid, "clap", 1)
    publish(catalog, cid, "clip", 2)
    assert catalog.next_index_version(cid, "clip") == 3
    assert catalog.next_index_version(cid, "clap") == 2
    current = catalog.published_index(cid, "clip")
    assert current is not None
    assert (current.version, current.path, current.n_vectors, current.summary) == (
        2, "indexes/clip/v000002", 20, {"recall_at_10": 1.0})
    assert published(catalog, cid, "clip") == [2]
    assert published(catalog, cid, "clap") == [1]  # other spaces untouched
    with catalog.Session() as s:
        statuses = dict(s.execute(sa.select(IndexVersion.version, IndexVersion.status).where(
            IndexVersion.space == "clip")).all())
    assert statuses == {1: "superseded", 2: "published"}
    other = catalog.collection_id("other", create=True)
    assert catalog.published_index(other, "clip") is None
    assert catalog.next_index_version(other, "clip") == 1


def test_failed_publish_keeps_the_previous_version(catalog: Catalog, cid: int) -> None:
    publish(catalog, cid, "clip", 1)
    publish(catalog, cid, "clip", 2)
    with pytest.raises(sa.exc.IntegrityError):
        publish(catalog, cid, "clip", 2)  # the version exists: the whole publish rolls back
    assert published(catalog, cid, "clip") == [2]
    assert catalog.next_index_version(cid, "clip") == 3


# opening --------------------------------------------------------------------------------------


def test_open_without_create_refuses_missing_catalog(database_url: str, tmp_path: Path) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        db = Path(url.database or "")
        assert not db.exists()
        with pytest.raises(UserError, match="no catalog at"):
            Catalog(database_url, create=False)
        assert not db.exists() and not Path(f"{db}-wal").exists()
        nested = tmp_path / "not" / "here" / "catalog.sqlite"
        with pytest.raises(UserError, match="run `xmodal index` first"):
            Catalog(f"sqlite:///{nested}", create=False)
        assert not (tmp_path / "not").exists()
        db.touch()  # an empty file is not a catalog either
        with pytest.raises(UserError, match="no xmodal catalog"):
            Catalog(database_url, create=False)
    else:
        with pytest.raises(UserError, match="no xmodal catalog") as info:
            Catalog(database_url, create=False)
        assert "run `xmodal index` first" in str(info.value)
    Catalog(database_url).close()
    reopened = Catalog(database_url, create=False)
    try:
        assert reopened.collection_names() == []
    finally:
        reopened.close()


def test_data_survives_reopening(database_url: str) -> None:
    cat = Catalog(database_url)
    cid = cat.collection_id("media", create=True)
    a = cat.add_items(cid, [("/a.jpg", "image")])["/a.jpg"]
    cat.ensure_space(cid, "clip", "open_clip", MODEL_A, 64)
    cat.close()
    again = Catalog(database_url, create=False)
    try:
        assert again.collection_id("media") == cid
        assert again.item_states(cid)["/a.jpg"].id == a
        assert [s.dim for s in again.spaces(cid)] == [64]
    finally:
        again.close()


def test_a_catalog_from_before_manifests_gains_their_columns_and_keeps_its_rows(database_url: str) -> None:
    old = Catalog(database_url)
    cid = old.collection_id("c", create=True)
    ids = old.add_items(cid, [("/m/a.jpg", "image")])
    old.close()
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:  # the items table as an earlier xmodal made it
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP INDEX ix_items_source_id")
        conn.exec_driver_sql("DROP INDEX ix_items_collection_updated")
        conn.exec_driver_sql("DROP INDEX ix_items_collection_hidden")  # the partial index of hidden_since
        conn.exec_driver_sql("DROP TABLE item_lexical")  # the full-text index came later still
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_items_source_nocase")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_items_source_lower")
        for column in ("source_id", "source_column", "source_digest", "source_meta"):
            conn.exec_driver_sql(f"ALTER TABLE items DROP COLUMN {column}")
    assert "source_id" not in {c["name"] for c in sa.inspect(engine).get_columns("items")}
    engine.dispose()

    catalog = Catalog(database_url)
    try:
        inspector = sa.inspect(catalog.engine)
        assert {"source_id", "source_column", "source_digest", "source_meta"} <= {
            c["name"] for c in inspector.get_columns("items")}
        assert any(ix["column_names"] == ["source_id"] for ix in inspector.get_indexes("items"))
        assert any(ix["column_names"] == ["collection_id", "updated_at"] for ix in inspector.get_indexes("items"))
        assert "ix_items_collection_hidden" in {ix["name"] for ix in inspector.get_indexes("items")}
        assert inspector.has_table("item_lexical") and catalog.lexical
        assert catalog.item_states(cid)["/m/a.jpg"].id == ids["/m/a.jpg"]
        new = catalog.add_source_items(cid, [("manifest:P1#image", "https://x/p1.jpg", "image", "P1", "image")])
        assert catalog.manifest_states(cid)["manifest:P1#image"].id == new["manifest:P1#image"]
        assert "https://x/p1.jpg" not in catalog.item_states(cid)  # file runs never see manifest items
    finally:
        catalog.close()
    Catalog(database_url).close()  # opening an up-to-date catalog changes nothing


def test_a_space_that_embeds_part_of_a_modality_needs_vectors_only_for_items_that_have_it(
        catalog: Catalog, cid: int) -> None:
    ids = catalog.add_items(cid, [("/loud.mp4", "video"), ("/mute.mp4", "video"), ("/old.mp4", "video"),
                                  ("/s.wav", "audio")])
    loud, mute, old, wav = ids["/loud.mp4"], ids["/mute.mp4"], ids["/old.mp4"], ids["/s.wav"]
    catalog.commit_shard(cid, "clip", "s1.parquet", 3, "1" * 64, 10,
                         [embedded(loud, 0, has_audio=True), embedded(mute, 1, has_audio=False), embedded(old, 2)])
    catalog.commit_shard(cid, "clip", "s2.parquet", 1, "2" * 64, 10, [embedded(wav, 0)])
    sound = [("video", "has_audio")]
    # a video with sound lacks its sound vector; a silent one, or one without the flag, needs none
    assert catalog.items_needing_vectors(cid, "clap", ["audio", "video"], sound) == sorted([loud, wav])
    assert catalog.items_needing_vectors(cid, "clap", ["audio", "video"]) == sorted([loud, mute, old, wav])
    catalog.commit_shard(cid, "clap", "s3.parquet", 2, "3" * 64, 10,
                         [embedded(loud, 0, has_audio=True), embedded(wav, 1)])
    assert catalog.items_needing_vectors(cid, "clap", ["audio", "video"], sound) == []
