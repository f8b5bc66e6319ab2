"""``xmodal index --manifest``: product rows become items per media column, grouped by the source id;
reruns apply inserts, media updates, metadata-only updates and deletes; http media against a local
server that is slow, failing, flaky and oversized."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    MEDIA,
    Crash,
    cli_json,
    crash_once_at,
    photo,
    products,
    write_csv,
    write_photos,
    write_sounds,
)

from xmodal.cli import main
from xmodal.indexer.pipeline import index_manifest, plan_manifest
from xmodal.search.engine import Searcher
from xmodal.search.filters import compile_filter, metadata_fields
from xmodal.storage.catalog import STATUS_DELETED, STATUS_FAILED, STATUS_OK, Catalog, Item
from xmodal.storage.layout import Layout
from xmodal.storage.shards import read_shard


def items(settings: Any, collection: str = "c") -> dict[tuple[str, str], Item]:
    """(source id, column) -> item, of every manifest item."""
    catalog = Catalog(settings.resolved_database_url)
    try:
        cid = catalog.collection_id(collection)
        with catalog.Session() as s:
            from sqlalchemy import select

            rows = list(s.scalars(select(Item).where(Item.collection_id == cid)))
    finally:
        catalog.close()
    return {(it.source_id, it.source_column): it for it in rows}


def snapshot(settings: Any) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {k: (it.status, it.uri, it.source_digest, it.meta, it.content_hash) for k, it in items(settings).items()}


def shard_rows(settings: Any, space: str = "clip") -> list[int]:
    """Every item id in every shard of the space, with repeats (a re-embedded item appears again)."""
    folder = Layout(settings.home).shard_dir("c", space)
    return [int(i) for f in sorted(folder.glob("*.parquet")) for i in read_shard(f)[0]]


def vector_location(settings: Any, item_id: int) -> tuple[str, int] | None:
    catalog = Catalog(settings.resolved_database_url)
    try:
        return catalog.vector_location(item_id, "clip")
    finally:
        catalog.close()


def search(settings: Any, text: str, k: int = 50, filters: Any = None) -> list[dict[str, Any]]:
    s = Searcher(settings, "c")
    try:
        where = compile_filter(filters, metadata_fields(s.catalog, s.collection_id)) if filters else None
        return [r.as_dict() for r in s.run(text=text, k=k, where=where).results]
    finally:
        s.close()


def test_rows_become_one_item_per_media_with_typed_filterable_metadata(settings, tmp_path):
    rows = products(tmp_path, 6)
    manifest = write_csv(tmp_path / "products.csv", rows)
    summary = index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    assert (summary.embedded, summary.failed, summary.manifest["inserted"], summary.manifest["rows"]) == (12, 0, 12, 6)
    got = items(settings)
    assert set(got) == {(r["id"], col) for r in rows for col in ("image", "title")}
    boot = got[("SKU-003", "image")]
    assert boot.status == STATUS_OK and boot.modality == "image" and boot.uri == str(tmp_path / "img" / "photo_0003.jpg")
    assert boot.meta["price"] == 13.5 and boot.meta["tags"] == ["red", "size0"] and boot.meta["brand"] == "Acme"
    assert boot.meta["width"] == 160  # the decoded media's own metadata is kept beside the manifest's
    assert got[("SKU-003", "title")].modality == "text" and got[("SKU-003", "title")].uri == "manifest:SKU-003#title"

    results = search(settings, "leather boot", filters={"and": [{"field": "category", "op": "eq", "value": "shoes"},
                                                               {"field": "price", "op": "lt", "value": 14}]})
    assert {r["source"]["id"] for r in results} == {"SKU-001", "SKU-003"}
    assert {r["source"]["column"] for r in results} == {"image", "title"}
    assert all(r["metadata"]["category"] == "shoes" for r in results)
    only = search(settings, "x", filters={"field": "source_id", "op": "eq", "value": "SKU-004"})
    assert sorted(r["modality"] for r in only) == ["image", "text"]
    tagged = search(settings, "x", filters={"field": "tags", "op": "eq", "value": "size2"})
    assert {r["source"]["id"] for r in tagged} == {"SKU-002", "SKU-005"}


@pytest.mark.backends  # the catalog's SQL matters here
def test_rerun_applies_inserts_media_updates_metadata_only_changes_and_deletes(settings, tmp_path):
    rows = products(tmp_path, 8)
    manifest = write_csv(tmp_path / "p.csv", rows)
    index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    before = items(settings)
    snapshot_before = snapshot(settings)
    kept_vector = vector_location(settings, before[("SKU-002", "image")].id)
    shards_before = shard_rows(settings)

    again = index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    assert again.embedded == 0 and again.manifest["unchanged"] == 16
    assert again.index["clip"]["built"] is False

    photo(99).save(tmp_path / "img" / "new.jpg")
    photo(77).save(tmp_path / "img" / "other.jpg")
    rows[1]["image"] = "img/other.jpg"  # new media: fetched and embedded again
    rows[2]["price"] = "99.00"  # metadata only: written in place, vector kept
    rows[3]["title"] = "suede boot"  # inline text changed: embedded again
    del rows[4]  # deleted: both its items
    rows.append({"id": "SKU-NEW", "image": "img/new.jpg", "title": "brand new sandal", "category": "shoes",
                 "price": "5", "brand": "Acme", "tags": "new"})
    write_csv(manifest, rows)
    plan = plan_manifest(settings, manifest, "c", media=MEDIA)
    # metadata only: SKU-002's two items (price) and SKU-003's image (its row's title is one of its fields)
    assert (plan["inserted"], plan["updated"], plan["metadata_updated"], plan["deleted"]) == (2, 2, 3, 2)
    assert snapshot(settings) == snapshot_before  # the plan wrote nothing
    assert shard_rows(settings) == shards_before

    summary = index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    m = summary.manifest
    assert (m["inserted"], m["updated"], m["metadata_updated"], m["deleted"]) == (2, 2, 3, 2)
    assert summary.embedded == 4  # the new row's two media, the moved image, the changed title
    after = items(settings)
    assert after[("SKU-004", "image")].status == STATUS_DELETED and after[("SKU-004", "title")].status == STATUS_DELETED
    assert after[("SKU-001", "image")].uri.endswith("other.jpg") and after[("SKU-001", "image")].id == before[("SKU-001", "image")].id
    assert after[("SKU-003", "title")].meta["snippet"] == "suede boot"
    assert after[("SKU-003", "image")].meta["title"] == "suede boot"  # the row's new title, the image not embedded
    assert vector_location(settings, after[("SKU-003", "image")].id) == vector_location(
        settings, before[("SKU-003", "image")].id)
    meta_only = after[("SKU-002", "image")]
    assert meta_only.meta["price"] == 99.0 and meta_only.meta["width"] == 160
    assert vector_location(settings, meta_only.id) == kept_vector  # not embedded again
    assert after[("SKU-002", "title")].meta["price"] == 99.0
    # every live item exactly once in the published index, deleted ones gone from results
    results = search(settings, "boot")
    assert len({r["id"] for r in results}) == len(results) == 16
    assert "SKU-004" not in {r["source"]["id"] for r in results}
    pricey = search(settings, "x", filters={"field": "price", "op": "gt", "value": 50})
    assert {r["source"]["id"] for r in pricey} == {"SKU-002"}
    # the shards gained exactly the 4 new vectors
    assert len(shard_rows(settings)) == len(shards_before) + 4

    # a deleted row that comes back is the same item again
    rows.append({"id": "SKU-004", "image": "img/photo_0004.jpg", "title": "leather boot model 4"})
    write_csv(manifest, rows)
    back = index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    assert back.manifest["inserted"] == 2 and items(settings)[("SKU-004", "image")].id == before[("SKU-004", "image")].id
    assert items(settings)[("SKU-004", "image")].status == STATUS_OK


def test_a_local_file_changed_in_place_is_embedded_again(settings, tmp_path):
    rows = products(tmp_path, 3)
    manifest = write_csv(tmp_path / "p.csv", rows)
    index_manifest(settings, manifest, "c", media={"image": "image"}, progress=False)
    first = items(settings)[("SKU-001", "image")]
    photo(55, size=(200, 150)).save(tmp_path / "img" / "photo_0001.jpg")
    summary = index_manifest(settings, manifest, "c", media={"image": "image"}, progress=False)
    assert summary.embedded == 1
    now = items(settings)[("SKU-001", "image")]
    assert now.content_hash != first.content_hash and now.meta["width"] == 200


def test_formats_csv_jsonl_parquet_give_the_same_items(settings, tmp_path):
    rows = products(tmp_path, 4)
    for r in rows:
        r["price"] = float(r["price"])
        r["tags"] = r["tags"].split("|")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    seen = []
    for i, name in enumerate(["p.jsonl", "p.parquet"]):
        s = settings.model_copy(update={"home": tmp_path / f"h{i}", "database_url": f"sqlite:///{tmp_path}/c{i}.sqlite"})
        index_manifest(s, tmp_path / name, "c", media=MEDIA, progress=False)
        seen.append({k: (it.modality, it.status, it.content_hash, it.meta) for k, it in items(s).items()})
    assert seen[0] == seen[1] and len(seen[0]) == 8
    assert seen[0][("SKU-002", "image")][3]["tags"] == ["red", "size2"]


def test_bad_rows_are_reported_and_deletes_held_when_an_id_is_unreadable(settings, tmp_path, capsys):
    rows = products(tmp_path, 4)
    manifest = tmp_path / "p.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    lines = [json.dumps(r) for r in rows[:2]] + ['{"id": "SKU-003", broken json'] + [json.dumps({"id": "SKU-009"})]
    manifest.write_text("\n".join(lines) + "\n")
    summary = index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
    assert summary.deleted == 0 and summary.manifest["held"] == 4  # SKU-002 and SKU-003 left, but a row is unreadable
    assert summary.manifest["problem_count"] == 2 and summary.manifest["skipped_rows"] == 2
    assert any("held" in w or "not deleted" in w for w in summary.warnings)
    assert all(it.status == STATUS_OK for it in items(settings).values())
    # the CLI says partial (a row was skipped): exit 3, and the report names the problems
    report = tmp_path / "run.json"
    out = cli_json(capsys, ["--home", str(settings.home), "--database-url", settings.resolved_database_url,
                            "index", "--manifest", str(manifest), "-c", "c", "--media", "image=image",
                            "--media", "title=text", "--clip-model", settings.clip_model, "--clip-pretrained",
                            settings.clip_pretrained, "--json", "--no-progress", "--report", str(report)], code=3)
    assert out["manifest"]["held"] == 4
    written = json.loads(report.read_text())
    assert written["status"] == "partial" and written["exit_code"] == 3 and written["manifest"]["problems"]


def test_cli_manifest_and_dry_run(settings, tmp_path, capsys):
    rows = products(tmp_path, 3)
    manifest = write_csv(tmp_path / "p.csv", rows)
    base = ["--home", str(settings.home), "--database-url", settings.resolved_database_url]
    model = ["--clip-model", settings.clip_model, "--clip-pretrained", settings.clip_pretrained]
    plan = cli_json(capsys, [*base, "index", "--manifest", str(manifest), "-c", "c", "--media", "image",
                             "--media", "title=text", "--dry-run", "--json", *model])
    assert plan["inserted"] == 6 and plan["collection_exists"] is False
    done = cli_json(capsys, [*base, "index", "--manifest", str(manifest), "-c", "c", "--media", "image",
                             "--media", "title=text", "--json", "--no-progress", *model])
    assert done["ok"] == 6 and done["manifest"]["inserted"] == 6
    plan = cli_json(capsys, [*base, "index", "--manifest", str(manifest), "-c", "c", "--media", "image",
                             "--media", "title=text", "--dry-run", "--json", *model])
    assert plan["unchanged"] == 6 and plan["would_rebuild_index"] is False
    # folders and a manifest together, a bad --column-type, a manifest without its media column: exit 2
    for argv in ([*base, "index", str(tmp_path), "--manifest", str(manifest), "-c", "c"],
                 [*base, "index", "--manifest", str(manifest), "-c", "c", "--column-type", "price"],
                 [*base, "index", "--manifest", str(manifest), "-c", "c", "--media", "photo"]):
        assert main(argv) == 2
        assert "error" in capsys.readouterr().err.lower()


@pytest.mark.parametrize("point", ["after-scan", "after-encode-batch", "before-shard-commit", "after-shard-commit",
                                   "before-publish"])
@pytest.mark.backends  # the catalog's SQL matters here
def test_killed_manifest_run_then_rerun_embeds_each_entry_once(settings, tmp_path, point):
    rows = products(tmp_path, 12)
    manifest = write_csv(tmp_path / "p.csv", rows)
    s = settings.model_copy(update={"shard_rows": 5, "batch_size": 2})
    index_manifest(s, manifest, "c", media=MEDIA, progress=False)
    rows[0]["image"] = "img/photo_0005.jpg"
    rows[1]["price"] = "1.00"
    rows[2]["title"] = "changed"
    photo(123).save(tmp_path / "img" / "late.jpg")
    rows.append({"id": "SKU-LATE", "image": "img/late.jpg", "title": "late arrival"})
    write_csv(manifest, rows)
    with pytest.raises(Crash):
        index_manifest(s, manifest, "c", media=MEDIA, progress=False, crash_at=crash_once_at(point))
    summary = index_manifest(s, manifest, "c", media=MEDIA, progress=False)
    assert summary.failed == 0
    got = items(s)
    assert got[("SKU-000", "image")].uri.endswith("photo_0005.jpg")
    assert got[("SKU-000", "image")].content_hash == got[("SKU-005", "image")].content_hash
    assert got[("SKU-001", "image")].meta["price"] == 1.0 and got[("SKU-002", "title")].meta["snippet"] == "changed"
    # exactly once: 26 originals + the 4 new contents, whichever run embedded them
    assert len(shard_rows(s)) == 24 + 4
    assert sorted(set(shard_rows(s))) == sorted(it.id for it in got.values())
    third = index_manifest(s, manifest, "c", media=MEDIA, progress=False)
    assert third.embedded == 0 and third.manifest["unchanged"] == 26


def test_audio_and_images_from_a_manifest_without_extensions_are_told_apart_by_their_bytes(
        settings, tiny_clap, tmp_path, http):
    settings = settings.model_copy(update={"audio_model": tiny_clap})
    sounds = write_sounds(tmp_path / "snd", 2)
    http.files["/media/a1"] = sounds[0].read_bytes()
    http.files["/media/p1"] = (write_photos(tmp_path / "img", 1)[0]).read_bytes()
    http.files["/media/notes"] = b"just some words, not media\n"
    manifest = write_csv(tmp_path / "m.csv", [
        {"id": "1", "uri": http.url("/media/a1")}, {"id": "2", "uri": http.url("/media/p1")},
        {"id": "3", "uri": http.url("/media/notes")}, {"id": "4", "uri": str(sounds[1])}])
    summary = index_manifest(settings, manifest, "c", progress=False)
    got = items(settings)
    assert got[("1", "uri")].modality == "audio" and got[("1", "uri")].status == STATUS_OK
    assert got[("2", "uri")].modality == "image" and got[("2", "uri")].status == STATUS_OK
    assert got[("4", "uri")].modality == "audio" and got[("4", "uri")].status == STATUS_OK
    assert got[("3", "uri")].status == STATUS_FAILED and "not an image, audio or video file" in got[("3", "uri")].reason
    assert summary.failed == 1


# --- http sources ---------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}  # path -> slow | 500 | 404 | flaky:N (N failures first) | huge
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow response: expected here


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.hits[self.path] = hits = srv.hits.get(self.path, 0) + 1
        how = srv.behaviour.get(self.path, "")
        if how == "slow":
            time.sleep(3)
        elif how in ("500", "404", "503"):
            self.send_response(int(how))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        elif how.startswith("flaky:") and hits <= int(how.split(":")[1]):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        elif how == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_media_slow_failing_flaky_and_oversized(settings, tmp_path, http):
    settings = settings.model_copy(update={"fetch_timeout": 1.0, "fetch_deadline": 4.0, "fetch_retries": 2,
                                           "max_file_bytes": 5_000_000})
    photos = write_photos(tmp_path / "img", 40)
    rows = []
    for i, p in enumerate(photos):  # 40 good ones: enough to start the decode worker pool
        http.files[f"/p/{i}.jpg"] = p.read_bytes()
        rows.append({"id": f"ok{i}", "uri": http.url(f"/p/{i}.jpg"), "price": i})
    http.files["/p/flaky.jpg"] = photos[0].read_bytes()
    http.behaviour.update({"/p/slow.jpg": "slow", "/p/e500.jpg": "500", "/p/e404.jpg": "404",
                           "/p/flaky.jpg": "flaky:2", "/p/huge.jpg": "huge"})
    for name in ("slow", "e500", "e404", "flaky", "huge"):
        rows.append({"id": name, "uri": http.url(f"/p/{name}.jpg"), "price": 1})
    manifest = write_csv(tmp_path / "m.csv", rows)
    t0 = time.monotonic()
    summary = index_manifest(settings, manifest, "c", progress=False)
    assert time.monotonic() - t0 < 60  # the slow server costs its deadline, not forever
    got = items(settings)
    assert all(got[(f"ok{i}", "uri")].status == STATUS_OK for i in range(40))
    assert got[("flaky", "uri")].status == STATUS_OK and http.hits["/p/flaky.jpg"] == 3  # two 503s, then the image
    reasons = {name: got[(name, "uri")].reason or "" for name in ("slow", "e500", "e404", "huge")}
    assert all(got[(n, "uri")].status == STATUS_FAILED for n in reasons)
    assert reasons["slow"].startswith("temporary: ") and "timeout" in reasons["slow"]
    assert reasons["e500"].startswith("temporary: ") and "500" in reasons["e500"]
    assert not reasons["e404"].startswith("temporary") and "404" in reasons["e404"]
    assert not reasons["huge"].startswith("temporary") and "too large" in reasons["huge"]
    assert http.hits["/p/e404.jpg"] == 1 and http.hits["/p/e500.jpg"] == 3  # 4xx final at once, 5xx retried
    assert summary.failed == 4

    # the next run fetches only the temporary failures again (the server is fixed meanwhile); a 404 waits
    # for --retry-failed, and nothing that worked is fetched again
    http.behaviour.clear()
    http.files["/p/slow.jpg"] = http.files["/p/e500.jpg"] = photos[1].read_bytes()
    hits = dict(http.hits)
    again = index_manifest(settings, manifest, "c", progress=False)
    got = items(settings)
    assert got[("slow", "uri")].status == STATUS_OK and got[("e500", "uri")].status == STATUS_OK
    assert got[("e404", "uri")].status == STATUS_FAILED and again.embedded == 2
    assert http.hits["/p/0.jpg"] == hits["/p/0.jpg"] and http.hits["/p/e404.jpg"] == hits["/p/e404.jpg"]


@pytest.mark.backends  # the catalog's SQL matters here
def test_local_files_are_roots_and_a_link_out_of_its_folder_is_refused(settings: Any, tmp_path: Path) -> None:
    from xmodal.indexer.scan import OUTSIDE

    rows = products(tmp_path, 3)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    photo(99).save(outside / "secret.jpg")
    (tmp_path / "img" / "linked.jpg").symlink_to(outside / "secret.jpg")
    rows.append({"id": "SKU-LINK", "image": "img/linked.jpg", "title": "a link out", "category": "shoes"})
    summary = index_manifest(settings, write_csv(tmp_path / "p.csv", rows), "c", media=MEDIA, progress=False)
    got = items(settings)
    assert (got["SKU-LINK", "image"].status, got["SKU-LINK", "image"].reason) == (STATUS_FAILED, OUTSIDE)
    assert got["SKU-000", "image"].status == STATUS_OK and summary.failed == 1
    catalog = Catalog(settings.resolved_database_url)
    try:
        roots = catalog.source_roots(catalog.collection_id("c"))
    finally:
        catalog.close()
    assert roots == [str((tmp_path / "img").resolve())]  # the folder the manifest's files are in, nothing more

    allowed = settings.model_copy(update={"follow_external_symlinks": True})
    index_manifest(allowed, write_csv(tmp_path / "p.csv", rows), "c", media=MEDIA, progress=False,
                   retry_failed=True)
    assert items(settings)["SKU-LINK", "image"].status == STATUS_OK
    catalog = Catalog(settings.resolved_database_url)
    try:
        roots = catalog.source_roots(catalog.collection_id("c"))
    finally:
        catalog.close()
    assert str((outside / "secret.jpg").resolve()) in roots
