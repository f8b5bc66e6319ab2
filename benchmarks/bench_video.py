"""Video: indexing speed against the models alone, a decode worker's memory on a one-hour file, and how
often (random weights) an altered still finds its video with the right segment and a sound excerpt finds
its video.

Part 1, speed: ``--videos`` generated videos (``--shots`` shots each, 2 to 4 s apiece, 320x240 at 15 fps),
each shot a still from a photo (``--real DIR``: real images and sounds, else photo-like generated ones)
with sound underneath (a different clip under each shot), indexed by the local engine with open_clip
ViT-B-32 and a base-size CLAP (RANDOM weights unless named: the compute is the real models'). The same
frames and sound windows, decoded once, then go through the two models alone in this process: the ratio
of the two rates is what decoding, segmenting, pooling, shards and catalog cost on top of the models.

Part 2, memory: a ``--hour-s`` long (one hour) 320x240 file at 4 fps with sound is generated, each frame
noised so that the file is large (about 1 GB at a high bitrate), then decoded as an index worker decodes
it (frames sampled, transformed, segmented; the sound cut at the segments) in a fresh subprocess, which
reports its peak RSS: streamed from the open file (``decode_one`` on the path, as indexing does) and from its
bytes read whole (what indexing did before it streamed, and what an upload still does), the two giving the
same inputs (digests compared). The baseline is the same subprocess on a 10 s file of the same kind.
``--parts memory`` runs this part alone and keeps the other parts' figures from the last report.

Part 3, quality with random weights: for every shot, a still (the shot's image resized, cropped and
noised) searched with target video: found first, and found first with its segment overlapping the
shot's time range; and a 2 s excerpt of the shot's sound (WAV) searched with target video.

    python benchmarks/bench_video.py [--videos 8] [--shots 3] [--hour-s 3600] [--real DIR] [--parts memory]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DOCS = HERE.parent / "docs" / "benchmarks"
RATE = 48_000
FPS = 15
SIZE = (320, 240)


def _script(name: str, folder: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    spec.loader.exec_module(module)
    return module


def _real(folders: list[Path]) -> tuple[list[Path], list[Path]]:
    images, sounds = [], []
    for root in folders:
        for path in sorted(root.rglob("*")):
            ext = path.suffix.lower()
            if ext in (".jpg", ".jpeg", ".png", ".webp"):
                images.append(path)
            elif ext in (".wav", ".flac", ".ogg", ".mp3"):
                sounds.append(path)
    return images, sounds


def _sound_at(sounds: list[Path], i: int, seconds: float, helpers: Any) -> np.ndarray:
    """A clip of ``seconds`` at RATE: real sound (looped) where given, else the tests' generated one."""
    n = int(seconds * RATE)
    if sounds:
        import soundfile as sf
        from scipy.signal import resample_poly

        data, rate = sf.read(sounds[i % len(sounds)], dtype="float32", always_2d=True)
        mono = resample_poly(data.mean(axis=1), RATE, rate).astype(np.float32)
        return np.resize(mono, n) * (0.8 / max(1e-6, float(np.max(np.abs(mono)))))
    return helpers.sound(1000 + i, seconds, RATE)


def make_videos(folder: Path, videos: int, shots: int, real: list[Path], helpers: Any) -> list[dict[str, Any]]:
    from PIL import Image

    from xmodal.bench import generate_photos

    images, sounds = _real(real)
    if len(images) < videos * shots:
        images += generate_photos(folder / "stills", videos * shots - len(images), size=(640, 480))
    rng = np.random.default_rng(5)
    out = []
    for v in range(videos):
        lengths = [float(rng.choice([2.0, 3.0, 4.0])) for _ in range(shots)]
        stills = [Image.open(images[v * shots + s]).convert("RGB") for s in range(shots)]
        track = np.concatenate([_sound_at(sounds, v * shots + s, secs, helpers) for s, secs in enumerate(lengths)])
        path = helpers.write_video(folder / "media" / f"video_{v:03d}.mp4", list(zip(stills, lengths, strict=True)),
                                   fps=FPS, size=SIZE, audio=track)
        starts = np.concatenate([[0.0], np.cumsum(lengths)])
        out.append({"path": path, "stills": stills, "track": track,
                    "shots": [(float(starts[s]), float(starts[s + 1])) for s in range(shots)]})
    return out


def speed(settings: Any, media: Path, videos: list[dict[str, Any]]) -> dict[str, Any]:
    from xmodal.encoders import load_encoder, resolve_model
    from xmodal.indexer.decode import DecodeConfig, DecodeTask, decode_one, preparations
    from xmodal.indexer.pipeline import index_sources
    from xmodal.media.types import MediaLimits
    from xmodal.media.video import VideoSpec

    seconds = sum(v["shots"][-1][1] for v in videos)
    t0 = time.perf_counter()
    summary = index_sources(settings, [media], "bench", progress=False)
    wall = time.perf_counter() - t0
    clip = load_encoder("open_clip", resolve_model("open_clip", settings.clip_model, settings.clip_pretrained),
                        settings.device)
    clap = load_encoder("clap", resolve_model("clap", settings.audio_model, None), settings.device)
    config = DecodeConfig(MediaLimits.from_settings(settings), preparations([clip, clap]),
                          video=VideoSpec(settings.video_fps, settings.video_max_frames, settings.video_max_segment_s))
    decoded = [decode_one(DecodeTask(i, str(v["path"]), "video", None), config) for i, v in enumerate(videos)]
    frames = np.concatenate([d.inputs.frames for d in decoded])
    windows = np.concatenate([d.inputs.sound.windows for d in decoded])
    b = settings.batch_size
    clip.embed_images(frames[:b])  # warm-up
    clap.embed_audio(windows[:b])
    t1 = time.perf_counter()
    for i in range(0, len(frames), b):
        clip.embed_images(frames[i : i + b])
    t2 = time.perf_counter()
    for i in range(0, len(windows), b):
        clap.embed_audio(windows[i : i + b])
    t3 = time.perf_counter()
    model_s = t3 - t1
    embed_s = summary.seconds["embed"]
    return {"videos": len(videos), "video_seconds": round(seconds, 1), "ok": summary.ok, "failed": summary.failed,
            "frames": int(len(frames)), "sound_windows": int(len(windows)),
            "segments": int(sum(len(d.spans or []) for d in decoded)),
            "end_to_end_s": round(wall, 2), "embed_stage_s": round(embed_s, 2),
            "model_only_s": round(model_s, 2), "clip_only_s": round(t2 - t1, 2), "clap_only_s": round(t3 - t2, 2),
            "video_s_per_s_end_to_end": round(seconds / wall, 2),
            "video_s_per_s_embed_stage": round(seconds / embed_s, 2),
            "video_s_per_s_model_only": round(seconds / model_s, 2),
            "ratio_embed_stage_over_model": round(model_s / embed_s, 3),
            "stage_seconds": summary.seconds, "device": clip.device}


_DECODE = """
import dataclasses, gc, hashlib, json, sys, threading, time
import numpy as np
from xmodal.config import Settings
from xmodal.encoders import load_encoder, resolve_model
from xmodal.indexer.decode import DecodeConfig, DecodeTask, Decoded, _decode_as, decode_one, preparations
from xmodal.media.read import read_file
from xmodal.media.types import MediaLimits
from xmodal.media.video import VideoSpec

def rss_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024

s = Settings(clip_model=sys.argv[2], clip_pretrained=sys.argv[3], audio_model=sys.argv[4])
clip = load_encoder("open_clip", resolve_model("open_clip", s.clip_model, s.clip_pretrained), "cpu")
clap = load_encoder("clap", resolve_model("clap", s.audio_model, None), "cpu")
config = DecodeConfig(MediaLimits.from_settings(s), preparations([clip, clap]), video=VideoSpec())
del clip, clap  # a decode worker holds the transforms, not the models
gc.collect()
before, peak, done = rss_mb(), [0.0], threading.Event()

def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.01)

watcher = threading.Thread(target=watch)
watcher.start()
t0 = time.perf_counter()
if sys.argv[5] == "stream":  # as indexing decodes a local file: from the open file
    d = decode_one(DecodeTask(1, sys.argv[1], "video", None), config)
else:  # the bytes read whole (no byte cap here: the default one would refuse a file over 512 MiB)
    data = read_file(sys.argv[1], dataclasses.replace(config.limits, max_file_bytes=1 << 40))
    d = Decoded(1, hashlib.sha256(data).hexdigest(), len(data))
    d.modality, d.inputs, d.spans, d.meta = _decode_as("video", data, config)
took = time.perf_counter() - t0
done.set()
watcher.join()
assert d.error is None, d.error
digest = hashlib.sha256()
for part in (d.inputs.frames, d.inputs.segment, d.inputs.sound.windows, np.asarray(d.spans)):
    digest.update(np.ascontiguousarray(part).tobytes())
print(json.dumps({"peak_rss_mb": max(peak[0], rss_mb()), "rss_before_decode_mb": before, "decode_s": took,
                  "frames": len(d.inputs), "segments": len(d.spans), "sound_windows": len(d.inputs.sound),
                  "duration_s": d.meta["duration_s"], "bytes": d.size, "inputs_sha256": digest.hexdigest()}))
"""


def write_long(path: Path, seconds: float) -> Path:
    """A long 320x240 video at 4 fps with a sound track (AAC, 16 kHz), written a frame at a time: a new
    picture every 10 s, each frame noised (crf 18) so that the file is large, about 66 KB a frame."""
    import av

    rng = np.random.default_rng(9)
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=4)
    video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
    video.options = {"preset": "ultrafast", "crf": "18"}
    audio = out.add_stream("aac", rate=16_000)
    audio.layout = "mono"
    n_frames, at = int(seconds * 4), 0
    base = rng.integers(0, 208, size=(240, 320, 3), dtype=np.uint8)
    for n in range(n_frames):
        if n % 40 == 0:  # a new shot every 10 s
            base = rng.integers(0, 208, size=(240, 320, 3), dtype=np.uint8)
        noised = base + rng.integers(0, 48, size=base.shape, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(noised, format="rgb24")
        frame.pts = n
        for packet in video.encode(frame):
            out.mux(packet)
        while at < (n + 1) * 4000:  # a quarter second of sound per frame
            t = (at + np.arange(1024)) / 16_000
            chunk = (0.3 * np.sin(2 * np.pi * (200 + 50 * (n // 40 % 7)) * t)
                     + 0.02 * rng.standard_normal(1024)).astype(np.float32)[None, :]
            af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            af.sample_rate, af.pts = 16_000, at
            for packet in audio.encode(af):
                out.mux(packet)
            at += 1024
    for stream in (video, audio):
        for packet in stream.encode():
            out.mux(packet)
    out.close()
    return path


def memory(scratch: Path, seconds: float, models: tuple[str, str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    long = write_long(scratch / "hour.mp4", seconds)
    short = write_long(scratch / "ten.mp4", 10.0)
    made = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs = {}
    for name, path, how in (("ten_seconds", short, "stream"), ("long", long, "stream"), ("long_bytes", long, "bytes")):
        done = subprocess.run([sys.executable, "-c", _DECODE, str(path), *models, how], capture_output=True,
                              text=True, env=env, timeout=1800, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    own = {name: round(r["peak_rss_mb"] - r["rss_before_decode_mb"], 1) for name, r in runs.items()}
    file_mb = runs["long"]["bytes"] / 2**20
    return {"long_seconds": seconds, "generate_s": round(made, 1), **runs, "file_mb": round(file_mb, 1),
            "long_decode_mb": own["long"], "long_bytes_decode_mb": own["long_bytes"],
            "ten_s_decode_mb": own["ten_seconds"],
            "stream_over_file": round(own["long"] / file_mb, 3), "bytes_over_file": round(own["long_bytes"] / file_mb, 3),
            "same_inputs": runs["long"]["inputs_sha256"] == runs["long_bytes"]["inputs_sha256"]}


def quality(settings: Any, videos: list[dict[str, Any]], scratch: Path) -> dict[str, Any]:
    import soundfile as sf
    from PIL import Image

    from xmodal.search.engine import Searcher

    rng = np.random.default_rng(11)
    searcher = Searcher(settings, "bench")
    still_first = still_segment = sound_first = sound_segment = total = 0
    try:
        for v, video in enumerate(videos):
            for s, (start, end) in enumerate(video["shots"]):
                total += 1
                img = video["stills"][s]
                w, h = img.size
                crop = img.crop((w // 10, h // 10, w - w // 12, h - h // 12)).resize((300, 220))
                arr = np.asarray(crop).astype(np.int16) + rng.integers(-10, 11, size=(220, 300, 3), dtype=np.int16)
                still = scratch / f"still_{v}_{s}.png"
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(still)
                res = searcher.search(image=still, target="video", k=5)
                hit = bool(res) and res[0].uri.endswith(video["path"].name)
                seg = res[0].segment if res else None
                still_first += hit
                still_segment += hit and seg is not None and seg["start_s"] < end and start < seg["end_s"]
                mid = (start + end) / 2
                excerpt = scratch / f"excerpt_{v}_{s}.wav"
                sf.write(excerpt, video["track"][int((mid - 1) * RATE): int((mid + 1) * RATE)], RATE)
                res = searcher.search(audio=excerpt, target="video", k=5)
                hit = bool(res) and res[0].uri.endswith(video["path"].name)
                seg = res[0].segment if res else None
                sound_first += hit
                sound_segment += hit and seg is not None and seg["start_s"] < end and start < seg["end_s"]
    finally:
        searcher.close()
    return {"queries_per_kind": total, "candidates": len(videos),
            "still_finds_its_video_first": round(still_first / total, 3),
            "still_first_with_overlapping_segment": round(still_segment / total, 3),
            "sound_finds_its_video_first": round(sound_first / total, 3),
            "sound_first_with_overlapping_segment": round(sound_segment / total, 3),
            "chance_first": round(1 / len(videos), 3)}


def write_note(report: dict[str, Any]) -> None:
    s, m, q = report["speed"], report["memory"], report["quality"]
    lines = [
        "# Video: indexing speed, decode memory, still and sound lookups", "",
        f"Generated by `python benchmarks/bench_video.py {report['argv']}` on {report['when']}.", "",
        f"Machine: {report['machine']}. Models: open_clip ViT-B-32 and a base-size CLAP, RANDOM weights (full "
        f"compute), device {s['device']}, batch size {report['batch_size']}. Media: {report['media']}.", "",
        "## Speed", "",
        f"{s['videos']} videos, {s['video_seconds']} s of video in all (320x240, 15 fps, sound under every shot), "
        f"sampled at {report['fps']} frame/s: {s['frames']} frames, {s['segments']} segments, "
        f"{s['sound_windows']} sound windows.", "",
        "| run | seconds | seconds of video per second |", "|---|---|---|",
        f"| models alone (the same frames through CLIP, the same windows through CLAP) | {s['model_only_s']} | "
        f"{s['video_s_per_s_model_only']} |",
        f"| index embed stage (decode, segment, both models, pool, shards, catalog) | {s['embed_stage_s']} | "
        f"{s['video_s_per_s_embed_stage']} |",
        f"| `xmodal index` end to end (scan to published index, model loading included) | {s['end_to_end_s']} | "
        f"{s['video_s_per_s_end_to_end']} |", "",
        f"The embed stage runs at **{s['ratio_embed_stage_over_model']:.2f}x** the models' own rate "
        f"(CLIP alone {s['clip_only_s']} s, CLAP alone {s['clap_only_s']} s). End to end adds the build stage "
        f"({s['stage_seconds']['build']:.0f} s): a new collection with sound fits the clap -> clip alignment on "
        "2,400 bank texts through both text towers and calibrates its indexes, once per collection and pair of "
        "models, whatever the amount of video; reruns and larger collections pay it once."
        + (f" Load average when the run started: {report['load_average']} on {os.cpu_count()} CPUs (the machine "
           "was shared; both rates are measured under the same load)." if report.get("load_average") else ""), "",
        "## Memory of one decode worker on a long file", "",
        *([report["remeasured"], ""] if report.get("remeasured") else []),
        f"A {m['long_seconds'] / 3600:g} h file (320x240, 4 fps, every frame noised so that the file is large; 16 kHz "
        f"AAC sound; **{m['file_mb']:.0f} MiB**) decoded as an index worker decodes it (default sampling: 1 "
        "frame/s, at most 256 frames kept; its sound cut at the segments and turned into CLAP inputs), in a fresh "
        "process: streamed from the open file (how indexing reads a local file) and from its bytes read whole "
        "(how indexing read it before, and how an upload or a fetched URL is still read, within their byte "
        "limits); a 10 s file of the same kind is the baseline:", "",
        "| file | read | RSS before the decode MB | peak RSS while decoding MB | the decode's own MB | "
        "own / file size | decode s | frames kept | segments | sound windows |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {name} | {how} | {r['rss_before_decode_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
          f"{r['peak_rss_mb'] - r['rss_before_decode_mb']:.0f} | "
          f"{(r['peak_rss_mb'] - r['rss_before_decode_mb']) / (r['bytes'] / 2**20):.3f} | {r['decode_s']:.1f} | "
          f"{r['frames']} | {r['segments']} | {r['sound_windows']} |"
          for name, how, r in (("10 s", "streamed", m["ten_seconds"]), ("long", "streamed", m["long"]),
                               ("long", "bytes, whole", m["long_bytes"]))],
        "",
        f"What the decode itself adds on the long file: **{m['long_decode_mb']:.0f} MB streamed "
        f"({m['stream_over_file']:.3f} of the file's size) against {m['long_bytes_decode_mb']:.0f} MB from the "
        f"bytes ({m['bytes_over_file']:.3f})**; {m['ten_s_decode_mb']:.0f} MB for 10 s. RSS is sampled every 10 ms "
        "in the worker, after the models that gave the transforms were freed (what is left of them is the "
        "'before' column). Streamed, the worker holds FFmpeg's read buffer and the demuxer's index, the kept "
        f"frames (as ViT-B-32 inputs, 3x224x224 float32: {m['long']['frames'] * 3 * 224 * 224 * 4 / 2**20:.0f} MB "
        "of it) and the sound windows, bounded by the sampling spec whatever the file's size; read whole, the "
        "file's bytes come on top (and the default `XMODAL_MAX_FILE_BYTES` of 512 MiB would have refused this "
        "file outright). Both reads gave the same frames, segments and sound windows: "
        f"{'identical digests' if m['same_inputs'] else 'DIFFERENT digests'} of the model inputs "
        "(so the same vectors).", "",
        "## Finding videos (random weights)", "",
        f"{q['queries_per_kind']} queries of each kind over {q['candidates']} videos (chance of being first: "
        f"{q['chance_first']}).", "",
        "| query | its video first | first with the segment overlapping the shot |", "|---|---|---|",
        f"| an altered still of a shot (cropped, resized, noised) | {q['still_finds_its_video_first']} | "
        f"{q['still_first_with_overlapping_segment']} |",
        f"| a 2 s excerpt of a shot's sound (WAV) | {q['sound_finds_its_video_first']} | "
        f"{q['sound_first_with_overlapping_segment']} |", "",
        "Random weights know no meaning: these lookups work because near-copies of a frame or a sound land "
        "near it in any fixed network, which is what finding the source of a still or of a jingle needs. "
        "Text -> video needs real weights and is not measured here.", "",
    ]
    (DOCS / "video.md").write_text("\n".join(lines))
    (DOCS / "video.json").write_text(json.dumps(report, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--hour-s", type=float, default=3600.0, help="length of the long file (memory part)")
    parser.add_argument("--real", type=Path, action="append", default=[], help="a folder of real images and sounds")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second (XMODAL_VIDEO_FPS)")
    parser.add_argument("--parts", default="speed,quality,memory",
                        help="which parts to run, comma-separated; the others keep the last report's figures")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"speed", "quality", "memory"}:
        parser.error(f"unknown parts: {', '.join(sorted(parts - {'speed', 'quality', 'memory'}))}")

    import torch

    from xmodal.config import Settings

    helpers = _script("helpers", HERE.parent / "tests")
    OUT.mkdir(parents=True, exist_ok=True)
    audio_model = OUT / "clap-base-random"
    if not (audio_model / "config.json").is_file():
        _script("make_tiny_clap", HERE.parent / "scripts").make_clap(audio_model, size="base")
    clip_model, clip_ckpt = _script("bench_index", HERE).make_clip_checkpoint("ViT-B-32")
    scratch = Path(tempfile.mkdtemp(prefix="xmodal-video-bench-", dir=OUT))
    try:
        videos = make_videos(scratch, args.videos, args.shots, args.real, helpers) if parts - {"memory"} else []
        settings = Settings(home=scratch / "home", clip_model=clip_model, clip_pretrained=clip_ckpt,
                            audio_model=str(audio_model), batch_size=args.batch_size, video_fps=args.fps)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017
        report: dict[str, Any] = {
            "when": now,
            "machine": f"{os.cpu_count()} CPUs, {torch.cuda.device_count()} GPU, Python {platform.python_version()}, "
                       f"torch {torch.__version__}",
            "media": "real files from " + ", ".join(map(str, args.real)) if args.real else
                     "generated photo-like stills and generated sound (no --real folder)",
            "batch_size": args.batch_size, "fps": args.fps, "load_average": round(os.getloadavg()[0], 2),
            "argv": " ".join(sys.argv[1:])}
        if parts != {"speed", "quality", "memory"}:  # the parts not run keep the last report's figures
            last = json.loads((DOCS / "video.json").read_text())
            report = {**last, "remeasured": f"Measured on {now} by `--parts {args.parts}` (load average "
                                            f"{report['load_average']}); the other parts are from {last['when']}."}
        if "speed" in parts:
            report["speed"] = speed(settings, scratch / "media", videos)
            print(json.dumps(report["speed"], indent=2), file=sys.stderr)
        if "quality" in parts:
            if "speed" not in parts:  # quality searches the collection the speed part indexed
                from xmodal.indexer.pipeline import index_sources

                index_sources(settings, [scratch / "media"], "bench", progress=False)
            report["quality"] = quality(settings.model_copy(update={"audio_model": None}), videos, scratch)
            print(json.dumps(report["quality"], indent=2), file=sys.stderr)
        if "memory" in parts:
            report["memory"] = memory(scratch, args.hour_s, (clip_model, clip_ckpt, str(audio_model)))
            print(json.dumps(report["memory"], indent=2), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_note(report)
    print(f"wrote {DOCS / 'video.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
