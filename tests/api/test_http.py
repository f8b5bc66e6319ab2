"""The HTTP API through the real app in a real uvicorn server on 127.0.0.1 (in this process; `xmodal serve` itself
is driven by the browser test), on a small real collection; another process publishes while it serves."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import live_app, photo, write_photos, write_texts
from PIL import Image

from xmodal.cli import main
from xmodal.config import Settings
from xmodal.indexer.pipeline import index_sources

KEY = "s3cret-key"
MAX_UPLOAD = 300_000


@dataclass
class Server:
    env: dict[str, str]
    media: Path
    home: Path
    base: str
    client: httpx.Client


def index(env: dict[str, str], media: Path) -> None:
    code = subprocess.run([str(Path(sys.executable).with_name("xmodal")), "index", str(media), "-c", "shop",
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str]) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("api")
    media = root / "media"
    write_photos(media / "jpg", 14)
    write_photos(media / "png", 4, start=50, ext="png")
    write_texts(media / "notes", {"boots.txt": "Red leather ankle boots.", "kettle.md": "# Kettle\nSteel, 1.7 l."})
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(root / "home"), XMODAL_CLIP_MODEL=tiny_clip[0], XMODAL_CLIP_PRETRAINED=tiny_clip[1],
               XMODAL_API_KEYS=f"other-key,{KEY}", XMODAL_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
               XMODAL_MAX_IMAGE_PIXELS="4000000", XMODAL_INDEX_POLL_SECONDS="0.3")
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        api_keys=f"other-key,{KEY}", max_upload_bytes=MAX_UPLOAD, max_image_pixels=4_000_000,
                        index_poll_seconds=0.3)
    index_sources(settings, [media], "shop", progress=False)  # publishing from another process: see below
    with live_app(settings, "shop") as (base, _), \
            httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30) as client:
        yield Server(env, media, root / "home", base, client)


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return dict(response.json())


def err(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"} and body["message"], body
    return dict(body)


def png_bytes(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, "PNG")
    return buf.getvalue()


def test_health_ready_metrics_and_collections(server: Server) -> None:
    c = server.client
    assert ok(httpx.get(server.base + "/healthz")) == {"status": "ok"}  # no key needed
    assert ok(c.get("/readyz"))["collections"]["shop"] >= 1
    (col,) = ok(c.get("/v1/collections"))["collections"]
    assert col["name"] == "shop" and col["modalities"] == {"image": 18, "text": 2}
    assert {"width", "height", "format"} <= set(col["metadata_fields"])
    ok(c.post("/v1/search", json={"collection": "shop", "text": "boots"}))
    metrics = c.get("/metrics").text
    assert 'xmodal_request_seconds_count{method="POST",route="/v1/search",status="200"}' in metrics
    assert 'xmodal_index_vectors{collection="shop",space="clip"} 20.0' in metrics
    assert "xmodal_search_stage_seconds_count" in metrics
    assert ok(c.get("/openapi.json"))["info"]["title"] == "xmodal"


def test_search_by_text_with_target_and_pagination(server: Server) -> None:
    c = server.client
    body = ok(c.post("/v1/search", json={"collection": "shop", "text": "boots", "target": "text", "k": 5}))
    assert [r["modality"] for r in body["results"]] == ["text", "text"]
    assert set(body["timings_ms"]) == {"encode", "ann", "sql", "total"}
    page = ok(c.post("/v1/search", json={"collection": "shop", "text": "a photo", "target": "image", "k": 8}))
    first = ok(c.post("/v1/search", json={"collection": "shop", "text": "a photo", "target": "image", "k": 4}))
    second = ok(c.post("/v1/search", json={"collection": "shop", "text": "a photo", "target": "image", "k": 4,
                                           "offset": 4}))
    ids = [r["id"] for r in page["results"]]
    assert [r["id"] for r in first["results"]] + [r["id"] for r in second["results"]] == ids
    assert all(r["thumbnail_url"] for r in page["results"])
    # a request may name a recall point; an exact index answers the same, and says it is exact
    at = ok(c.post("/v1/search", json={"collection": "shop", "text": "a photo", "target": "image", "k": 8,
                                       "recall": 0.5}))
    assert [r["id"] for r in at["results"]] == ids
    assert list(at["ann"]) == ["clip/image"] and at["ann"]["clip/image"]["kind"] == "flat"
    assert at["ann"]["clip/image"]["plan"] == "unfiltered"  # no filter: no plan to choose


def test_upload_finds_the_image_and_filters_apply(server: Server) -> None:
    c = server.client
    target = server.media / "png" / "photo_0051.png"
    files = {"file": ("q.png", target.read_bytes(), "image/png")}
    body = ok(c.post("/v1/search/upload", data={"collection": "shop", "k": "3"}, files=files))
    assert body["results"][0]["uri"] == str(target)
    only_png = {"field": "format", "op": "eq", "value": "PNG"}
    filtered = ok(c.post("/v1/search/upload", files=files,
                         data={"collection": "shop", "k": "10", "filters": json.dumps(only_png)}))
    assert len(filtered["results"]) == 4 and {r["metadata"]["format"] for r in filtered["results"]} == {"PNG"}
    jpg = ok(c.post("/v1/search", json={"collection": "shop", "text": "x", "k": 50,
                                       "filters": {"not": only_png}}))
    assert len(jpg["results"]) == 16  # 14 JPEGs and 2 texts


def test_upload_errors(server: Server) -> None:
    c = server.client
    data = {"collection": "shop"}
    err(c.post("/v1/search/upload", data=data, files={"file": ("a.txt", b"hello", "text/plain")}), 415)
    err(c.post("/v1/search/upload", data=data, files={"file": ("a.png", b"not an image at all", "image/png")}), 415)
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, "PNG")  # 25 Mpx in a few KB, over the 4 Mpx limit
    assert len(bomb.getvalue()) < MAX_UPLOAD
    # over a limit (bytes, pixels or seconds): 413, whichever limit it is
    body = err(c.post("/v1/search/upload", data=data, files={"file": ("b.png", bomb.getvalue(), "image/png")}), 413)
    assert "too large" in body["message"] and body["error"] == "too_large"
    big = os.urandom(MAX_UPLOAD + 10)
    err(c.post("/v1/search/upload", data=data, files={"file": ("big.png", big, "image/png")}), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        boundary = b"--xx\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="s.png"\r\n'
        yield b"Content-Type: image/png\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 10_000
        yield b"\r\n--xx--\r\n"

    streamed = c.post("/v1/search/upload", content=chunks(),
                      headers={"Content-Type": "multipart/form-data; boundary=xx"})
    err(streamed, 413)
    err(c.post("/v1/search/upload", data={"collection": "shop"}), 422)  # no file


def test_bad_requests_are_4xx_json(server: Server) -> None:
    c = server.client
    cases = [
        ({"collection": "shop", "text": "x", "k": 0}, 422),
        ({"collection": "shop", "text": "x", "recall": 0}, 422),
        ({"collection": "shop", "text": "x", "recall": 1.5}, 422),
        ({"collection": "shop", "text": "x", "recall": "most"}, 422),
        ({"collection": "shop", "text": "x", "k": 101}, 422),
        ({"collection": "shop", "text": "x" * 1001}, 422),
        ({"collection": "shop", "text": "x", "item_id": 1}, 422),
        ({"collection": "shop"}, 422),
        ({"collection": "shop", "text": "x", "target": "hologram"}, 422),
        ({"collection": "shop", "text": "x", "extra": 1}, 422),
        ({"collection": "nope", "text": "x"}, 404),
        ({"collection": "shop", "text": "x", "filters": {"field": "colour", "op": "eq", "value": "red"}}, 422),
        ({"collection": "shop", "text": "x", "filters": {"field": "width", "op": "like", "value": 3}}, 422),
        ({"collection": "shop", "text": "x", "filters": {"field": "width", "op": "eq", "value": "wide"}}, 422),
        ({"collection": "shop", "item_id": 999999}, 404),
    ]
    for payload, status in cases:
        err(c.post("/v1/search", json=payload), status)
    err(c.post("/v1/search", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    err(c.get("/v1/items/0"), 422)
    err(c.get("/v1/items/123456789"), 404)
    err(c.get("/v1/nothing-here"), 404)
    err(c.delete("/v1/collections"), 405)


def test_items_media_thumbnail_and_similar(server: Server) -> None:
    c = server.client
    target = server.media / "jpg" / "photo_0003.jpg"
    hit = ok(c.post("/v1/search/upload", data={"collection": "shop", "k": "1"},
                    files={"file": ("q.jpg", target.read_bytes(), "image/jpeg")}))["results"][0]
    item = ok(c.get(f"/v1/items/{hit['id']}"))
    assert item["uri"] == str(target) and item["collection"] == "shop"
    media = c.get(item["media_url"])
    assert media.status_code == 200 and media.content == target.read_bytes()
    assert media.headers["content-type"] == "image/jpeg"
    thumb = c.get(item["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    cached = list((server.home / "thumbnails").glob(f"{hit['id']}-*.jpg"))
    assert len(cached) == 1
    before = cached[0].stat().st_mtime_ns
    assert c.get(item["thumbnail_url"]).content == thumb.content and cached[0].stat().st_mtime_ns == before
    similar = ok(c.get(f"/v1/items/{hit['id']}/similar", params={"k": 5}))
    assert hit["id"] not in [r["id"] for r in similar["results"]] and len(similar["results"]) == 5
    text_item = ok(c.post("/v1/search", json={"collection": "shop", "text": "kettle", "target": "text", "k": 1}))
    text_id = text_item["results"][0]["id"]
    assert ok(c.get(f"/v1/items/{text_id}"))["thumbnail_url"] is None
    err(c.get(f"/v1/items/{text_id}/thumbnail"), 404)
    assert c.get(f"/v1/items/{text_id}/media").headers["content-type"].startswith("text/")


def test_api_keys(server: Server) -> None:
    body = {"collection": "shop", "text": "boots"}
    err(httpx.post(server.base + "/v1/search", json=body), 401)
    err(httpx.post(server.base + "/v1/search", json=body, headers={"X-API-Key": "wrong"}), 401)
    err(httpx.get(server.base + "/v1/collections"), 401)
    ok(httpx.post(server.base + "/v1/search", json=body, headers={"Authorization": f"Bearer {KEY}"}))
    ok(httpx.post(server.base + "/v1/search", json=body, headers={"X-API-Key": "other-key"}))
    assert httpx.get(server.base + "/healthz").status_code == 200  # the one probe open with keys set
    err(httpx.get(server.base + "/readyz"), 401)
    err(httpx.get(server.base + "/metrics"), 401)


@pytest.mark.slow  # subprocesses and worker processes
def test_publish_while_requests_run(server: Server) -> None:
    """Another process publishes a new index version; no request fails and the new items appear."""
    version = ok(server.client.get("/readyz"))["collections"]["shop"]
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.base, headers={"X-API-Key": KEY}, timeout=30) as c:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                statuses.append(c.post("/v1/search", json={"collection": "shop", "text": "boots", "k": 5}).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        write_photos(server.media / "new", 3, start=300)
        index(server.env, server.media)
        deadline = time.monotonic() + 30
        while ok(server.client.get("/readyz"))["collections"]["shop"] == version:
            assert time.monotonic() < deadline, "the new version was not picked up"
            time.sleep(0.2)
        time.sleep(0.5)  # requests keep running on the new version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    new = server.media / "new" / "photo_0301.jpg"
    hit = ok(server.client.post("/v1/search/upload", data={"collection": "shop", "k": "1"},
                                files={"file": ("n.jpg", new.read_bytes(), "image/jpeg")}))
    assert hit["results"][0]["uri"] == str(new) and hit["index_version"] > version


def test_serve_refuses_unknown_collections_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          tiny_clip: tuple[str, str]) -> None:
    home = tmp_path / "home"
    write_photos(tmp_path / "m", 2)
    assert main(["index", str(tmp_path / "m"), "-c", "a", "--home", str(home), "--no-progress",
                 "--clip-model", tiny_clip[0], "--clip-pretrained", tiny_clip[1]]) == 0
    capsys.readouterr()
    assert main(["serve", "--home", str(home), "-c", "missing"]) == 2
    assert "no collection named 'missing'" in capsys.readouterr().err
