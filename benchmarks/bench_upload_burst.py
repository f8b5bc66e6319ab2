"""Server memory and a text query's latency while a burst of worst-case uploads arrives, in one run.

The same collection (N synthetic vectors through the real catalog, shard and publish path; a full-size
ViT-B-32 with random weights, so encoding costs what the real one costs) is served by `xmodal serve`
twice, each in its own process so that its memory is its own:

- **open**: query media limited only as indexed media is (100 Mpx images) and no concurrency bound
  worth the name (64), which is how the service behaved before it had query limits;
- **defaults**: the shipped query limits (40 Mpx, 60 s of audio) and at most 2 uploads decoding at once.

Each gets the same two bursts: B clients upload at once a 10000x10000 PNG (100 Mpx in a few KB:
the indexing limit, what the issue measured) and then a 6300x6300 one (40 Mpx: within every limit,
so both configurations decode it), while one client runs text queries. Reported: the server's RSS
before, at its peak and 5 s after each burst; text-query p50/p95 while idle and during the burst;
the uploads' statuses. Ratios are of the runs, measured in this one process.

``--before PATH`` adds a run of the code in another checkout (e.g. a git worktree of the commit
before the query limits) with the same workload: the service as it was, without the heap trim.

    python benchmarks/bench_upload_burst.py [--vectors 20000] [--burst 8] [--before /tmp/old-checkout]

Writes benchmarks/out/upload_burst.json and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_service import WORDS, _photos, add_vectors, fresh  # noqa: E402

OUT = HERE / "out"
CONFIGS = {
    "open": {"XMODAL_QUERY_MAX_IMAGE_PIXELS": "100000000", "XMODAL_QUERY_CONCURRENCY": "64"},
    "defaults": {},
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def serving(home: Path, extra: dict[str, str], checkout: Path | None = None,
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}, "XMODAL_HOME": str(home), **extra}
    if checkout is not None:  # its xmodal package first on the path
        env["PYTHONPATH"] = str(checkout)
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
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=60)


def png(side: int) -> bytes:
    """A side x side PNG that compresses to almost nothing: the pixels cost, not the bytes."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def text_latencies(base: str, stop: threading.Event, seed: int, out: list[float], limit: int = 10_000) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=120) as c:
        while not stop.is_set() and len(out) < limit:
            text = " ".join(rng.choice(WORDS) for _ in range(6)) + f" {rng.random():.6f}"  # no cache hits
            t0 = time.perf_counter()
            c.post("/v1/search", json={"collection": "bench", "text": text, "k": 10}).raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 1) if values else float("nan")


def run(home: Path, name: str, burst: int, uploads: dict[str, bytes], checkout: Path | None = None,
        ) -> list[dict[str, Any]]:
    with serving(home, CONFIGS.get(name, {}), checkout) as (base, server):
        idle: list[float] = []
        text_latencies(base, threading.Event(), seed=1, out=idle, limit=30)
        return [{"config": name, "upload": label, **one_burst(base, server, burst, data, idle)}
                for label, data in uploads.items()]


def one_burst(base: str, server: subprocess.Popen[bytes], burst: int, png: bytes, idle: list[float],
              ) -> dict[str, Any]:
    stop, sampler_stop = threading.Event(), threading.Event()
    time.sleep(1)
    rss_before = rss_mb(server.pid)
    samples: list[float] = []
    during: list[float] = []
    statuses: list[int] = []

    def sample() -> None:
        while not sampler_stop.is_set():
            samples.append(rss_mb(server.pid))
            time.sleep(0.05)

    def upload() -> None:
        r = httpx.post(base + "/v1/search/upload", data={"collection": "bench"},
                       files={"file": ("bomb.png", png, "image/png")}, timeout=600)
        statuses.append(r.status_code)

    sampler = threading.Thread(target=sample)
    texts = threading.Thread(target=text_latencies, args=(base, stop, 2, during))
    uploads = [threading.Thread(target=upload) for _ in range(burst)]
    sampler.start()
    texts.start()
    t0 = time.perf_counter()
    for u in uploads:
        u.start()
    for u in uploads:
        u.join()
    burst_s = time.perf_counter() - t0
    stop.set()
    texts.join()
    time.sleep(5)
    sampler_stop.set()
    sampler.join()
    rss_after = rss_mb(server.pid)
    return {"burst_s": round(burst_s, 2),
            "upload_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "rss_mb": {"before": round(rss_before, 1), "peak": round(max(samples), 1), "after_5s": round(rss_after, 1)},
            "text_ms": {"idle_p50": pct(idle, 50), "idle_p95": pct(idle, 95), "burst_p50": pct(during, 50),
                        "burst_p95": pct(during, 95), "burst_queries": len(during)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--burst", type=int, default=8, help="uploads at once")
    parser.add_argument("--before", type=Path, metavar="CHECKOUT", help="also run the xmodal in this checkout")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    home = OUT / "burst-home"
    fresh(home)
    add_vectors(home, args.vectors, seed=1, photos=_photos(OUT / "service-photos", 24, seed=3))
    uploads = {"100 Mpx": png(10_000), "40 Mpx": png(6_300)}
    rows = [r for name in CONFIGS for r in run(home, name, args.burst, uploads)]
    if args.before:
        rows += run(home, "before", args.burst, uploads, checkout=args.before)
    by = {(r["config"], r["upload"]): r for r in rows}

    def growth(r: dict[str, Any]) -> float:
        return max(1.0, r["rss_mb"]["peak"] - r["rss_mb"]["before"])

    ratios = {label: {"peak_rss_growth": round(growth(by["defaults", label]) / growth(by["open", label]), 3),
                      "text_p95_during_burst": round(by["defaults", label]["text_ms"]["burst_p95"]
                                                     / by["open", label]["text_ms"]["burst_p95"], 3)}
              for label in uploads}
    report = {"vectors": args.vectors, "burst": args.burst, "png_bytes": {k: len(v) for k, v in uploads.items()},
              "configs": {**CONFIGS, **({"before": str(args.before)} if args.before else {})}, "runs": rows,
              "ratios_defaults_over_open": ratios, "machine": f"{os.cpu_count()} cores",
              "model": "ViT-B-32 (random weights), CPU"}
    (OUT / "upload_burst.json").write_text(json.dumps(report, indent=2))
    print(f"bursts of {args.burst} PNG uploads at once ({', '.join(f'{k}: {len(v)} bytes' for k, v in uploads.items())}), "
          "one text-query client")
    print(f"{'config':<10}{'upload':>8}{'RSS MB before':>14}{'peak':>8}{'after 5s':>10}{'text p50/p95 idle':>20}"
          f"{'text p50/p95 burst':>20}{'burst s':>9}  uploads")
    for r in rows:
        m, t = r["rss_mb"], r["text_ms"]
        print(f"{r['config']:<10}{r['upload']:>8}{m['before']:>14}{m['peak']:>8}{m['after_5s']:>10}"
              f"{str(t['idle_p50']) + '/' + str(t['idle_p95']):>20}{str(t['burst_p50']) + '/' + str(t['burst_p95']):>20}"
              f"{r['burst_s']:>9}  {r['upload_statuses']}")
    for label, ratio in ratios.items():
        print(f"defaults / open, {label}: peak RSS growth x{ratio['peak_rss_growth']}, text p95 during the burst "
              f"x{ratio['text_p95_during_burst']}")


if __name__ == "__main__":
    main()
