"""Helpers shared by the tests: generated media, the CLI in-process, scripts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from xmodal.bench import load_module

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str) -> Any:
    """One of the repository's ``scripts/`` (e.g. ``make_tiny_clip``) as a module."""
    return load_module(ROOT / "scripts" / f"{name}.py")


def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A distinct, photo-like image: a smooth random colour field with a few shapes."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(img).astype(np.int16)
    for _ in range(4):
        x0, y0 = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        w, h = rng.integers(10, 60), rng.integers(10, 60)
        arr[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    arr += rng.integers(-8, 9, size=arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_photos(folder: Path, n: int, *, start: int = 0, ext: str = "jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"photo_{i:04d}.{ext}"
        photo(i).save(p)
        paths.append(p)
    return paths


def write_texts(folder: Path, texts: dict[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, body in texts.items():
        p = folder / name
        p.write_text(body, encoding="utf-8")
        out.append(p)
    return out


def sound(seed: int, seconds: float = 3.0, rate: int = 48_000) -> np.ndarray:
    """A distinct, sound-effect-like mono clip: a few seeded tones with moving envelopes, plus noise.
    Its character changes every few seconds, so the windows of a long clip differ from each other."""
    rng = np.random.default_rng(1000 + seed)
    t = np.arange(int(seconds * rate)) / rate
    out = np.zeros_like(t)
    for _ in range(4):
        freq = rng.uniform(80, 6000)
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t + rng.uniform(0, 6.3))
        out += rng.uniform(0.05, 0.25) * env * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
    out += 0.02 * rng.standard_normal(len(t))
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def write_sounds(folder: Path, n: int, *, start: int = 0, ext: str = "wav", seconds: float = 3.0,
                 rate: int = 48_000) -> list[Path]:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"sound_{i:04d}.{ext}"
        sf.write(p, sound(i, seconds, rate), rate)
        paths.append(p)
    return paths


def write_video(path: Path, shots: list[tuple[Image.Image, float]] | None, *, fps: int = 8, codec: str = "libx264",
                container: str | None = None, audio: np.ndarray | None = None, audio_rate: int = 48_000,
                size: tuple[int, int] = (96, 64), rotation: int = 0) -> Path:
    """Encode a video with PyAV (never a system ffmpeg): each shot is a still held for its seconds (with a
    little seeded noise, as a camera gives), at ``fps``; ``audio`` (mono float32) as an AAC or Opus track.
    ``shots=None`` writes an audio-only file. ``rotation``: the display matrix's counter-clockwise degrees."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(path), "w", format=container)
    video = None
    if shots is not None:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
    sound_stream = None
    if audio is not None:
        acodec = "libopus" if path.suffix.lower() in (".webm", ".ogg") else "aac"
        sound_stream = out.add_stream(acodec, rate=audio_rate)
        sound_stream.layout = "mono"
    rng = np.random.default_rng(7)
    out.start_encoding()  # the header, even for a file that gets no frames
    if video is not None:
        n = 0
        for image, seconds in shots or []:
            base = np.asarray(image.convert("RGB").resize(size)).astype(np.int16)
            for _ in range(round(seconds * fps)):
                noisy = np.clip(base + rng.integers(-3, 4, size=base.shape), 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(noisy, format="rgb24")
                frame.pts = n
                n += 1
                for packet in video.encode(frame):
                    out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    if sound_stream is not None and audio is not None:
        step = 1024
        for at in range(0, len(audio), step):
            chunk = np.ascontiguousarray(audio[at:at + step], dtype=np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = audio_rate
            frame.pts = at
            for packet in sound_stream.encode(frame):
                out.mux(packet)
        for packet in sound_stream.encode():
            out.mux(packet)
    out.close()
    return path


def cli_json(capsys: pytest.CaptureFixture[str], argv: list[str], *, code: int = 0) -> Any:
    """Run the CLI in-process with --json, check its exit code (3: an index run with failed files) and
    parse what it printed."""
    from xmodal.cli import main

    capsys.readouterr()
    got = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert got == code, out
    return json.loads(out)


class Crash(Exception):
    """What a test's crash hook raises inside the indexer (a stand-in for SIGKILL at that point)."""


def crash_once_at(point: str) -> Any:
    """A ``crash_at`` hook for the indexer that raises :class:`Crash` the first time it reaches ``point``."""
    state = {"armed": True}

    def hook(where: str) -> None:
        if where == point and state["armed"]:
            state["armed"] = False
            raise Crash(where)

    return hook


class CrashOnWidth:
    """An image transform for decode workers that kills its process on images of one width, the way
    a decoder segfault or the OOM killer would. Picklable, importable by spawned workers."""

    def __init__(self, inner: Any, width: int) -> None:
        self.inner = inner
        self.width = width

    def __call__(self, image: Image.Image) -> Any:
        if image.width == self.width:
            import os

            os._exit(13)
        return self.inner(image)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(env: dict[str, str], log: Path, *collections: str, ready_seconds: float = 60, host: str = "127.0.0.1",
            **extra_env: str) -> Iterator[str]:
    """`xmodal serve` of some collections as a subprocess (listening on ``host``, reached on 127.0.0.1);
    yields its base URL once /readyz answers 200; always stopped."""
    port = free_port()
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [xmodal, "serve", "--host", host, "--port", str(port), "--collection", *collections],
            env={**env, **extra_env}, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    keys = [k for k in {**env, **extra_env}.get("XMODAL_API_KEYS", "").split(",") if k.strip()]
    headers = {"X-API-Key": keys[0].strip()} if keys else {}  # /readyz is behind the key when keys are set
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            if proc.poll() is not None:
                pytest.fail(f"xmodal serve exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(base + "/readyz", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"xmodal serve not ready in {ready_seconds} s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)  # polling interval of the readiness probe
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def live_app(settings: Any, *collections: str, ready_seconds: float = 60) -> Iterator[tuple[str, Any]]:
    """The real app (`xmodal serve`'s) in a real uvicorn server on a free 127.0.0.1 port, in a thread of
    this process: (base URL, the Service) once /readyz answers 200; always stopped."""
    import threading

    import uvicorn

    from xmodal.api import server
    from xmodal.api.app import create_app
    from xmodal.api.service import Service

    service = Service(settings, list(collections) or None)
    port = free_port()
    uv = uvicorn.Server(server.config(create_app(service), settings, host="127.0.0.1", port=port))
    thread = threading.Thread(target=uv.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": settings.api_key_list[0]} if settings.api_key_list else {}
    try:
        deadline = time.monotonic() + ready_seconds
        while True:
            try:
                if httpx.get(base + "/readyz", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert thread.is_alive(), "the server thread ended"
            assert service.load_error is None, service.load_error
            assert time.monotonic() < deadline, f"not ready in {ready_seconds} s"
            time.sleep(0.1)
        yield base, service
    finally:
        uv.should_exit = True
        thread.join(timeout=20)


MEDIA = {"image": "image", "title": "text"}  # a products manifest's media columns


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import csv

    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)
    return path


def products(folder: Path, n: int) -> list[dict[str, Any]]:
    """Manifest rows of n products: an image each (written under folder/img), a title, typed metadata."""
    photos = write_photos(folder / "img", n)
    return [{"id": f"SKU-{i:03d}", "image": f"img/{p.name}", "title": f"leather boot model {i}",
             "category": "shoes" if i % 2 else "bags", "price": f"{10 + i}.50", "brand": "Acme",
             "tags": f"red|size{i % 3}"} for i, p in enumerate(photos)]
