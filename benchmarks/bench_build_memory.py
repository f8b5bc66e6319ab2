"""Peak memory of an index build over N vectors (default 1,000,000 x 512), three ways, each in its own
process so that peaks don't mix:

* ``ram``:     the vectors loaded into RAM, lists in RAM (how builds worked before shards were streamed);
* ``mmap``:    the vectors memory-mapped (as ``xmodal index`` now gathers them from the shards), lists in RAM;
* ``ondisk``:  the vectors memory-mapped, inverted lists on disk (``OnDiskInvertedLists``, merge_ondisk).

Reports peak RSS (VmHWM: includes file pages the process touched, which the OS can drop) and peak
anonymous memory (RssAnon sampled every 20 ms: what the process really holds), with build seconds and
recall@10 on 200 held-out queries. The data: the seeded Gaussian mixture of bench_ann.py.

    python benchmarks/bench_build_memory.py [--n 1000000] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(mode: str, data: Path, queries: Path, work: Path) -> dict:
    import faiss

    from xmodal.indexer.build import build_index
    from xmodal.indexer.recipe import choose_recipe

    peak = {"anon": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon"] = max(peak["anon"], _status("RssAnon"))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    x = np.load(data, mmap_mode=None if mode == "ram" else "r")
    n, dim = x.shape
    recipe = choose_recipe(n, dim, exact_threshold=50_000)
    if mode == "ondisk":
        import dataclasses

        recipe = dataclasses.replace(recipe, ondisk=True)
    t0 = time.perf_counter()
    built = build_index(x, np.arange(n, dtype=np.int64), recipe, seed=0, lists_dir=work / "lists")
    build_s = time.perf_counter() - t0
    q = np.load(queries)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    found = built.part.search(q, 10)[1]
    recall = float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)]))
    stop.set()
    return {"mode": mode, "n": n, "dim": dim, "recipe": built.recipe.describe(), "build_s": round(build_s, 1),
            "peak_rss_gib": round(_status("VmHWM") / 2**30, 3), "peak_anon_gib": round(peak["anon"] / 2**30, 3),
            "resident_bytes_per_vector": round(built.part.resident_bytes() / n, 1), "recall@10": round(recall, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--child", nargs=4, metavar=("MODE", "DATA", "QUERIES", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, data, queries, work = args.child
        print(json.dumps(child(mode, Path(data), Path(queries), Path(work))))
        return
    with tempfile.TemporaryDirectory(dir=HERE / "out" if (HERE / "out").is_dir() else None) as tmp:
        work = Path(tmp)
        base, queries = _data(args.n, args.dim)
        np.save(work / "base.npy", base)
        np.save(work / "queries.npy", queries)
        del base
        rows = []
        for mode in ("ram", "mmap", "ondisk"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(work / "base.npy"),
                                  str(work / "queries.npy"), str(work / mode)], capture_output=True, text=True,
                                 check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
        (HERE / "out").mkdir(exist_ok=True)
        (HERE / "out" / "build_memory.json").write_text(json.dumps(rows, indent=2) + "\n")


def _data(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    from ann_data import synthetic_mixture

    ds = synthetic_mixture(n, 200, 1, dim=dim, seed=0, progress=False)
    return ds.base, ds.queries


if __name__ == "__main__":
    main()
