"""Calibrated ranking (issue 14): does ``any`` find near-duplicates first as often as their own target,
do text queries see more than one modality, and what does calibration cost?

Part 1, quality, through the real pipeline: a collection mixing generated photos, texts and sounds,
plus real files (``--real DIR``, any number; the files xmodal reads are copied in), indexed by
``index_sources``. Queries with the default target ``any``: an altered copy of every image (resized,
noised, re-encoded as JPEG; and a second time cropped too) and of every sound (trimmed, gain, noise, resampled), whose
original's rank is read; text queries, whose first 20 are counted by modality. Each is run three
ways in this one process: merged by calibrated relevance (the default), by reciprocal rank (``rrf``,
the merge before this change), and by raw score (what merging within one space did before: the
modality gap decides). The near-duplicate rank is also read with the query's own modality as target.

The models have RANDOM weights unless ``--clip-model``/``--audio-model`` name real ones (no download
here): a ViT-B-32 and a base-size CLAP, so the compute is the real models'. Random weights rank
near-duplicates; they say nothing of semantic quality, so the text queries only show whether several
modalities reach the first page.

Part 2, cost at scale: 1M synthetic 512-d vectors (``--vectors``), plus two parts of 100k for the
other modalities; ``calibrate()`` timed against ``build_index()`` of the 1M part in this process;
per query, for three routes: the query's background (its scores against the part's reference sample),
its local tail and the relevance of every candidate, timed against the 1M part's search at its tuned
operating point.

    python benchmarks/bench_ranking.py [--real DIR ...] [--images 200] [--vectors 1000000] [--quick]

Writes docs/benchmarks/ranking.{json,md,png} (``--quick``: benchmarks/out/ranking-quick/).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.bench import load_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
DOCS = ROOT / "docs" / "benchmarks"
FUSIONS = ("relevance", "rrf", "raw")
TEXT_QUERIES = [
    "red leather ankle boots", "a dog running on the beach", "rain on a tin roof", "a kettle whistling",
    "city traffic at night", "a bowl of fresh fruit", "waves breaking on rocks", "a wooden chair",
    "birds singing in the morning", "a diagram with arrows", "a blue sky with clouds", "someone typing",
    "a red car", "footsteps in a corridor", "a cup of coffee", "an old photograph", "a guitar chord",
    "snow on mountains", "a crowd cheering", "a black and white icon", "green leaves", "a ringing phone",
    "the sound of wind", "a screenshot of a terminal", "a striped shirt", "glass breaking", "a logo",
    "a plucked string", "running water", "a colourful pattern",
]
WORDS = ["boots", "leather", "red", "kettle", "steel", "rain", "roof", "dog", "beach", "wave", "chair", "wood",
         "fruit", "bowl", "coffee", "cup", "guitar", "snow", "mountain", "crowd", "leaves", "phone", "wind",
         "shirt", "glass", "logo", "water", "pattern", "car", "street", "night", "bird"]


# ---- the collection -------------------------------------------------------------------------------

def make_media(folder: Path, images: int, texts: int, sounds: int, real: list[Path]) -> dict[str, int]:
    from xmodal.bench import generate_photos, generate_sounds
    from xmodal.spaces import modality_for_path

    generate_photos(folder / "photos", images, size=(640, 480))
    generate_sounds(folder / "sounds", sounds, seconds=4.0)
    rng = np.random.default_rng(7)
    (folder / "notes").mkdir(parents=True)
    for i in range(texts):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 30))))
        (folder / "notes" / f"note_{i:03d}.txt").write_text(f"Note {i}: {words}.\n", encoding="utf-8")
    copied = {"image": 0, "audio": 0}
    n = 0
    seen: set[str] = set()  # a file copied twice would be two originals: keep the first
    for root in real:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            modality = modality_for_path(str(path))
            if modality not in ("image", "audio") or path.stat().st_size > 20 * 2**20:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            dest = folder / "real" / f"{n:04d}-{path.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            copied[modality] += 1
            n += 1
    return copied


def altered_image(path: Path, seed: int, *, crop: bool = False) -> bytes | None:
    """A re-encoded copy: resized to 3/4, noised, saved as JPEG (quality 70); ``crop``: 5% cut off each
    side first (harder: the patch grid moves)."""
    from PIL import Image

    try:
        img = Image.open(path).convert("RGB")
    except Exception:  # noqa: BLE001 - a real file PIL can't read: not a query
        return None
    w, h = img.size
    if crop:
        img = img.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        w, h = img.size
    img = img.resize((max(32, w * 3 // 4), max(32, h * 3 // 4)))
    arr = np.asarray(img).astype(np.int16) + np.random.default_rng(seed).integers(-6, 7, (img.height, img.width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def altered_sound(path: Path, seed: int) -> bytes | None:
    import soundfile as sf

    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - a real file libsndfile can't read: not a query
        return None
    x = x.mean(axis=1)
    if len(x) < rate // 2:
        return None
    x = x[int(0.1 * len(x)):]  # trimmed
    x = 0.6 * x + 0.004 * np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)  # gain, noise
    buf = io.BytesIO()
    sf.write(buf, x[::2], max(8000, rate // 2), format="WAV")  # resampled
    return buf.getvalue()


def rank_of(uris: list[str], original: str) -> int | None:
    return uris.index(original) + 1 if original in uris else None


def merged(searcher: Any, fusion: str, k: int, **query: Any) -> list[Any]:
    """The ``any`` list three ways: by relevance, by rank, or by raw score (each target searched alone and
    the lists sorted by score together, as merging within a space did before). Vectors only: the words of
    a text query (hybrid, the default since lexical search) are measured by bench_lexical."""
    if fusion != "raw":
        return searcher.run(k=k, fusion=fusion, mode="vector", **query).results
    lists = [r for route in searcher.routes(searcher_modality(query), "any")
             for r in searcher.run(k=k, target=route.target, mode="vector", **query).results]
    return sorted(lists, key=lambda r: -r.score)[:k]


def searcher_modality(query: dict[str, Any]) -> str:
    return "text" if "text" in query else query["media"][0]


def quality(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from xmodal.config import Settings
    from xmodal.indexer.pipeline import index_sources
    from xmodal.search.engine import Searcher
    from xmodal.storage.catalog import Catalog

    media = scratch / "media"
    real = make_media(media, args.images, args.texts, args.sounds, args.real)
    clip_model, clip_ckpt = (args.clip_model, args.clip_pretrained) if args.clip_model else \
        load_module(HERE / "bench_index.py").make_clip_checkpoint("ViT-B-32")
    audio_model = args.audio_model
    if not audio_model:
        folder = OUT / "clap-base-random"
        if not (folder / "config.json").is_file():
            load_module(ROOT / "scripts" / "make_tiny_clap.py").make_clap(folder, size="base")
        audio_model = str(folder)
    settings = Settings(home=scratch / "home", clip_model=clip_model, clip_pretrained=clip_ckpt,
                        audio_model=audio_model, batch_size=16)
    t0 = time.perf_counter()
    summary = index_sources(settings, [media], "mix", progress=False)
    run_s = time.perf_counter() - t0
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        cid = catalog.collection_id("mix")
        counts = catalog.counts(cid)
        cal = {sp: catalog.published_index(cid, sp).summary.get("calibration", {}) for sp in ("clip", "clap")}
    finally:
        catalog.close()
    build_s = summary.seconds.get("build", 0.0)
    calibration_s = sum(c.get("seconds", 0.0) for c in cal.values())

    searcher = Searcher(settings, "mix")
    out: dict[str, Any] = {"collection": {"counts": counts, "real_files": real, "failed": summary.failed},
                           "run_s": round(run_s, 2), "build_s": round(build_s, 2),
                           "calibration_s": round(calibration_s, 3),
                           "calibration_share_of_run": round(calibration_s / run_s, 4),
                           "calibration_share_of_build": round(calibration_s / build_s, 4) if build_s else None,
                           "calibration": cal}
    try:
        near: dict[str, dict[str, list[int | None]]] = {}
        for name, modality, folder_names, alter in (
                ("image", "image", ("photos", "real"), altered_image),
                ("image, cropped", "image", ("photos", "real"), functools.partial(altered_image, crop=True)),
                ("audio", "audio", ("sounds", "real"), altered_sound)):
            files = sorted(p for name in folder_names for p in (media / name).glob("*") if p.is_file()
                           and (p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3")) == (modality == "audio"))
            rows: dict[str, list[int | None]] = {f: [] for f in (*FUSIONS, "own")}
            for i, path in enumerate(files):
                data = alter(path, i)
                if data is None:
                    continue
                query = {"media": (modality, data)}
                for fusion in FUSIONS:
                    rows[fusion].append(rank_of([r.uri for r in merged(searcher, fusion, 10, **query)], str(path)))
                own = searcher.run(k=10, target=modality, mode="vector", **query).results
                rows["own"].append(rank_of([r.uri for r in own], str(path)))
            near[name] = rows
        out["near_duplicates"] = {m: {f: summarise(ranks) for f, ranks in rows.items()} for m, rows in near.items()}
        kinds: dict[str, list[int]] = {f: [] for f in FUSIONS}
        shares: dict[str, dict[str, int]] = {f: {} for f in FUSIONS}
        latency: list[float] = []
        for text in TEXT_QUERIES:
            for fusion in FUSIONS:
                t1 = time.perf_counter()
                results = merged(searcher, fusion, 20, text=text)
                if fusion == "relevance":
                    latency.append((time.perf_counter() - t1) * 1000)
                kinds[fusion].append(len({r.modality for r in results}))
                for r in results:
                    shares[fusion][r.modality] = shares[fusion].get(r.modality, 0) + 1
        out["text_queries"] = {f: {"queries": len(TEXT_QUERIES), "modalities_in_first_20_mean": round(
            statistics.mean(kinds[f]), 3), "with_more_than_one": round(sum(n > 1 for n in kinds[f]) / len(kinds[f]), 3),
            "results_by_modality": shares[f]} for f in FUSIONS}
        out["text_query_ms_p50"] = round(statistics.median(latency), 2)
    finally:
        searcher.close()
    return out


def summarise(ranks: list[int | None]) -> dict[str, Any]:
    n = len(ranks)
    return {"queries": n, "first": round(sum(r == 1 for r in ranks) / n, 3) if n else None,
            "in_top_10": round(sum(r is not None for r in ranks) / n, 3) if n else None,
            "mean_rank_found": round(statistics.mean([r for r in ranks if r is not None]), 2)
            if any(r is not None for r in ranks) else None}


# ---- cost at scale --------------------------------------------------------------------------------

def cost(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from xmodal.indexer.build import build_index
    from xmodal.indexer.calibrate import calibrate
    from xmodal.indexer.recipe import choose_recipe
    from xmodal.storage.calibration import TAIL, Calibration, Relevance, reference_ids

    ann_data = load_module(HERE / "ann_data.py")
    n, dim = args.vectors, 512
    data = ann_data.synthetic_mixture(n, 1000, 500, dim=dim, progress=False)
    base, queries = data.base, data.queries
    ids = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(1)
    small = max(1000, n // 10)
    text = ann_data.unit_rows(base[rng.choice(n, small, replace=False)] + 0.3 * rng.standard_normal(
        (small, dim)).astype(np.float32) / math.sqrt(dim))
    audio = ann_data.unit_rows(rng.standard_normal((small, dim)).astype(np.float32))
    stacked = {"image": (ids, base), "text": (np.arange(n, n + small, dtype=np.int64), text),
               "audio": (np.arange(n + small, n + 2 * small, dtype=np.int64), audio)}
    bank = ann_data.unit_rows(rng.standard_normal((256, dim)).astype(np.float32))

    t0 = time.perf_counter()
    recipe = choose_recipe(n, dim, exact_threshold=50_000, recall_target=0.95)
    built = build_index(base, ids, recipe, recall_target=0.95, store_dir=scratch / "store")
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pairs = calibrate("clip", stacked, lambda: bank)
    calibrate_s = time.perf_counter() - t1

    part = built.part
    cal = Calibration.from_dict(pairs["text->image"])
    ref_ids = np.asarray(reference_ids(ids), dtype=np.int64)
    reference = np.ascontiguousarray(base[ref_ids])
    k = max(10 + 16, TAIL + 1)  # what a route fetches for a page of 10
    search_s, relevance_s = [], []
    for q in queries[:500]:
        t2 = time.perf_counter()
        scores, found = part.search(q[None], k)
        t3 = time.perf_counter()
        for _ in range(3):  # three routes, as `any` scores them: the query's background, its tail, each candidate
            relevance = Relevance.of(cal.for_query(reference @ q, ref_ids), scores[0], found[0], n)
            [relevance(float(s), int(i)) for s, i in zip(scores[0], found[0], strict=True)]
        t4 = time.perf_counter()
        search_s.append(t3 - t2)
        relevance_s.append(t4 - t3)
    return {"vectors": n, "dim": dim, "other_parts": small, "recipe": built.recipe.to_dict(),
            "build_s": round(build_s, 2), "calibrate_s": round(calibrate_s, 3),
            "calibrate_share_of_build": round(calibrate_s / build_s, 4), "pairs": sorted(pairs),
            "per_query": {"candidates": 3 * k, "relevance_ms_p50": round(1000 * statistics.median(relevance_s), 4),
                          "relevance_ms_p99": round(1000 * float(np.quantile(relevance_s, 0.99)), 4),
                          "search_ms_p50": round(1000 * statistics.median(search_s), 3),
                          "relevance_share_of_one_search": round(statistics.median(relevance_s)
                                                                 / statistics.median(search_s), 4)}}


# ---- report ---------------------------------------------------------------------------------------

def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    near = report["quality"]["near_duplicates"]
    labels = [*FUSIONS, "own"]
    width = 0.38
    for i, modality in enumerate(near):
        values = [near[modality][f]["first"] or 0 for f in labels]
        axes[0].bar(np.arange(len(labels)) + (i - 0.5) * width, values, width, label=f"{modality} queries")
    axes[0].set_xticks(range(len(labels)), ["any: relevance", "any: rrf", "any: raw", "own target"])
    axes[0].set_ylabel("original ranked first")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(loc="lower left", fontsize=8)
    axes[0].set_title("altered copies, default target")
    text = report["quality"]["text_queries"]
    mods = sorted({m for f in FUSIONS for m in text[f]["results_by_modality"]})
    bottom = np.zeros(len(FUSIONS))
    for m in mods:
        values = np.array([text[f]["results_by_modality"].get(m, 0) for f in FUSIONS], dtype=float)
        values /= text[FUSIONS[0]]["queries"]
        axes[1].bar(range(len(FUSIONS)), values, bottom=bottom, label=m)
        bottom += values
    axes[1].set_xticks(range(len(FUSIONS)), [f"any: {f}" for f in FUSIONS])
    axes[1].set_ylabel("results of the first 20, per query")
    axes[1].legend(fontsize=8)
    axes[1].set_title("text queries: modalities on the first page")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(report: dict[str, Any], command: str) -> str:
    q, c = report["quality"], report["cost"]
    lines = ["# Calibrated ranking: `any` by relevance", "",
             f"Generated by `{command}` on {report['meta']['date']}.", "", "![near-duplicates and modalities](ranking.png)",
             "", "Models with random weights (a ViT-B-32 and a base-size CLAP) unless named: they rank near-duplicates, "
             "they say nothing of semantic quality.", "",
             f"Collection: {q['collection']['counts']['modality']} items by modality "
             f"(real files among them: {q['collection']['real_files']}), {q['collection']['failed']} failed.", "",
             "## Near-duplicates with the default target", "",
             "| query | merge | queries | original first | in top 10 | mean rank found |", "|---|---|---|---|---|---|"]
    for modality, rows in q["near_duplicates"].items():
        for f, row in rows.items():
            name = "own target" if f == "own" else f"any, {f}"
            lines.append(f"| {modality} | {name} | {row['queries']} | {row['first']} | {row['in_top_10']} | "
                         f"{row['mean_rank_found']} |")
    lines += ["", "## Text queries: modalities in the first 20", "",
              "| merge | queries | modalities (mean) | queries with more than one | results by modality |",
              "|---|---|---|---|---|"]
    for f, row in q["text_queries"].items():
        lines.append(f"| any, {f} | {row['queries']} | {row['modalities_in_first_20_mean']} | "
                     f"{row['with_more_than_one']} | {row['results_by_modality']} |")
    lines += ["", "## Cost", "",
              f"- In the run above: calibration {q['calibration_s']} s of a {q['run_s']} s index run "
              f"({q['calibration_share_of_run']:.1%}), {q['calibration_share_of_build']:.1%} of its build-and-publish "
              f"step ({q['build_s']} s; the bank's text vectors come from the alignment fit of the same run). Text query "
              f"p50 {q['text_query_ms_p50']} ms.",
              f"- At {c['vectors']:,} vectors ({c['dim']}-d; text and audio parts of {c['other_parts']:,}): "
              f"`calibrate()` {c['calibrate_s']} s for {len(c['pairs'])} pairs, {c['calibrate_share_of_build']:.2%} "
              f"of `build_index()` of the large part ({c['build_s']} s, {c['recipe']['kind']}).",
              f"- Per query at that size, three routes: each query's background (512 reference vectors), its local "
              f"tail and the relevance of {c['per_query']['candidates']} candidates "
              f"p50 {c['per_query']['relevance_ms_p50']} ms, p99 {c['per_query']['relevance_ms_p99']} ms; one search "
              f"of the part p50 {c['per_query']['search_ms_p50']} ms "
              f"({c['per_query']['relevance_share_of_one_search']:.1%} of it). None of it grows with N.",
              *([f"- The cost at scale was rerun alone (`--cost-only`) on {rerun['date']}, commit {rerun['commit']}: "
                 "the machine was busy during the first run's."] if (rerun := report["meta"].get("cost_rerun")) else []),
              "", "## Machine", "", f"- {report['meta']['machine']}; xmodal commit {report['meta']['commit']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, action="append", default=[], help="a folder of real images and sounds")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--texts", type=int, default=50)
    parser.add_argument("--sounds", type=int, default=20)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--clip-model")
    parser.add_argument("--clip-pretrained")
    parser.add_argument("--audio-model")
    parser.add_argument("--quick", action="store_true", help="small sizes, into benchmarks/out/ranking-quick/")
    parser.add_argument("--cost-only", action="store_true", help="rerun part 2 (cost at scale) alone, keeping part "
                        "1's figures from the report already written (a machine that was busy during part 2)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.texts, args.sounds, args.vectors = 40, 12, 8, 100_000
    dest = OUT / "ranking-quick" if args.quick else DOCS
    dest.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="xmodal-ranking-", dir=OUT))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    now = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        if args.cost_only:
            report: dict[str, Any] = json.loads((dest / "ranking.json").read_text())
            report["cost"] = cost(args, scratch)
            report["meta"]["cost_rerun"] = {"date": now, "commit": commit.strip()}
        else:
            report = {"quality": quality(args, scratch)}
            print(json.dumps(report["quality"], indent=1)[:3000], flush=True)
            report["cost"] = cost(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not args.cost_only:
        report["meta"] = {"date": now, "commit": commit.strip(), "argv": sys.argv[1:],
                          "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} "
                                     f"cores, Python {platform.python_version()}"}
    (dest / "ranking.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, dest / "ranking.png")
    command = "python benchmarks/bench_ranking.py " + " ".join(report["meta"]["argv"])
    (dest / "ranking.md").write_text(markdown(report, command.strip()))
    print(markdown(report, command.strip()))


if __name__ == "__main__":
    main()
