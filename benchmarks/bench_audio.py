"""Audio indexing speed: end-to-end ``xmodal index`` over sound clips beside the CLAP model's forward
pass alone, and the clap -> clip alignment's held-out fit on the shipped bank.

Both speeds are measured in this one process on the same files and the same model. Without
--audio-model, a CLAP model with laion/clap-htsat-unfused's architecture and RANDOM weights is made
once under benchmarks/out/ (the real weights can't be downloaded here): the compute is the real
model's, the alignment's fit is not (random towers share no meaning, so its held-out recall is about
chance). Results go to stdout and benchmarks/out/audio_bench.json.

    python benchmarks/bench_audio.py [--clips 64] [--seconds 10] [--audio-model DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.bench import load_module

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each generated clip")
    parser.add_argument("--audio-model", help="a CLAP folder or HF id (default: random base-size CLAP)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from xmodal.bench import generate_sounds
    from xmodal.config import Settings
    from xmodal.encoders import load_encoder, resolve_model
    from xmodal.indexer.decode import DecodeConfig, DecodeTask, decode_one, preparations
    from xmodal.indexer.pipeline import index_sources
    from xmodal.media.types import MediaLimits

    OUT.mkdir(parents=True, exist_ok=True)
    audio_model = args.audio_model
    if not audio_model:
        folder = OUT / "clap-base-random"
        if not (folder / "config.json").is_file():
            load_module(HERE.parent / "scripts" / "make_tiny_clap.py").make_clap(folder, size="base")
        audio_model = str(folder)
    clip_model, clip_ckpt = load_module(HERE / "bench_index.py").make_clip_checkpoint("ViT-B-32")
    scratch = Path(tempfile.mkdtemp(prefix="xmodal-audio-bench-", dir=OUT))
    try:
        media = scratch / "media"
        generate_sounds(media, args.clips, seconds=args.seconds)
        settings = Settings(home=scratch / "home", clip_model=clip_model, clip_pretrained=clip_ckpt,
                            audio_model=audio_model, batch_size=args.batch_size, workers=args.workers)
        t0 = time.perf_counter()
        summary = index_sources(settings, [media], "bench", progress=False)
        e2e_s = time.perf_counter() - t0
        embed_s = summary.seconds["embed"]

        encoder = load_encoder("clap", resolve_model("clap", audio_model, None), settings.device)
        config = DecodeConfig(MediaLimits.from_settings(settings), preparations([encoder]))
        feats = [decode_one(DecodeTask(i, str(p), "audio", None), config).inputs for i, p in
                 enumerate(sorted(media.iterdir()))]
        windows = np.concatenate([f for f in feats if f is not None])
        encoder.embed_audio(windows[: args.batch_size])  # warm-up
        t1 = time.perf_counter()
        for i in range(0, len(windows), args.batch_size):
            encoder.embed_audio(windows[i : i + args.batch_size])
        model_s = time.perf_counter() - t1
        report = {
            "clips": args.clips, "seconds_per_clip": args.seconds, "windows": int(len(windows)),
            "ok": summary.ok, "failed": summary.failed,
            "end_to_end_s": round(e2e_s, 2), "end_to_end_items_per_s": round(summary.embedded / e2e_s, 2),
            "embed_stage_items_per_s": round(summary.embedded / embed_s, 2),
            "model_only_items_per_s": round(args.clips / model_s, 2),
            "model_only_windows_per_s": round(len(windows) / model_s, 2),
            "ratio_embed_stage_over_model": round(summary.embedded / embed_s / (args.clips / model_s), 3),
            "stage_seconds": summary.seconds, "alignment": summary.alignment,
            "audio_model": audio_model, "device": encoder.device, "batch_size": args.batch_size,
            "workers": args.workers,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))
    (OUT / "audio_bench.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT / 'audio_bench.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
