"""``xmodal bench``: end-to-end indexing throughput beside model-only forward throughput.

Both are measured in one process, on the same files and the same model, so their ratio says how
much of the model's speed the pipeline (scan, read, hash, decode, preprocess, shard write, catalog,
index build) keeps. With no sources it generates photo-like JPEGs (seeded).
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from xmodal.config import Settings
from xmodal.encoders import load_encoder, resolve_model
from xmodal.encoders.base import ImageEncoder
from xmodal.indexer.decode import DecodeConfig, DecodeTask, decode_one, preparations
from xmodal.indexer.pipeline import index_sources
from xmodal.indexer.scan import scan
from xmodal.media.types import MediaLimits

log = logging.getLogger(__name__)


def load_module(path: Path) -> Any:
    """A Python file loaded as a module by its path (the repository's ``scripts/`` and ``benchmarks/``
    are folders of scripts, not packages), registered under its stem in ``sys.modules`` (dataclasses
    look their module up) unless one of that name is loaded already."""
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def generate_photos(folder: Path, n: int, *, size: tuple[int, int] = (1024, 768), seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs with smooth colour fields, shapes and noise (so JPEG decode cost is real)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, size[0] - 64)), int(rng.integers(0, size[1] - 64))
            arr[y0:y0 + int(rng.integers(16, 300)), x0:x0 + int(rng.integers(16, 300))] = rng.integers(0, 256, 3)
        arr += rng.integers(-12, 13, size=arr.shape, dtype=np.int16)
        path = folder / f"img_{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def generate_sounds(folder: Path, n: int, *, seconds: float = 5.0, rate: int = 44_100, seed: int = 0) -> list[Path]:
    """Sound-effect-like FLAC clips: seeded tones with moving envelopes over noise (needs the audio extra)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    paths = []
    for i in range(n):
        x = 0.02 * rng.standard_normal(len(t))
        for _ in range(4):
            env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3))
            x += rng.uniform(0.05, 0.25) * env * np.sin(2 * np.pi * rng.uniform(80, 6000) * t)
        path = folder / f"sound_{i:06d}.flac"
        sf.write(path, (0.8 * x / np.max(np.abs(x))).astype(np.float32), rate)
        paths.append(path)
    return paths


def model_only_rate(settings: Settings, sources: list[Path], *, repeats: int = 1) -> tuple[float, int, str]:
    """Images/s of the encoder's forward pass alone, on the same files, decoded beforehand."""
    record = resolve_model("open_clip", settings.clip_model, settings.clip_pretrained)
    encoder = cast(ImageEncoder, load_encoder("open_clip", record, settings.device))
    config = DecodeConfig(MediaLimits.from_settings(settings), preparations([encoder]))
    pixels = []
    for i, entry in enumerate(e for e in scan(sources) if e.modality == "image" and e.error is None):
        d = decode_one(DecodeTask(i, entry.path, "image", None), config)
        if d.error is None:
            pixels.append(d.inputs)
    if not pixels:
        raise ValueError("no decodable images in the benchmark sources")
    batch = settings.batch_size
    encoder.embed_images(np.stack(pixels[:batch]))  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for start in range(0, len(pixels), batch):
            encoder.embed_images(np.stack(pixels[start:start + batch]))
    elapsed = time.perf_counter() - t0
    return len(pixels) * repeats / elapsed, len(pixels), encoder.device


def run_index_bench(settings: Settings, *, sources: list[Path] | None = None, n_images: int = 512,
                    work_dir: Path | None = None) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="xmodal-bench-", dir=work_dir))
    try:
        if not sources:
            generate_photos(scratch / "media", n_images)
            sources = [scratch / "media"]
        bench_settings = settings.model_copy(update={"home": scratch / "home", "database_url": None})
        t0 = time.perf_counter()
        summary = index_sources(bench_settings, sources, "bench", progress=False)
        e2e_s = time.perf_counter() - t0
        e2e_rate = summary.embedded / e2e_s
        model_rate, n, device = model_only_rate(bench_settings, sources)
        report = {
            "items": summary.embedded,
            "failed": summary.failed,
            "end_to_end_items_per_s": round(e2e_rate, 2),
            "end_to_end_s": round(e2e_s, 2),
            "stage_seconds": summary.seconds,
            "model_only_items_per_s": round(model_rate, 2),
            "ratio_end_to_end_over_model": float(f"{e2e_rate / model_rate:.4g}"),
            "model": settings.clip_model,
            "device": device,
            "workers": settings.resolved_workers,
            "batch_size": settings.batch_size,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        }
        report["table"] = (
            f"items {summary.embedded} ({n} decodable) | model {settings.clip_model} on {device}\n"
            f"end-to-end indexing: {e2e_rate:8.1f} items/s  ({e2e_s:.1f} s incl. scan, decode, shards, build)\n"
            f"model-only forward:  {model_rate:8.1f} items/s\n"
            f"ratio end-to-end / model-only: {e2e_rate / model_rate:.3f}"
        )
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
