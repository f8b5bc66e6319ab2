"""Cold `xmodal search --text` against its floor, measured in one run.

A cold search is a fresh process: Python starts, imports torch and open_clip, loads the model, encodes the
text, opens the catalog, loads the index, searches and prints. Its **floor** is a process that only
imports torch and open_clip, loads the same model from the same checkpoint and encodes one text: what no
search can avoid. Both run as subprocesses, alternating, ``--repeats`` times each; medians of wall and CPU
seconds (user + system of the child: steadier than wall time on a shared machine) are reported,
with the share of the cold search that is the floor (imports and weights) and, inside the floor, the share
that is the imports alone (a process that only imports torch and open_clip).

Models: the tiny random-weights test model, and a full-size ViT-B-32 with random weights (same size and
compute as the real one, no download) written under benchmarks/out/. The collection is generated photos
and a few texts (no audio: a text search for images never loads CLAP; see
tests/search/test_audio_routing.py).

    python benchmarks/bench_cold_search.py [--models tiny ViT-B-32] [--repeats 5] [--photos 48]

Writes docs/benchmarks/cold_search.json and cold_search.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xmodal.bench import load_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "cold_search"
DOCS = ROOT / "docs" / "benchmarks"
QUERY = "a photo of a red bicycle"

FLOOR = """
import sys
import open_clip, torch
model, pretrained = sys.argv[1], sys.argv[2]
if model.endswith(".json"):
    open_clip.add_model_config(model)
    model = model.rsplit("/", 1)[-1][:-5]
net, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained, weights_only=True)
net.eval()
tok = open_clip.get_tokenizer(model)
with torch.inference_mode():
    net.encode_text(tok([sys.argv[3]]))
"""
IMPORTS = "import open_clip, torch"


def _model(arch: str) -> tuple[str, str]:
    folder = OUT / f"model-{arch}"
    if arch == "tiny":
        model, ckpt = load_module(ROOT / "scripts" / "make_tiny_clip.py").make_clip(folder)
        return str(model), str(ckpt)
    ckpt = folder / f"{arch}.pt"
    if not ckpt.exists():
        load_module(ROOT / "scripts" / "make_tiny_clip.py").make_clip(folder, arch=arch)
    return arch, str(ckpt)


def _env(home: Path, model: str, ckpt: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(home), XMODAL_CLIP_MODEL=model, XMODAL_CLIP_PRETRAINED=ckpt,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(arch: str, repeats: int, photos: int) -> dict[str, Any]:
    from xmodal.bench import generate_photos

    model, ckpt = _model(arch)
    work = OUT / arch
    media = work / "media"
    if not media.is_dir():
        generate_photos(media, photos, size=(320, 240))
        for i, text in enumerate(["a red bicycle", "waves on a beach", "a kettle on a stove"]):
            (media / f"note_{i}.txt").write_text(text)
    env = _env(work / "home", model, ckpt)
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    _timed([xmodal, "index", str(media), "-c", "bench", "--no-progress"], env)
    search = [xmodal, "search", "-c", "bench", "--text", QUERY, "-k", "10", "--json"]
    floor = [sys.executable, "-c", FLOOR, model, ckpt, QUERY]
    imports = [sys.executable, "-c", IMPORTS]
    commands = {"floor": floor, "search": search, "search_target_image": [*search, "--target", "image"],
                "imports": imports}
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    _timed(floor, env)  # one unmeasured pass: the page cache holds the files for every measured one
    for _ in range(repeats):
        for name, argv in commands.items():
            w, c = _timed(argv, env)
            wall[name].append(w)
            cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"model": arch, "checkpoint_bytes": Path(ckpt).stat().st_size, "repeats": repeats,
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "median_cpu_s": {k: round(v, 3) for k, v in med_cpu.items()},
            "runs_s": {k: [round(x, 3) for x in v] for k, v in wall.items()},
            "runs_cpu_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "floor_share_of_search": round(med["floor"] / med["search"], 3),
            "floor_share_of_search_cpu": round(med_cpu["floor"] / med_cpu["search"], 3),
            "overhead_s": round(med["search"] - med["floor"], 3),
            "overhead_cpu_s": round(med_cpu["search"] - med_cpu["floor"], 3),
            "imports_share_of_floor_cpu": round(med_cpu["imports"] / med_cpu["floor"], 3)}


def write(results: list[dict[str, Any]], argv: list[str]) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    report = {"generated": stamp, "command": "python benchmarks/bench_cold_search.py " + " ".join(argv),
              "cpus": os.cpu_count(), "query": QUERY, "results": results}
    (DOCS / "cold_search.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Cold search: `xmodal search --text` in a fresh process, against its floor",
        "",
        f"Generated by `{report['command'].strip()}` on {stamp} ({os.cpu_count()} CPUs).",
        "",
        "Each row: medians of the runs, alternating. **floor**: a process that imports torch and open_clip, "
        "loads the same checkpoint and encodes one text (what every search pays); **imports**: a process that "
        "only imports torch and open_clip; **search**: `xmodal search -c bench --text ... -k 10 --json` "
        "(target `any`), and with `--target image`.",
        "",
        "Wall seconds are what a user waits on a quiet machine; on a shared one they swing with the load, so "
        "the CPU seconds of each process (user + system) are given too, and the shares are computed on both.",
        "",
        "| model | checkpoint | measure | imports | floor | search | search --target image | floor / search | "
        "overhead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for label, m, share, over in (("wall s", r["median_s"], r["floor_share_of_search"], r["overhead_s"]),
                                      ("CPU s", r["median_cpu_s"], r["floor_share_of_search_cpu"],
                                       r["overhead_cpu_s"])):
            lines.append(f"| {r['model']} | {r['checkpoint_bytes'] / 1e6:,.0f} MB | {label} | {m['imports']:.2f} "
                         f"| {m['floor']:.2f} | {m['search']:.2f} | {m['search_target_image']:.2f} | {share:.0%} "
                         f"| {over:.2f} |")
    lines += ["", "Unavoidable share: floor / search (the imports and the weights); in CPU time the imports alone "
              "are " + ", ".join(f"{r['imports_share_of_floor_cpu']:.0%} of the floor with {r['model']}"
                                 for r in results)
              + ". The overhead is xmodal's own: its imports (SQLAlchemy, pydantic, FAISS, pyarrow), the catalog, "
              "the index version (read and sha256-checked), the calibration's reference sample, and the results.",
              "", "Spread of the runs (min-max, CPU s): " + "; ".join(
                  f"{r['model']} floor {min(r['runs_cpu_s']['floor']):.1f}-{max(r['runs_cpu_s']['floor']):.1f}, "
                  f"search {min(r['runs_cpu_s']['search']):.1f}-{max(r['runs_cpu_s']['search']):.1f}"
                  for r in results) + ". Where the runs spread this widely the machine was busy with other work; "
              "the shares are the figures to compare, the seconds are not a quiet machine's.", ""]
    (DOCS / "cold_search.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "ViT-B-32"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", type=int, default=48)
    args = parser.parse_args()
    results = []
    for arch in args.models:
        r = measure(arch, args.repeats, args.photos)
        print(json.dumps(r), flush=True)
        results.append(r)
    write(results, sys.argv[1:])


if __name__ == "__main__":
    main()
