"""A collection indexed from a manifest of http image URLs and inline titles, through a real
`xmodal serve`: results name their source row, media redirect to the URL, thumbnails are fetched."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import serving, write_photos
from PIL import Image

pytestmark = pytest.mark.slow  # a real `xmodal serve` process

PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class _Files(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files


class _Handler(BaseHTTPRequestHandler):
    server: _Files

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    root = tmp_path_factory.mktemp("manifest-api")
    files = {f"/cdn/p/{i}": p.read_bytes() for i, p in enumerate(write_photos(root / "src", 8))}  # no extension
    cdn = _Files(files)
    threading.Thread(target=cdn.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = cdn.server_address[1]
    manifest = root / "products.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "image", "title", "category", "price"])
        for i in range(8):
            w.writerow([f"SKU{i}", f"http://127.0.0.1:{port}/cdn/p/{i}", f"boot number {i}",
                        "boots" if i < 4 else "bags", 20 + i])
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_") and k not in PROXIES}
    env.update(XMODAL_HOME=str(root / "home"), XMODAL_CLIP_MODEL=tiny_clip[0], XMODAL_CLIP_PRETRAINED=tiny_clip[1],
               XMODAL_INDEX_POLL_SECONDS="0.3")
    done = subprocess.run([str(Path(sys.executable).with_name("xmodal")), "index", "--manifest", str(manifest),
                           "-c", "shop", "--media", "image", "--media", "title=text", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        with serving(env, root / "serve.log", "shop", ready_seconds=90) as base:
            yield base, files
    finally:
        cdn.shutdown()
        cdn.server_close()


def test_results_name_their_row_and_filter_by_its_metadata(shop: tuple[str, dict[str, bytes]]) -> None:
    base, _ = shop
    with httpx.Client(base_url=base, timeout=30) as c:
        body = c.post("/v1/search", json={"collection": "shop", "text": "boot", "k": 20, "group_by": "none",
                                          "filters": {"field": "category", "op": "eq", "value": "bags"}}).json()
        results = body["results"]
        assert {r["source"]["id"] for r in results} == {"SKU4", "SKU5", "SKU6", "SKU7"}
        assert {r["source"]["column"] for r in results} == {"image", "title"}
        assert all(r["metadata"]["price"] >= 24 for r in results)
        one = c.post("/v1/search", json={"collection": "shop", "text": "x", "k": 5, "group_by": "none",
                                         "filters": {"field": "source_id", "op": "eq", "value": "SKU2"}}).json()
        assert sorted(r["modality"] for r in one["results"]) == ["image", "text"]
        product = c.post("/v1/search", json={"collection": "shop", "text": "x", "k": 5,  # by default: the product
                                             "filters": {"field": "source_id", "op": "eq", "value": "SKU2"}}).json()
        assert product["group_by"] == "source" and [p["source_id"] for p in product["results"]] == ["SKU2"]
        assert sorted(it["modality"] for it in product["results"][0]["items"]) == ["image", "text"]


def test_media_redirects_to_the_url_thumbnails_are_fetched_inline_text_has_no_file(
        shop: tuple[str, dict[str, bytes]]) -> None:
    base, files = shop
    with httpx.Client(base_url=base, timeout=30) as c:
        results = c.post("/v1/search", json={"collection": "shop", "text": "x", "k": 5, "group_by": "none",
                                             "filters": {"field": "source_id", "op": "eq", "value": "SKU3"}}).json()
        image = next(r for r in results["results"] if r["modality"] == "image")
        title = next(r for r in results["results"] if r["modality"] == "text")
        assert image["uri"].endswith("/cdn/p/3")
        media = c.get(image["media_url"])
        assert media.status_code == 307 and media.headers["location"] == image["uri"]
        thumb = c.get(image["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        original = Image.open(io.BytesIO(files["/cdn/p/3"]))
        small = Image.open(io.BytesIO(thumb.content))
        assert small.size[0] / small.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.02)
        gone = c.get(title["media_url"])
        assert gone.status_code == 404 and "inline" in gone.json()["message"]
        assert title["uri"] == "manifest:SKU3#title" and title["metadata"]["snippet"] == "boot number 3"
