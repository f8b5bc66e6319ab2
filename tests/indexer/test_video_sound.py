"""A video's sound track in ``clap``: each segment of a video with sound gets a vector from the sound of its
time range, so that a sound excerpt finds the video whose track holds it (audio -> video), with the segment;
a silent video gets none (and is not taken for one lacking it); the same file gives the same vectors; the
CLI and HTTP agree."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import cli_json, live_app, photo, sound, write_sounds, write_video
from PIL import Image

from xmodal.config import Settings
from xmodal.errors import UserError
from xmodal.indexer.decode import DecodeConfig, DecodeTask, decode_one, preparations
from xmodal.indexer.encode import encode_group
from xmodal.indexer.pipeline import index_sources
from xmodal.media.types import MediaLimits
from xmodal.media.video import VideoSpec
from xmodal.search.engine import Searcher
from xmodal.spaces import route
from xmodal.storage.catalog import Catalog
from xmodal.storage.uris import path_to_uri

SHOTS = (2.0, 3.0, 2.0)
RATE = 48_000
#: two videos with a different sound under each shot, one without a sound track
TRACKS = {"a.mp4": (20, 21, 22), "b.webm": (23, 24, 25)}
CODECS = {".webm": "libvpx-vp9"}


def _track(seeds: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([sound(s, secs, RATE) for s, secs in zip(seeds, SHOTS, strict=True)])


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip, tiny_clap):
    root = tmp_path_factory.mktemp("video-sound")
    media = root / "media"
    for v, (name, seeds) in enumerate(TRACKS.items()):
        shots = [(photo(300 + 3 * v + s), secs) for s, secs in enumerate(SHOTS)]
        write_video(media / name, shots, codec=CODECS.get(Path(name).suffix, "libx264"), audio=_track(seeds))
    write_video(media / "mute.mp4", [(photo(320 + s), secs) for s, secs in enumerate(SHOTS)])
    write_sounds(media, 1, start=40, seconds=2.0)
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        audio_model=tiny_clap, batch_size=8, exact_threshold=1000, workers=1, video_fps=2.0)
    summary = index_sources(settings, [media], "vs", progress=False)
    assert summary.failed == 0, summary.failures
    return settings, media


@pytest.fixture(scope="module")
def searcher(indexed):
    s = Searcher(indexed[0].model_copy(update={"audio_model": None}), "vs")
    yield s
    s.close()


def _excerpt(folder: Path, name: str, shot: int = 1) -> Path:
    """Two seconds from the middle of a shot's sound, as a WAV file someone cut from the video."""
    start = sum(SHOTS[:shot])
    track = _track(TRACKS[name])
    path = folder / f"excerpt-{Path(name).stem}.wav"
    sf.write(path, track[int((start + 0.5) * RATE): int((start + 2.5) * RATE)], RATE)
    return path


def test_audio_to_video_routes_through_clap_from_the_spaces_table():
    assert route("audio", "video").space == "clap" and route("audio", "video").method == "ip"
    assert route("video", "audio").space == "clap"
    assert route("image", "video").space == "clip" and route("text", "video").space == "clip"


def test_videos_with_sound_get_segment_vectors_in_clap_and_silent_ones_none(indexed, searcher):
    settings, media = indexed
    catalog = Catalog(settings.resolved_database_url)
    try:
        cid = catalog.collection_id("vs")
        items = catalog.items_by_uri(cid, [str(media / n) for n in (*TRACKS, "mute.mp4")])
        clap = {i for i, *_ in catalog.live_vectors(cid, "clap")}
    finally:
        catalog.close()
    assert items[str(media / "mute.mp4")].id not in clap and not items[str(media / "mute.mp4")].meta["has_audio"]
    for name in TRACKS:
        it = items[str(media / name)]
        assert it.id in clap
        sound_windows = searcher._item_windows(it.id, "clap")
        frame_windows = searcher._item_windows(it.id, "clip")
        assert sound_windows is not None and frame_windows is not None
        assert len(sound_windows.vectors) == it.meta["windows"] == 3
        assert np.array_equal(sound_windows.spans, frame_windows.spans)  # the same segments in both spaces
        norms = np.linalg.norm(sound_windows.vectors, axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5)


def test_a_sound_excerpt_finds_the_video_whose_track_holds_it_with_the_segment(indexed, searcher, tmp_path):
    _, media = indexed
    for name in TRACKS:
        results = searcher.search(audio=_excerpt(tmp_path, name), target="video", k=3)
        assert [r.space for r in results] == ["clap"] * len(results)
        assert results[0].uri == str(media / name), [(r.uri, r.score) for r in results]
        assert str(media / "mute.mp4") not in {r.uri for r in results}  # no sound: not an audio -> video result
        seg = results[0].segment
        assert seg is not None and seg["start_s"] < 5.0 and seg["end_s"] > 2.0, seg


def test_the_same_file_gives_the_same_sound_vectors(indexed, searcher):
    settings, media = indexed
    clip, clap = searcher.encoder_for("clip"), searcher.encoder_for("clap")
    config = DecodeConfig(MediaLimits.from_settings(settings), preparations([clip, clap]), video=VideoSpec(fps=2.0))
    path = str(media / "b.webm")
    runs = [encode_group(clap, "video", [decode_one(DecodeTask(1, path, "video", None), config)], 8) for _ in (0, 1)]
    (v1, w1), (v2, w2) = runs
    assert w1[0] is not None and w2[0] is not None
    assert np.array_equal(v1, v2) and np.array_equal(w1[0].vectors, w2[0].vectors)
    assert np.array_equal(w1[0].spans, w2[0].spans)
    item = searcher.catalog.items_by_uri(searcher.collection_id, [path])[path].id
    assert np.allclose(searcher.item_vector(item, "clap"), v1[0], atol=1e-6)


def test_a_rerun_embeds_nothing_and_verify_finds_no_missing_sound_vector(indexed, capsys):
    settings, media = indexed
    report = cli_json(capsys, ["verify", "--home", str(settings.home), "-c", "vs"])
    assert report["ok"] is True and report["problems"] == [], report
    again = index_sources(settings, [media], "vs", progress=False)
    assert again.embedded == 0 and again.failed == 0 and again.unchanged == len(TRACKS) + 2


def test_the_cli_and_http_agree_on_audio_to_video(indexed, capsys, tmp_path):
    settings, media = indexed
    excerpt = _excerpt(tmp_path, "b.webm")
    out = cli_json(capsys, ["search", "--home", str(settings.home), "-c", "vs", "--audio", str(excerpt),
                            "--target", "video", "-k", "3"])
    with live_app(settings.model_copy(update={"audio_model": None}), "vs") as (base, _):
        import httpx

        body = httpx.post(f"{base}/v1/search/upload", data={"collection": "vs", "target": "video", "k": "3"},
                          files={"file": ("q.wav", excerpt.read_bytes(), "audio/wav")}, timeout=60).json()
        top = body["results"][0]
        seg = top["segment"]
        # the thumbnail is the matched segment's middle frame: the picture of that shot
        assert top["thumbnail_url"] == f"/v1/items/{top['id']}/thumbnail?t={(seg['start_s'] + seg['end_s']) / 2:g}"
        thumb = httpx.get(base + top["thumbnail_url"], timeout=60)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert _shot_of(Image.open(io.BytesIO(thumb.content)), video=1) == 1
        first = httpx.get(f"{base}/v1/items/{top['id']}/thumbnail", params={"t": 0.5}, timeout=60)
        assert _shot_of(Image.open(io.BytesIO(first.content)), video=1) == 0
        assert httpx.get(f"{base}/v1/items/{top['id']}/thumbnail", params={"t": -1}, timeout=60).status_code == 422
        item = httpx.get(f"{base}/v1/items/{top['id']}", timeout=60).json()
        assert item["thumbnail_url"] == f"/v1/items/{top['id']}/thumbnail"  # no segment: the video's middle
    assert [r["uri"] for r in out["results"]] == [r["uri"] for r in body["results"]]
    assert out["results"][0]["uri"] == str(media / "b.webm")
    assert out["results"][0]["segment"] == body["results"][0]["segment"]


def _shot_of(image: Image.Image, *, video: int) -> int:
    """Which shot of a video's photos an image shows (the smallest mean pixel difference)."""
    got = np.asarray(image.convert("RGB").resize((96, 64))).astype(np.float32)
    return int(np.argmin([np.abs(got - np.asarray(photo(300 + 3 * video + s).convert("RGB").resize((96, 64)))).mean()
                          for s in range(len(SHOTS))]))


def test_eval_counts_a_video_only_when_its_returned_segment_overlaps_the_expected_range(indexed, searcher, capsys,
                                                                                        tmp_path):
    from xmodal.cli import main
    from xmodal.search.evaluate import evaluate

    settings, media = indexed
    excerpt, uri = str(_excerpt(tmp_path, "b.webm")), str(media / "b.webm")
    lines = [{"audio": excerpt, "target": "video", "expected": [{"uri": uri, "start": 2.5, "end": 4.0}], "want": "hit"},
             {"audio": excerpt, "target": "video", "expected": {"uri": uri, "start": 5.0, "end": 7.0},
              "want": "miss"},  # the right video, another shot
             {"audio": excerpt, "target": "video", "expected": [uri], "want": "hit"}]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in lines))
    report = evaluate(searcher, queries, k=3, progress=False)
    assert [p["rank"] == 1 for p in report["per_query"]] == [q["want"] == "hit" for q in lines], report["per_query"]
    assert report["recall@k"] == pytest.approx(2 / 3)
    ranged = report["per_query"][0]
    assert ranged["segments"][0]["start_s"] == pytest.approx(2.0, abs=0.51)
    cli = cli_json(capsys, ["eval", "--home", str(settings.home), "-c", "vs", "--queries", str(queries), "-k", "3",
                            "--no-progress"])
    assert [p["rank"] for p in cli["per_query"]] == [p["rank"] for p in report["per_query"]]
    queries.write_text(json.dumps({"audio": lines[0]["audio"], "expected": {"uri": "a.mp4", "start": 3, "end": 1}})
                       + "\n")
    capsys.readouterr()
    assert main(["eval", "--home", str(settings.home), "-c", "vs", "--queries", str(queries)]) == 2
    err = capsys.readouterr().err.strip()
    assert "0 <= start < end" in err and len(err.splitlines()) == 1, err


def test_an_uploaded_clip_finds_its_video_and_a_bad_clip_is_a_4xx_with_the_reason(indexed, capsys, tmp_path):
    settings, media = indexed
    # two seconds of b.webm's middle shot, picture and sound, re-encoded as an mp4 someone cut
    start = int((SHOTS[0] + 0.5) * RATE)
    clip = write_video(tmp_path / "cut.mp4", [(photo(300 + 3 + 1), 2.0)], audio=_track(TRACKS["b.webm"])[
        start : start + 2 * RATE])
    long_clip = write_video(tmp_path / "long.mp4", [(photo(1), 7.0)])
    served = settings.model_copy(update={"audio_model": None, "query_max_video_seconds": 5.0})
    with live_app(served, "vs") as (base, _):
        import httpx

        def upload(data: bytes, target: str, media_type: str = "video/mp4") -> httpx.Response:
            return httpx.post(f"{base}/v1/search/upload", data={"collection": "vs", "target": target, "k": "3"},
                              files={"file": ("q", data, media_type)}, timeout=60)

        by_frames = upload(clip.read_bytes(), "video").json()
        assert by_frames["results"][0]["uri"] == str(media / "b.webm"), by_frames["results"]
        assert by_frames["routes"] == [{"target": "video", "space": "clip", "method": "ip"}]
        seg = by_frames["results"][0]["segment"]
        assert seg["start_s"] < 5.0 and seg["end_s"] > 2.0, seg
        by_sound = upload(clip.read_bytes(), "audio").json()  # video -> audio: its sound, in clap
        cli = cli_json(capsys, ["search", "--home", str(settings.home), "-c", "vs", "--video", str(clip),
                                "--target", "video", "-k", "3"])
        assert [r["uri"] for r in cli["results"]] == [r["uri"] for r in by_frames["results"]]
        assert cli["query"] == {"video": path_to_uri(str(clip))}
        assert by_sound["routes"] == [{"target": "audio", "space": "clap", "method": "ip"}] and by_sound["results"]
        for data, media_type, status, reason in [
            (np.random.default_rng(4).bytes(3000), "video/mp4", 415, "not a recognised video container"),
            (b"", "video/webm", 415, "empty"),
            (long_clip.read_bytes(), "video/quicktime", 413, "too long"),
        ]:
            got = upload(data, "any", media_type)
            assert got.status_code == status and reason in got.text and "as a video query" in got.text, got.text


def test_a_silent_video_asks_only_where_it_has_vectors(indexed, searcher, tmp_path):
    """A silent video as the query, by item or upload, over every kind: the sound route is left out (it has no
    vector there), the others answer; asked for sounds alone, it says it has no sound vector."""
    _, media = indexed
    mute = str(media / "mute.mp4")
    item = searcher.catalog.items_by_uri(searcher.collection_id, [mute])[mute].id
    outcome = searcher.run(item=item, target="any", k=5)
    assert {r["space"] for r in outcome.routes} == {"clip"} and outcome.results
    assert item not in {r.id for r in outcome.results}
    uploaded = searcher.run(media=("video", (media / "mute.mp4").read_bytes()), target="any", k=5)
    assert {r["space"] for r in uploaded.routes} == {"clip"} and mute in {r.uri for r in uploaded.results}
    loud = str(media / "a.mp4")
    loud_id = searcher.catalog.items_by_uri(searcher.collection_id, [loud])[loud].id
    assert "clap" in {r["space"] for r in searcher.run(item=loud_id, target="any", k=5).routes}
    with pytest.raises(UserError, match="no vector in space 'clap'"):
        searcher.run(item=item, target="audio", k=5)
