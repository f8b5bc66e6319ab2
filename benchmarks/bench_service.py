"""Search service latency and load, in one run.

1. Builds a collection of N vectors (default 100,000) through the real catalog, shard and publish path.
   The vectors are synthetic (a seeded Gaussian mixture, L2-normalised, 512-d); the model is a
   full-size ViT-B-32 with random weights, so encoding costs what the real one costs. The items are
   images named after a few generated photos (the URIs are distinct, not openable: this measures search).
2. Latency: for 3-word, 12-word and 60-word text queries and for image uploads (distinct queries, so
   no cache hits), p50/p95 of the sum encode + ANN + SQL measured in-process, beside p50/p95 through
   HTTP against `xmodal serve` on 127.0.0.1.
3. Load: 32 concurrent clients for a fixed time (default 60 s) on 127.0.0.1 while another process
   publishes a new index version mid-run; requests/s, p50/p99, 5xx and connection errors.

    python benchmarks/bench_service.py [--vectors 100000] [--seconds 60] [--clients 32]

Writes benchmarks/out/service_bench.json and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
_WORD_TEXT = (
    "red leather ankle boots steel kettle beach waves sunset forest dog cat running shoes blue denim jacket "
    "wooden table lamp glass vase mountain lake city night rain umbrella coffee mug guitar piano bicycle "
    "helmet garden flowers bird tree car road bridge river boat ocean sand shell hat scarf watch ring"
)
WORDS = tuple(_WORD_TEXT.split())


def _model() -> tuple[str, str]:
    from bench_index import make_clip_checkpoint  # this folder is on sys.path when run as a script

    return make_clip_checkpoint("ViT-B-32")


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    x = centers[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_vectors(home: Path, n: int, seed: int, photos: list[Path]) -> None:
    """Items + one shard through the catalog's own commit path, then build and publish a version."""
    from xmodal.config import load_settings
    from xmodal.encoders import resolve_model
    from xmodal.indexer.publish import build_and_publish
    from xmodal.storage.catalog import Catalog, EmbeddedItem
    from xmodal.storage.layout import Layout
    from xmodal.storage.shards import write_shard

    model, ckpt = _model()
    settings = load_settings(home=home, clip_model=model, clip_pretrained=ckpt)
    catalog = Catalog(settings.resolved_database_url)
    layout = Layout(settings.home)
    cid = catalog.collection_id("bench", create=True)
    record = resolve_model("open_clip", model, ckpt)
    catalog.ensure_space(cid, "clip", "open_clip", record, 512)
    start = sum(catalog.counts(cid)["status"].values())
    uris = [f"{photos[i % len(photos)]}#{start + i}" for i in range(n)]
    ids = catalog.add_items(cid, [(u, "image") for u in uris])
    vecs = _vectors(n, 512, seed)
    item_ids = np.asarray([ids[u] for u in uris], dtype=np.int64)
    path = layout.new_shard_path("bench", "clip")
    meta = {"space": "clip", "family": "open_clip", "identity": record["identity"], "model": model,
            "pretrained": ckpt, "normalized": True}
    hashes = [f"{i:064x}" for i in item_ids]
    info = write_shard(path, item_ids, vecs, hashes, meta)
    items = [EmbeddedItem(int(i), row, hashes[row], 1000, 0,
                          {"width": 640, "height": 480, "format": "JPEG", "price": round(float(row % 500) + 0.99, 2)})
             for row, i in enumerate(item_ids)]
    catalog.commit_shard(cid, "clip", layout.relative(path), info.rows, info.sha256, info.bytes, items)
    build_and_publish(catalog, layout, settings, "bench", cid, "clip", progress=False)
    catalog.close()


def _photos(folder: Path, n: int, seed: int) -> list[Path]:
    from xmodal.bench import generate_photos

    return generate_photos(folder, n, size=(640, 480), seed=seed)


def _queries(words: int, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 2)


def latency(home: Path, base: str, n: int, photos: list[Path]) -> dict[str, Any]:
    from xmodal.config import load_settings
    from xmodal.search.engine import Searcher

    searcher = Searcher(load_settings(home=home), "bench")
    searcher.warm_up()
    table: dict[str, Any] = {}
    uploads = [p.read_bytes() for p in photos]
    with httpx.Client(base_url=base, timeout=60) as client:
        for label, words in (("3 words", 3), ("12 words", 12), ("60 words", 60), ("image upload", 0)):
            in_proc: list[float] = []
            http: list[float] = []
            for i in range(n):
                if words:
                    q_local, q_http = _queries(words, 2, seed=1000 * words + i)
                    outcome = searcher.run(text=q_local, k=12)
                    t0 = time.perf_counter()
                    r = client.post("/v1/search", json={"collection": "bench", "text": q_http, "k": 12})
                else:
                    data = uploads[i % len(uploads)]
                    outcome = searcher.run(image_bytes=data, k=12)
                    t0 = time.perf_counter()
                    r = client.post("/v1/search/upload", data={"collection": "bench", "k": "12"},
                                    files={"file": ("q.jpg", data, "image/jpeg")})
                http.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
                t = outcome.timings
                in_proc.append(t.encode_ms + t.ann_ms + t.sql_ms)
            table[label] = {"http_p50_ms": _pct(http, 50), "http_p95_ms": _pct(http, 95),
                            "inproc_p50_ms": _pct(in_proc, 50), "inproc_p95_ms": _pct(in_proc, 95)}
    searcher.close()
    return table


def load(base: str, seconds: float, clients: int, publish: Any) -> dict[str, Any]:
    pool = _queries(3, 400, seed=7) + _queries(12, 100, seed=8)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    versions: set[int] = set()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/search", json={"collection": "bench", "text": rng.choice(pool), "k": 12})
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(ms)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        versions.add(r.json()["index_version"])

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    published: dict[str, float] = {}
    t0 = time.monotonic()

    def publisher() -> None:
        time.sleep(min(2.0, seconds / 6))
        published["started_at"] = time.monotonic() - t0
        published["took"] = publish()
        published["done_at"] = time.monotonic() - t0

    pub = threading.Thread(target=publisher)
    for t in [*threads, pub]:
        t.start()
    for t in threads:
        t.join()
    window = time.monotonic() - t0
    pub.join()
    return {"clients": clients, "seconds": round(window, 1), "requests": len(latencies),
            "requests_per_s": round(len(latencies) / window, 1), "p50_ms": _pct(latencies, 50),
            "p99_ms": _pct(latencies, 99), "status_counts": statuses,
            "5xx": sum(v for k, v in statuses.items() if k >= 500), "connection_errors": len(errors),
            "index_versions_seen": sorted(versions),
            "publish_started_at_s": round(published["started_at"], 1),
            "publish_done_at_s": round(published["done_at"], 1)}


def fresh(home: Path) -> None:
    import shutil

    shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def serving(home: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`xmodal serve` on a free loopback port, ready, stopped afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}, "XMODAL_HOME": str(home)}
    server = subprocess.Popen([str(Path(sys.executable).with_name("xmodal")), "serve", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("xmodal serve did not become ready")
            time.sleep(0.5)
        yield base, env
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40, help="distinct queries per latency row")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--load-vectors", type=int, default=20_000,
                        help="size of the load test's own collection: its rebuild must finish inside the window")
    parser.add_argument("--add-vectors", type=Path, help=argparse.SUPPRESS)  # the publishing subprocess
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    photos = _photos(OUT / "service-photos", 24, seed=3)
    if args.add_vectors:
        add_vectors(args.add_vectors, 2000, seed=99, photos=photos)
        return
    big = OUT / "service-home"
    t0 = time.perf_counter()
    fresh(big)
    add_vectors(big, args.vectors, seed=1, photos=photos)
    build_s = time.perf_counter() - t0
    with serving(big) as (base, _env):
        lat = latency(big, base, args.queries, photos)
    small = OUT / "service-load-home"
    fresh(small)
    add_vectors(small, args.load_vectors, seed=2, photos=photos)
    with serving(small) as (base, env):
        def publish() -> float:
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--add-vectors", str(small)], env=env, check=True)
            return time.perf_counter() - t

        ld = load(base, args.seconds, args.clients, publish)
    ld["collection_vectors"] = args.load_vectors
    report = {"vectors": args.vectors, "build_s": round(build_s, 1), "latency_ms": lat, "load": ld,
              "machine": f"{os.cpu_count()} cores", "model": "ViT-B-32 (random weights), CPU"}
    (OUT / "service_bench.json").write_text(json.dumps(report, indent=2))
    print(f"collection: {args.vectors} vectors (built and published in {build_s:.1f} s)")
    print(f"{'query':<14}{'HTTP p50':>10}{'HTTP p95':>10}{'in-proc p50':>13}{'in-proc p95':>13}   (ms)")
    for label, row in lat.items():
        print(f"{label:<14}{row['http_p50_ms']:>10}{row['http_p95_ms']:>10}{row['inproc_p50_ms']:>13}"
              f"{row['inproc_p95_ms']:>13}")
    print(f"load ({ld['collection_vectors']} vectors): {ld['clients']} clients, {ld['seconds']} s: {ld['requests_per_s']} req/s, p50 {ld['p50_ms']} ms, "
          f"p99 {ld['p99_ms']} ms, 5xx {ld['5xx']}, connection errors {ld['connection_errors']}, "
          f"versions seen {ld['index_versions_seen']} (publish started at {ld['publish_started_at_s']} s, "
          f"new version published at {ld['publish_done_at_s']} s)")


if __name__ == "__main__":
    main()
