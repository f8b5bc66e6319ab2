"""Videos beside photos, texts and sounds: indexed as segments in ``clip``, found by text and by an altered
still with the segment of its shot, bad videos failed with reasons while the run goes on, audio-only
containers indexed as audio, the same file giving the same vectors, and the CLI and HTTP agreeing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, live_app, photo, sound, write_photos, write_sounds, write_texts, write_video
from PIL import Image

from xmodal.config import Settings
from xmodal.indexer.decode import DecodeConfig, DecodeTask, decode_one, preparations
from xmodal.indexer.encode import encode_group
from xmodal.indexer.pipeline import index_sources
from xmodal.media.types import MediaLimits
from xmodal.media.video import VideoSpec
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import Catalog

#: each video: three shots of 2, 3 and 2 seconds, from photos no other file uses
VIDEOS = {f"film_{v}.{ext}": [(photo(100 + 3 * v + s), secs) for s, secs in enumerate((2.0, 3.0, 2.0))]
          for v, ext in enumerate(("mp4", "webm", "mkv", "mov"))}
CODECS = {".webm": "libvpx-vp9", ".mkv": "mpeg4"}
SHOT_2 = (2.0, 5.0)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip, tiny_clap):
    root = tmp_path_factory.mktemp("video-collection")
    media = root / "media"
    write_photos(media, 4)
    write_texts(media, {"a.txt": "a crowd cheering in a stadium"})
    write_sounds(media, 2, seconds=1.0)
    for name, shots in VIDEOS.items():
        write_video(media / name, shots, codec=CODECS.get(Path(name).suffix, "libx264"), audio=sound(5, 7.0))
    write_video(media / "voice.m4a", None, audio=sound(6, 2.0), container="mp4")
    write_video(media / "podcast.mp4", None, audio=sound(7, 2.0))
    (media / "empty.mp4").write_bytes(b"")
    good = (media / "film_0.mp4").read_bytes()
    (media / "cut.mp4").write_bytes(good[: len(good) // 2])
    (media / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        audio_model=tiny_clap, batch_size=8, exact_threshold=1000, workers=1, video_fps=2.0)
    summary = index_sources(settings, [media], "v", progress=False)
    return settings, media, summary


@pytest.fixture
def searcher(indexed):
    s = Searcher(indexed[0].model_copy(update={"audio_model": None}), "v")
    yield s
    s.close()


def _still(tmp_path: Path, video: int = 2) -> Path:
    """A frame of the video's second shot, resized and noised: a still someone took from it."""
    img = np.asarray(photo(100 + 3 * video + 1).resize((140, 100))).astype(np.int16)
    img += np.random.default_rng(3).integers(-6, 7, size=img.shape, dtype=np.int16)
    path = tmp_path / "still.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def test_bad_videos_fail_with_reasons_and_the_run_goes_on(indexed):
    _, _, summary = indexed
    reasons = {os.path.basename(u): r for u, r in summary.failures}
    assert set(reasons) == {"empty.mp4", "cut.mp4", "noise.mp4"}, reasons
    assert "empty" in reasons["empty.mp4"] and "no moov atom" in reasons["cut.mp4"]
    assert "not a recognised video container" in reasons["noise.mp4"]
    assert summary.ok == 4 + 1 + 2 + len(VIDEOS) + 2


def test_videos_are_indexed_as_segments_and_audio_containers_as_audio(indexed):
    settings, media, _ = indexed
    catalog = Catalog(settings.resolved_database_url)
    try:
        cid = catalog.collection_id("v")
        items = catalog.items_by_uri(cid, [str(media / n) for n in (*VIDEOS, "voice.m4a", "podcast.mp4")])
        clap = {i for i, *_ in catalog.live_vectors(cid, "clap")}
    finally:
        catalog.close()
    for name in VIDEOS:
        it = items[str(media / name)]
        assert it.modality == "video" and it.meta["windows"] == 3 and it.meta["has_audio"], it.meta
        assert it.meta["duration_s"] == pytest.approx(7.0, abs=0.1)
    for name in ("voice.m4a", "podcast.mp4"):
        it = items[str(media / name)]
        assert it.modality == "audio" and it.id in clap and it.meta["duration_s"] == pytest.approx(2.0, abs=0.05)


def test_an_altered_still_finds_its_video_first_with_the_shots_segment(indexed, searcher, tmp_path):
    settings, media, _ = indexed
    for video in range(len(VIDEOS)):
        name = list(VIDEOS)[video]
        results = searcher.search(image=_still(tmp_path, video), target="video", k=3)
        assert results[0].uri == str(media / name), [r.uri for r in results]
        seg = results[0].segment
        assert seg is not None and seg["start_s"] < SHOT_2[1] and seg["end_s"] > SHOT_2[0], seg
        assert (seg["start_s"], seg["end_s"]) == pytest.approx(SHOT_2, abs=0.51)


def test_text_finds_videos_and_any_includes_them(indexed, searcher):
    results = searcher.search(text="a crowd cheering", target="video", k=10)
    assert len(results) == len(VIDEOS) and {r.modality for r in results} == {"video"}
    assert all(r.segment is not None and r.space == "clip" for r in results)
    every = searcher.search(text="a crowd cheering", target="any", k=50)
    assert "video" in {r.modality for r in every}


def test_the_same_file_gives_the_same_vectors(indexed, searcher):
    settings, media, _ = indexed
    enc = searcher.encoder
    config = DecodeConfig(MediaLimits.from_settings(settings), preparations([enc]), video=VideoSpec(fps=2.0))
    path = str(media / "film_1.webm")
    runs = [encode_group(enc, "video", [decode_one(DecodeTask(1, path, "video", None), config)], 8) for _ in (0, 1)]
    (v1, w1), (v2, w2) = runs
    assert np.array_equal(v1, v2) and w1[0] is not None and w2[0] is not None
    assert np.array_equal(w1[0].vectors, w2[0].vectors) and np.array_equal(w1[0].spans, w2[0].spans)
    stored = searcher.item_vector(searcher.catalog.items_by_uri(searcher.collection_id, [path])[path].id)
    assert np.allclose(stored, v1[0], atol=1e-6)


def test_the_cli_and_http_give_the_same_video_results(indexed, capsys, tmp_path):
    settings, media, _ = indexed
    still = _still(tmp_path, 1)
    out = cli_json(capsys, ["search", "--home", str(settings.home), "-c", "v", "--image", str(still),
                            "--target", "video", "-k", "3"])
    with live_app(settings.model_copy(update={"audio_model": None}), "v") as (base, _):
        import httpx

        body = httpx.post(f"{base}/v1/search/upload", data={"collection": "v", "target": "video", "k": "3"},
                          files={"file": ("q.png", still.read_bytes(), "image/png")}, timeout=60).json()
    assert [r["uri"] for r in out["results"]] == [r["uri"] for r in body["results"]]
    assert out["results"][0]["uri"] == str(media / "film_1.webm")
    assert out["results"][0]["segment"] == body["results"][0]["segment"]
    assert body["results"][0]["segment"]["start_s"] == pytest.approx(2.0, abs=0.51)


def test_verify_finds_a_video_collection_consistent_and_a_rerun_embeds_nothing(indexed, capsys):
    settings, media, _ = indexed
    report = cli_json(capsys, ["verify", "--home", str(settings.home), "-c", "v"])
    assert report["ok"] is True and report["problems"] == [], report
    again = index_sources(settings, [media], "v", progress=False)
    assert again.embedded == 0 and again.failed == 0 and again.unchanged == 4 + 1 + 2 + len(VIDEOS) + 2 + 3


def test_a_video_result_lists_its_best_segments_on_request(indexed, searcher, tmp_path):
    """``segments``: the best N windows of each video result, best first, the first being ``segment``; a bad
    count is refused; the default lists none beside ``segment``."""
    from xmodal.errors import UserError

    still = _still(tmp_path, 2)
    outcome = searcher.run(image=still, target="video", k=3, segments=2)
    assert len(outcome.results) == 3
    for r in outcome.results:
        assert r.segments is not None and len(r.segments) == 2 and r.segments[0] == r.segment
        assert r.segments[0]["score"] >= r.segments[1]["score"] and r.segments[0]["window"] != r.segments[1]["window"]
        assert r.segment["relevance"] == r.relevance  # the route scores segments: each has its relevance
    every = searcher.run(image=still, target="video", k=3, segments=20).results[0]
    assert [s["window"] for s in every.segments][:2] == [s["window"] for s in outcome.results[0].segments]
    assert sorted(s["window"] for s in every.segments) == [0, 1, 2]  # all three shots, though 20 were asked for
    spans = [(s["start_s"], s["end_s"]) for s in every.segments]
    assert spans[0] == pytest.approx(SHOT_2, abs=0.51) and [s["score"] for s in every.segments] == sorted(
        [s["score"] for s in every.segments], reverse=True)
    assert searcher.run(image=still, target="video", k=3).results[0].segments is None
    for bad in (0, 21, True):
        with pytest.raises(UserError, match="segments must be an integer from 1 to 20"):
            searcher.run(image=still, target="video", k=3, segments=bad)


def test_the_cli_and_http_list_the_same_segments(indexed, capsys, tmp_path):
    import httpx

    from xmodal.cli import main

    settings, media, _ = indexed
    still = _still(tmp_path, 1)
    base_args = ["search", "--home", str(settings.home), "-c", "v", "--target", "video", "-k", "3"]
    out = cli_json(capsys, [*base_args, "--image", str(still), "--segments", "3"])
    words = cli_json(capsys, [*base_args, "--text", "a crowd cheering", "--segments", "2"])
    assert all(len(r["segments"]) == 3 and r["segments"][0] == r["segment"] for r in out["results"])
    assert main([*base_args, "--image", str(still), "--segments", "3"]) == 0
    assert capsys.readouterr().out.count("segments: ") == 3
    for bad in ("0", "21"):
        with pytest.raises(SystemExit) as exited:
            main([*base_args, "--image", str(still), "--segments", bad])
        assert exited.value.code == 2 and "--segments: must be from 1 to 20" in capsys.readouterr().err
    with live_app(settings.model_copy(update={"audio_model": None}), "v") as (base, _):
        body = httpx.post(f"{base}/v1/search/upload", data={"collection": "v", "target": "video", "k": "3",
                                                              "segments": "3"},
                          files={"file": ("q.png", still.read_bytes(), "image/png")}, timeout=60).json()
        by_text = httpx.post(f"{base}/v1/search", json={"collection": "v", "text": "a crowd cheering",
                                                         "target": "video", "k": 3, "segments": 2}, timeout=60).json()
        top = body["results"][0]["id"]
        similar = httpx.get(f"{base}/v1/items/{top}/similar", params={"target": "video", "k": 2, "segments": 3},
                            timeout=60).json()
        plain = httpx.post(f"{base}/v1/search", json={"collection": "v", "text": "a crowd cheering",
                                                       "target": "video", "k": 3}, timeout=60).json()
        refused = [httpx.post(f"{base}/v1/search", json={"collection": "v", "text": "x", "segments": n}, timeout=60)
                   for n in (0, 21, "2", 1.5)]
        refused.append(httpx.post(f"{base}/v1/search/upload", data={"collection": "v", "segments": "21"},
                                  files={"file": ("q.png", still.read_bytes(), "image/png")}, timeout=60))
        refused.append(httpx.get(f"{base}/v1/items/{top}/similar", params={"segments": 0}, timeout=60))
    assert [r["segments"] for r in out["results"]] == [r["segments"] for r in body["results"]]
    assert [r["segments"] for r in words["results"]] == [r["segments"] for r in by_text["results"]]
    assert all(len(r["segments"]) == 2 for r in by_text["results"])
    assert all(len(r["segments"]) == 3 and r["segments"][0] == r["segment"] for r in similar["results"])
    assert all("segments" not in r or r["segments"] is None for r in plain["results"])
    assert [r.status_code for r in refused] == [422] * 6, [r.text for r in refused]
    assert "segments" in refused[0].json()["message"]
