"""The service as an attacker and a fuzzer meet it (issue 12): only indexed files from under the sources,
4xx and never a 500 for hostile input, bounded cost per request, settings that are enforced.

One real app in a real uvicorn server in this process (``helpers.live_app``), on a small collection
whose sources hold a link to a file outside them and a link to a folder outside them, made before
indexing.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import live_app, photo, write_photos, write_texts
from PIL import Image

from xmodal.config import Settings
from xmodal.errors import Cancelled
from xmodal.indexer.pipeline import index_sources
from xmodal.indexer.scan import OUTSIDE
from xmodal.media.types import MediaLimits
from xmodal.storage.catalog import Catalog

MAX_UPLOAD = 300_000
SECRET = "TOP SECRET: not part of any source"


@dataclass
class Served:
    base: str
    service: object
    settings: Settings
    media: Path
    outside: Path
    client: httpx.Client

    def item_id(self, path: Path) -> int:
        catalog = Catalog(self.settings.resolved_database_url, create=False)
        try:
            (item,) = catalog.items_by_uri(catalog.collection_id("shop"), [str(path)]).values()
            return int(item.id)
        finally:
            catalog.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str]) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hardening")
    media = root / "src"
    write_photos(media / "jpg", 6)
    write_texts(media / "text", {"acl2-doc.txt": "Access control lists, second edition.", "notes.md": "# Notes"})
    outside = root / "outside"
    write_texts(outside, {"secret.txt": SECRET})
    (media / "text" / "zz.txt").symlink_to(outside / "secret.txt")  # made before indexing
    (media / "linked").symlink_to(outside, target_is_directory=True)
    (media / "jpg" / "alias.jpg").symlink_to(media / "jpg" / "photo_0000.jpg")  # a link inside the sources
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1], batch_size=16,
                        exact_threshold=1000, max_upload_bytes=MAX_UPLOAD, max_query_chars=40,
                        query_max_image_pixels=4_000_000, query_concurrency=1, request_header_timeout=1.0,
                        request_body_timeout=1.0, request_body_seconds=3.0, index_poll_seconds=0.3)
    summary = index_sources(settings, [media], "shop", progress=False)
    assert summary.failed == 1 and any("not walked" in w for w in summary.warnings), summary
    with live_app(settings, "shop") as (base, service), httpx.Client(base_url=base, timeout=30) as client:
        yield Served(base, service, settings, media, outside, client)


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return dict(response.json())


def err(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["message"], body
    return dict(body)


# 1. files outside the sources -------------------------------------------------------------------------


def test_a_link_swapped_in_after_indexing_is_not_followed(served: Served) -> None:
    doc = served.media / "text" / "acl2-doc.txt"
    original = doc.read_bytes()
    item = served.item_id(doc)
    assert served.client.get(f"/v1/items/{item}/media").content == original
    try:
        doc.unlink()
        doc.symlink_to(served.outside / "secret.txt")  # ln -sf /etc/hostname src/text/acl2-doc.txt
        body = err(served.client.get(f"/v1/items/{item}/media"), 404)
        assert "outside the collection's sources" in body["message"] and SECRET not in body["message"]
        doc.unlink()
        doc.symlink_to(served.media / "text" / "notes.md")  # inside the sources, other content
        assert "changed since it was indexed" in err(served.client.get(f"/v1/items/{item}/media"), 409)["message"]
        doc.unlink()
        doc.write_bytes(b"Access control lists, third edition.")  # same path, other content
        err(served.client.get(f"/v1/items/{item}/media"), 409)
    finally:
        doc.unlink()
        doc.write_bytes(original)
    assert served.client.get(f"/v1/items/{item}/media").content == original  # put back: same bytes, served


def test_a_link_out_of_the_sources_made_before_indexing_was_not_indexed(served: Served) -> None:
    catalog = Catalog(served.settings.resolved_database_url, create=False)
    try:
        cid = catalog.collection_id("shop")
        link = served.media / "text" / "zz.txt"
        (item,) = catalog.items_by_uri(cid, [str(link)]).values()
        assert (item.status, item.reason) == ("failed", OUTSIDE)
        assert not catalog.items_by_uri(cid, [str(served.media / "linked" / "secret.txt")])  # folder not walked
        alias = catalog.items_by_uri(cid, [str(served.media / "jpg" / "alias.jpg")])
        assert [i.status for i in alias.values()] == ["ok"]  # a link inside the sources is followed
        assert catalog.source_roots(cid) == [os.path.realpath(served.media)]
    finally:
        catalog.close()
    err(served.client.get(f"/v1/items/{item.id}/media"), 404)
    hits = ok(served.client.post("/v1/search", json={"collection": "shop", "text": "secret", "k": 50}))["results"]
    assert all("secret" not in r["uri"] and "zz.txt" not in r["uri"] for r in hits)


def test_following_links_out_is_a_setting_and_is_recorded(tmp_path: Path, tiny_clip: tuple[str, str]) -> None:
    from xmodal.api.service import Service

    media, outside = tmp_path / "src", tmp_path / "outside"
    write_texts(outside, {"shared.txt": "A text kept outside the sources."})
    write_texts(media, {"own.txt": "A text of its own."})
    (media / "shared.txt").symlink_to(outside / "shared.txt")
    settings = Settings(home=tmp_path / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        follow_external_symlinks=True)
    assert index_sources(settings, [media], "c", progress=False).failed == 0
    service = Service(settings, ["c"])
    service.start()
    try:
        assert service.ready.wait(60)
        catalog = service.catalog
        cid = catalog.collection_id("c")
        assert catalog.source_roots(cid) == sorted([os.path.realpath(media), os.path.realpath(outside / "shared.txt")])
        (item,) = catalog.items_by_uri(cid, [str(media / "shared.txt")]).values()
        opened, media_type = service.media(item_id=item.id)
        try:
            assert opened.read(1000) == (outside / "shared.txt").read_bytes() and media_type.startswith("text/plain")
        finally:
            opened.close()
    finally:
        service.stop()


def test_thumbnails_are_keyed_by_the_bytes_read(served: Served) -> None:
    path = served.media / "jpg" / "photo_0003.jpg"
    original = path.read_bytes()
    stat = path.stat()
    item = served.item_id(path)
    c = served.client
    try:
        other = (served.media / "jpg" / "photo_0004.jpg").read_bytes()
        path.write_bytes(other)  # swapped before any thumbnail was made
        err(c.get(f"/v1/items/{item}/thumbnail"), 409)
        # changed in place with size and time kept: media goes by size and time, a thumbnail by the bytes
        tampered = bytearray(original)
        tampered[len(tampered) // 2] ^= 0xFF
        path.write_bytes(bytes(tampered))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        err(c.get(f"/v1/items/{item}/thumbnail"), 409)
        assert not list((served.settings.home / "thumbnails").glob(f"{item}-*.jpg"))
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    thumb = c.get(f"/v1/items/{item}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    import hashlib

    (cached,) = (served.settings.home / "thumbnails").glob(f"{item}-*.jpg")
    assert hashlib.sha256(original).hexdigest() in cached.name
    path.write_bytes(other)  # swapped after: the cached thumbnail is not served for other bytes
    try:
        err(c.get(f"/v1/items/{item}/thumbnail"), 409)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert c.get(f"/v1/items/{item}/thumbnail").content == thumb.content


def test_media_answers_ranges_from_the_checked_file(served: Served) -> None:
    path = served.media / "jpg" / "photo_0002.jpg"
    item = served.item_id(path)
    part = served.client.get(f"/v1/items/{item}/media", headers={"Range": "bytes=10-29"})
    assert part.status_code == 206 and part.content == path.read_bytes()[10:30]


# 2. inputs that gave a 500 ------------------------------------------------------------------------------


def _raw_request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes,
                 content_type: str) -> tuple[int, dict]:
    conn.request(method, path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def _multipart(fields: dict[str, str], file: tuple[str, bytes, str]) -> tuple[bytes, str]:
    boundary = "xmodal-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    name, data, kind = file
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def png_bytes(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, "PNG")
    return buf.getvalue()


def test_hostile_json_is_a_422_with_its_path_and_the_connection_survives(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    surrogate_filter = b'{"collection": "shop", "text": "boots", "filters": {"field": "format", "op": "eq", ' \
                       b'"value": "\\ud800"}}'
    nested = "[" * 2000 + "]" * 2000
    form, form_type = _multipart({"collection": "shop", "filters": '{"field": "format", "op": "eq", "value": '
                                  '"\\ud800"}'}, ("q.png", png_bytes(1), "image/png"))
    deep_form, _ = _multipart({"collection": "shop", "filters": nested}, ("q.png", png_bytes(1), "image/png"))
    cases = [
        ("/v1/search", surrogate_filter, "application/json", "filters.value"),
        ("/v1/search", b'{"collection": "shop", "text": "\\ud800"}', "application/json", "text"),
        ("/v1/search", b'{"collection": "shop", "text": "boots", "filters": ' + nested.encode() + b"}",
         "application/json", "nested too deeply"),
        ("/v1/search/upload", form, form_type, "filters.value"),
        ("/v1/search/upload", deep_form, form_type, "nested deeper"),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", int(served.base.rsplit(":", 1)[1]), timeout=30)
    try:
        with caplog.at_level(logging.INFO):
            for path, body, kind, where in cases:
                caplog.clear()
                status, answer = _raw_request(conn, "POST", path, body, kind)
                assert status == 422 and where in answer["message"], (path, where, answer)
                # the same keep-alive connection answers the next request
                status, _ = _raw_request(conn, "POST", "/v1/search", b'{"collection": "shop", "text": "boots"}',
                                         "application/json")
                assert status == 200
                mine = [r for r in caplog.records if r.name.startswith(("xmodal", "uvicorn"))]
                assert not any(r.exc_info for r in mine), [r.getMessage() for r in mine]
                assert len([r for r in mine if "422" in r.getMessage()]) == 1, [r.getMessage() for r in mine]
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["1_0", "+1", "%201", "1.0", "0x1", "1e0"])
def test_ids_are_plain_digits(served: Served, path: str) -> None:
    err(served.client.get(f"/v1/items/{path}"), 422)
    err(served.client.get("/v1/items/1/similar", params={"k": path if path != "%201" else " 1"}), 422)


@pytest.mark.parametrize("k", [True, 1.0, "1", "1_0"])
def test_json_numbers_are_strict(served: Served, k: object) -> None:
    err(served.client.post("/v1/search", json={"collection": "shop", "text": "boots", "k": k}), 422)


# 3. bounded cost per request ----------------------------------------------------------------------------


def test_query_media_has_its_own_smaller_limits(served: Served) -> None:
    settings = served.settings
    queries, indexed = MediaLimits.for_queries(settings), MediaLimits.from_settings(settings)
    assert queries.max_image_pixels == 4_000_000 < indexed.max_image_pixels
    defaults = Settings()
    assert MediaLimits.for_queries(defaults).max_image_pixels < MediaLimits.from_settings(defaults).max_image_pixels
    assert MediaLimits.for_queries(defaults).max_audio_seconds < MediaLimits.from_settings(defaults).max_audio_seconds
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, "PNG")  # 100 Mpx in a few KB: under the indexing limit
    body = err(served.client.post("/v1/search/upload", data={"collection": "shop"},
                                  files={"file": ("b.png", bomb.getvalue(), "image/png")}), 413)
    assert "image too large" in body["message"]


def test_uploads_beyond_the_concurrency_limit_get_503_with_retry_after(served: Served,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = served.service.searchers["shop"]  # type: ignore[attr-defined]
    entered, release = threading.Event(), threading.Event()
    real = searcher.image_bytes_vector

    def slow(data: bytes, **kw: object) -> np.ndarray:  # a query that takes its time
        entered.set()
        release.wait(30)
        return real(data, **kw)

    monkeypatch.setattr(searcher, "image_bytes_vector", slow)
    files = {"file": ("q.png", png_bytes(3), "image/png")}
    first: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: first.append(
        httpx.post(served.base + "/v1/search/upload", data={"collection": "shop"}, files=files, timeout=60)))
    worker.start()
    try:
        assert entered.wait(30)
        busy = served.client.post("/v1/search/upload", data={"collection": "shop"}, files=files)
        assert err(busy, 503)["error"] == "busy" and busy.headers["retry-after"] == "1"
        ok(served.client.post("/v1/search", json={"collection": "shop", "text": "boots"}))  # text is not limited
    finally:
        release.set()
        worker.join(60)
    assert first and first[0].status_code == 200
    assert served.service.heavy.active == 0  # type: ignore[attr-defined]


def test_a_client_that_leaves_stops_its_query(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = served.service.searchers["shop"]  # type: ignore[attr-defined]
    stopped = threading.Event()

    def endless(data: bytes, *, stop: object = None, **kw: object) -> np.ndarray:  # runs until told to stop
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if stop is not None and stop():  # type: ignore[operator]
                stopped.set()
                raise Cancelled("stopped")
            time.sleep(0.02)
        raise AssertionError("never told to stop")

    monkeypatch.setattr(searcher, "image_bytes_vector", endless)
    body, kind = _multipart({"collection": "shop"}, ("q.png", png_bytes(5), "image/png"))
    with socket.create_connection(("127.0.0.1", int(served.base.rsplit(":", 1)[1]))) as sock:
        sock.sendall(f"POST /v1/search/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.5)
    assert stopped.wait(10), "the query went on after its client left"
    deadline = time.monotonic() + 10
    while served.service.heavy.active:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    metrics = served.client.get("/metrics").text
    assert 'route="/v1/search/upload",status="499"' in metrics


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before it closed the connection (fails if it stays open)."""
    sock.settimeout(seconds)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def test_slow_headers_and_bodies_are_cut_off(served: Served) -> None:
    port = int(served.base.rsplit(":", 1)[1])
    silent_body = []
    for _ in range(32):  # declare a body, send a little, go silent
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000\r\n\r\n" + b" " * 1000)
        silent_body.append(sock)
    slow_head = socket.create_connection(("127.0.0.1", port))
    slow_head.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    idle = socket.create_connection(("127.0.0.1", port))  # never sends a byte
    try:
        for sock in silent_body:
            answer = _closed_within(sock, 10)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert _closed_within(slow_head, 10).startswith(b"HTTP/1.1 408")
        assert _closed_within(idle, 10).startswith(b"HTTP/1.1 408")
    finally:
        for sock in [*silent_body, slow_head, idle]:
            sock.close()
    ok(served.client.post("/v1/search", json={"collection": "shop", "text": "boots"}))


def test_an_oversized_upload_gets_its_413_through_a_plain_client(served: Served) -> None:
    body, kind = _multipart({"collection": "shop"}, ("big.png", os.urandom(80 << 20), "image/png"))  # as the issue saw
    request = urllib.request.Request(served.base + "/v1/search/upload", data=body, method="POST",
                                     headers={"Content-Type": kind})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413 and json.loads(caught.value.read())["error"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams, still answered
        yield body[:1000]
        for at in range(1000, len(body), 65536):
            yield body[at:at + 65536]

    streamed = httpx.post(served.base + "/v1/search/upload", content=chunks(), headers={"Content-Type": kind})
    assert err(streamed, 413)["error"] == "too_large"


# 4. settings that are enforced, a contract that matches --------------------------------------------------


def test_the_configured_query_length_is_the_enforced_one(served: Served) -> None:
    body = err(served.client.post("/v1/search", json={"collection": "shop", "text": "x" * 200}), 422)
    assert "40" in body["message"]
    ok(served.client.post("/v1/search", json={"collection": "shop", "text": "x" * 40}))
    schema = served.client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["TextSearch"]["properties"]["text"]["maxLength"] == 40
    searcher = served.service.searchers["shop"]  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="at most 40"):
        searcher.text_vector("y" * 41)


def test_the_cli_enforces_the_query_length_too(served: Served, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from xmodal.cli import main

    monkeypatch.setenv("XMODAL_MAX_QUERY_CHARS", "20")
    s = served.settings
    code = main(["search", "-c", "shop", "--home", str(s.home), "--text", "z" * 200])
    assert code == 2 and "at most 20" in capsys.readouterr().err


def test_the_openapi_document_says_what_the_service_does(served: Served) -> None:
    doc = served.client.get("/openapi.json").json()
    ops = {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert not any("security" in op for op in ops.values())  # no keys configured: none asked for
    assert "securitySchemes" not in doc.get("components", {})
    search = ops[("/v1/search", "post")]
    assert {"404", "409", "422", "503"} <= set(search["responses"])
    upload = ops[("/v1/search/upload", "post")]
    assert {"404", "408", "413", "415", "422", "503"} <= set(upload["responses"])
    encoding = upload["requestBody"]["content"]["multipart/form-data"]["encoding"]["file"]["contentType"]
    assert "image/png" in encoding and "audio/wav" in encoding
    assert {"404", "409"} <= set(ops[("/v1/items/{item_id}/media", "get")]["responses"])
    assert set(ops[("/metrics", "get")]["responses"]["200"]["content"]) == {"text/plain"}
    assert served.client.get("/metrics").headers["content-type"].startswith("text/plain")
    body = search["requestBody"]["content"]["application/json"]["schema"]
    variants = body.get("oneOf") or body.get("anyOf")
    assert {v["$ref"].rsplit("/", 1)[1] for v in variants} == {"TextSearch", "ItemSearch", "Browse"}
    schemas = doc["components"]["schemas"]
    assert {"Filter", "Compare", "Among", "Between", "Exists", "All", "AnyOf", "Negation"} <= set(schemas)
    filters = schemas["TextSearch"]["properties"]["filters"]
    assert {"$ref": "#/components/schemas/Filter"} in filters.get("anyOf", [filters])
    assert schemas["TextSearch"]["additionalProperties"] is False


def test_with_keys_only_healthz_is_open(tmp_path: Path, served: Served) -> None:
    keyed = served.settings.model_copy(update={"api_keys": "k1,k2"})
    with live_app(keyed, "shop") as (base, _):
        assert httpx.get(base + "/healthz").status_code == 200
        for path in ("/readyz", "/metrics", "/v1/collections", "/v1/items/1"):
            assert httpx.get(base + path).status_code == 401, path
            assert httpx.get(base + path, headers={"X-API-Key": "k2"}).status_code in (200, 404), path
        doc = httpx.get(base + "/openapi.json").json()
        ops = {(p, m): op for p, item in doc["paths"].items() for m, op in item.items()}
        assert "security" not in ops[("/healthz", "get")]
        for key, op in ops.items():
            if key != ("/healthz", "get"):
                assert op.get("security") and "401" in op["responses"], key
    opened = served.settings.model_copy(update={"api_keys": "k1", "public_metrics": True})
    with live_app(opened, "shop") as (base, _):
        assert httpx.get(base + "/metrics").status_code == 200 and httpx.get(base + "/readyz").status_code == 200
        assert httpx.get(base + "/v1/collections").status_code == 401


@pytest.mark.parametrize("mode", ["relative", "none"])
def test_clients_can_be_shown_relative_paths_or_none(served: Served, mode: str) -> None:
    with live_app(served.settings.model_copy(update={"client_uris": mode}), "shop") as (base, _):
        hits = ok(httpx.post(base + "/v1/search", json={"collection": "shop", "text": "notes", "target": "text"}))
        uris = {r["uri"] for r in hits["results"]}
        item = ok(httpx.get(f"{base}/v1/items/{hits['results'][0]['id']}"))
    if mode == "none":
        assert uris == {None} and item["uri"] is None
    else:
        assert uris == {"src/text/acl2-doc.txt", "src/text/notes.md"}
        assert item["uri"] in uris and not any(str(served.media) in u for u in uris)


# 5. the docs work offline ------------------------------------------------------------------------------


def test_api_docs_are_served_by_the_app(served: Served) -> None:
    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        html = served.client.get(page).text
        assert "cdn." not in html and "https://" not in html, page
        for asset in assets:
            assert f"/static/docs/{asset}" in html
            assert served.client.get(f"/static/docs/{asset}").status_code == 200
