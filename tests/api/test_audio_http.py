"""Audio through the HTTP API: uploads of every accepted kind, routes and fusion in the response,
long-clip segments, bad audio as 4xx, and a collection without audio."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from helpers import serving, sound, write_photos, write_sounds, write_texts

pytestmark = pytest.mark.slow  # a real `xmodal serve` process


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str], tiny_clap: str
           ) -> Iterator[tuple[httpx.Client, Path]]:
    root = tmp_path_factory.mktemp("api-audio")
    media = root / "media"
    write_photos(media, 4)
    write_sounds(media, 4)
    sf.write(media / "long.flac", sound(7, 22.0), 48_000)
    write_texts(media, {"a.txt": "rain on a tin roof"})
    pics = root / "pics"
    write_photos(pics, 3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(root / "home"), XMODAL_CLIP_MODEL=tiny_clip[0], XMODAL_CLIP_PRETRAINED=tiny_clip[1],
               XMODAL_AUDIO_MODEL=tiny_clap)
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    for folder, name in ((media, "av"), (pics, "pics")):
        run = subprocess.run([xmodal, "index", str(folder), "-c", name, "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    env.pop("XMODAL_AUDIO_MODEL")  # the service loads each collection's recorded models
    with serving(env, root / "serve.log", "av", "pics", ready_seconds=90) as base, \
            httpx.Client(base_url=base, timeout=30) as c:
        yield c, media


def _upload(c: httpx.Client, data: bytes, content_type: str, **form: str) -> httpx.Response:
    return c.post("/v1/search/upload", data={"collection": "av", **form},
                  files={"file": ("q", data, content_type)})


@pytest.mark.parametrize(("fmt", "ctype"), [("WAV", "audio/wav"), ("FLAC", "audio/flac"), ("OGG", "audio/ogg"),
                                            ("MP3", "audio/mpeg")])
def test_an_audio_upload_finds_its_clip_first(client, fmt, ctype):
    c, media = client
    buf = io.BytesIO()
    sf.write(buf, sound(2, 3.0), 48_000, format=fmt)
    body = c.post("/v1/search/upload", data={"collection": "av", "target": "audio", "k": "3"},
                  files={"file": ("q", buf.getvalue(), ctype)}).json()
    assert body["results"][0]["uri"] == str(media / "sound_0002.wav"), body
    assert body["routes"] == [{"target": "audio", "space": "clap", "method": "ip"}] and body["fusion"] is None


def test_audio_to_images_and_any_say_how_they_were_scored(client):
    c, media = client
    data = (media / "sound_0001.wav").read_bytes()
    images = _upload(c, data, "audio/wav", target="image").json()
    assert {r["modality"] for r in images["results"]} == {"image"}
    assert {(r["space"], r["method"]) for r in images["results"]} == {("clip", "aligned-ip")}
    anything = _upload(c, data, "audio/x-wav", k="20").json()
    assert anything["fusion"] == "relevance" and anything["results"][0]["uri"] == str(media / "sound_0001.wav")
    assert all(isinstance(r["score"], float) and isinstance(r["relevance"], float) and r["method"] in
               ("ip", "aligned-ip") for r in anything["results"])
    ranked = _upload(c, data, "audio/x-wav", k="20", fusion="rrf").json()
    assert ranked["fusion"] == "rrf(k=60)" and {r["modality"] for r in ranked["results"]} == {"image", "audio", "text"}
    assert all(isinstance(r["rrf"], float) for r in ranked["results"])


def test_a_long_clip_result_carries_its_best_window(client):
    c, _ = client
    buf = io.BytesIO()
    sf.write(buf, sound(7, 22.0)[12 * 48_000:], 48_000, format="WAV")  # the clip's last window
    body = _upload(c, buf.getvalue(), "audio/wav", target="audio", k="6").json()
    hit = next(r for r in body["results"] if r["uri"].endswith("long.flac"))
    assert hit["segment"]["start_s"] == 12.0 and hit["segment"]["end_s"] == 22.0
    text = c.post("/v1/search", json={"collection": "av", "text": "rain", "target": "audio", "k": 6}).json()
    long = next(r for r in text["results"] if r["uri"].endswith("long.flac"))
    assert long["segment"]["end_s"] - long["segment"]["start_s"] == 10.0


def test_bad_audio_is_a_4xx_with_a_message(client):
    c, _ = client
    cases = [
        (np.random.default_rng(0).bytes(3000), "audio/mpeg", 415),
        (b"", "audio/wav", 415),
    ]
    silent = io.BytesIO()
    sf.write(silent, np.zeros(48_000, dtype=np.float32), 48_000, format="WAV")
    cases.append((silent.getvalue(), "audio/wav", 422))
    for data, ctype, status in cases:
        r = _upload(c, data, ctype)
        assert r.status_code == status, r.text
        assert r.json()["message"]


def test_asking_a_collection_without_audio_for_audio_is_a_4xx(client):
    c, media = client
    r = c.post("/v1/search", json={"collection": "pics", "text": "rain", "target": "audio"})
    assert 400 <= r.status_code < 500 and "no audio" in r.json()["message"]
    r = c.post("/v1/search/upload", data={"collection": "pics"},
               files={"file": ("q.wav", (media / "sound_0000.wav").read_bytes(), "audio/wav")})
    assert 400 <= r.status_code < 500 and "no audio" in r.json()["message"]
    ok = c.post("/v1/search", json={"collection": "pics", "text": "rain", "k": 5}).json()
    assert len(ok["results"]) == 3
