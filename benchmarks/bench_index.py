"""Indexing throughput: end-to-end `xmodal index` items/s beside model-only forward items/s.

Both are measured in this one process on the same files and the same model. Without --clip-pretrained
it writes a full-size ViT-B-32 with random weights (same compute as the real one, no download) under
benchmarks/out/. Results go to stdout and benchmarks/out/index_bench.json.

    python benchmarks/bench_index.py [--images 512] [--batch-size 64] [--clip-model ViT-B-32 --clip-pretrained PATH]
    python benchmarks/bench_index.py --tiny        # quick plumbing run with the tiny test model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xmodal.bench import (
    load_module,
    run_index_bench,
)
from xmodal.config import load_settings

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def make_clip_checkpoint(arch: str) -> tuple[str, str]:
    """(model, checkpoint) of a random-weights open_clip model under benchmarks/out/, made once."""
    module = load_module(HERE.parent / "scripts" / "make_tiny_clip.py")
    folder = OUT / f"model-{arch}"
    if arch == "tiny":
        model, ckpt = module.make_clip(folder)
        return str(model), str(ckpt)
    ckpt = folder / f"{arch}.pt"
    if not ckpt.exists():
        module.make_clip(folder, arch=arch)
    return arch, str(ckpt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--clip-pretrained")
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        model, ckpt = make_clip_checkpoint("tiny")
    elif args.clip_pretrained:
        model, ckpt = args.clip_model, args.clip_pretrained
    else:
        model, ckpt = make_clip_checkpoint(args.clip_model)
    settings = load_settings(clip_model=model, clip_pretrained=ckpt, batch_size=args.batch_size,
                             workers=args.workers or None, home=OUT / "home")
    report = run_index_bench(settings, sources=args.sources or None, n_images=args.images, work_dir=OUT)
    print(report["table"])
    (OUT / "index_bench.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'index_bench.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
