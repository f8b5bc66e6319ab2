"""Audio beside images and text: every (query, target) pair, the router's spaces, fusion, long clips,
look-alike clips, the alignment's reload, and a collection without audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from helpers import cli_json, sound, write_photos, write_sounds, write_texts

from xmodal.config import Settings
from xmodal.encoders import align
from xmodal.errors import UserError
from xmodal.indexer.pipeline import index_sources
from xmodal.search.engine import Searcher, route
from xmodal.storage.catalog import Catalog

TEXTS = {"dog.txt": "a dog barking", "glass.txt": "glass shattering on a floor", "waves.txt": "waves on a beach",
         "bike.md": "# A red bicycle\n\nleaning on a wall"}
PAIRS = [(q, t) for q in ("text", "image", "audio") for t in ("image", "text", "audio")]
EXPECTED_ROUTE = {
    ("text", "image"): ("clip", "ip"), ("text", "text"): ("clip", "ip"), ("text", "audio"): ("clap", "ip"),
    ("image", "image"): ("clip", "ip"), ("image", "text"): ("clip", "ip"), ("image", "audio"): ("clip", "aligned-ip"),
    ("audio", "image"): ("clip", "aligned-ip"), ("audio", "text"): ("clap", "ip"), ("audio", "audio"): ("clap", "ip"),
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip, tiny_clap):
    root = tmp_path_factory.mktemp("audio-collection")
    media = root / "media"
    write_photos(media, 5)
    write_texts(media, TEXTS)
    write_sounds(media, 3, ext="wav")
    write_sounds(media, 1, start=3, ext="flac", rate=44_100)
    write_sounds(media, 1, start=4, ext="mp3", rate=44_100)
    write_sounds(media, 1, start=5, ext="ogg", rate=22_050)
    sf.write(media / "long.wav", sound(9, 25.0), 48_000)  # three windows: (0,10) (10,20) (15,25)
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        audio_model=tiny_clap, batch_size=8, exact_threshold=1000, workers=1)
    summary = index_sources(settings, [media], "av", progress=False)
    return settings, media, summary


@pytest.fixture
def searcher(indexed):
    s = Searcher(indexed[0].model_copy(update={"audio_model": None}), "av")  # the recorded models
    yield s
    s.close()


def test_indexing_puts_each_modality_in_its_spaces(indexed):
    settings, _, summary = indexed
    assert summary.failed == 0 and summary.ok == 5 + 4 + 7
    assert summary.index["clip"]["vectors"] == 5 + 4 + 7  # images, texts and the aligned audio
    assert summary.index["clap"]["vectors"] == 4 + 7  # texts and audio
    catalog = Catalog(settings.resolved_database_url)
    try:
        cid = catalog.collection_id("av")
        by_space = {sp: sorted(m for _, m, *_ in catalog.live_vectors(cid, sp)) for sp in ("clip", "clap")}
    finally:
        catalog.close()
    assert by_space["clip"] == ["image"] * 5 + ["text"] * 4
    assert by_space["clap"] == ["audio"] * 7 + ["text"] * 4
    m = summary.alignment
    assert m["bank"] >= 2000 and m["held_out"] > 400 and -1 <= m["held_out_cosine_mean"] <= 1


def _query(media: Path, modality: str) -> dict:
    return {"text": {"text": "a dog barking"}, "image": {"image": media / "photo_0002.jpg"},
            "audio": {"audio": media / "sound_0001.wav"}}[modality]


@pytest.mark.parametrize(("query", "target"), PAIRS)
def test_every_pair_returns_its_target_modality_from_the_routed_space(indexed, searcher, query, target):
    media = indexed[1]
    assert (route(query, target).space, route(query, target).method) == EXPECTED_ROUTE[(query, target)]
    outcome = searcher.run(**_query(media, query), target=target, k=20, mode="vector")  # routing (words: test_lexical)
    expected_n = {"image": 5, "text": 4, "audio": 7}[target]
    assert len(outcome.results) == expected_n
    assert {r.modality for r in outcome.results} == {target}
    space, method = EXPECTED_ROUTE[(query, target)]
    assert {(r.space, r.method) for r in outcome.results} == {(space, method)}
    assert outcome.routes == [{"target": target, "space": space, "method": method}] and outcome.fusion is None
    scores = [r.score for r in outcome.results]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(("query", "target"), PAIRS)
def test_every_pair_works_from_the_cli(indexed, capsys, query, target):
    settings, media, _ = indexed
    q = _query(media, query)
    flag, value = next(iter(q.items()))
    out = cli_json(capsys, ["search", "--home", str(settings.home), "-c", "av", f"--{flag}", str(value),
                            "--target", target, "-k", "3"])
    assert len(out["results"]) == 3 and {r["modality"] for r in out["results"]} == {target}
    assert {r["space"] for r in out["results"]} == {EXPECTED_ROUTE[(query, target)][0]}


def test_any_merges_the_spaces_by_calibrated_relevance_or_by_rank(indexed, searcher):
    outcome = searcher.run(text="glass shattering", target="any", k=16, mode="vector")
    assert outcome.fusion == "relevance"
    assert {(r["target"], r["space"]) for r in outcome.routes} == {("image", "clip"), ("text", "clip"),
                                                                    ("audio", "clap")}
    assert len({r.modality for r in outcome.results}) > 1
    assert all(r.method in ("ip", "aligned-ip") and r.relevance is not None for r in outcome.results)
    assert [r.relevance for r in outcome.results] == sorted([r.relevance for r in outcome.results], reverse=True)
    ranked = searcher.run(text="glass shattering", target="any", k=16, fusion="rrf", mode="vector")
    assert ranked.fusion == "rrf(k=60)" and {r.modality for r in ranked.results} == {"image", "text", "audio"}
    # the best of each space's list shares the top fused value: ranks, not scores, decide
    top = ranked.results[0].rrf
    assert top == pytest.approx(2 / (60 + 1), rel=1e-6) or top == pytest.approx(1 / (60 + 1), rel=1e-6)
    clap_only = [r for r in ranked.results if r.space == "clap"]
    assert [r.score for r in clap_only] == sorted([r.score for r in clap_only], reverse=True)


def test_a_resampled_or_trimmed_copy_finds_its_original_first(indexed, searcher, tmp_path):
    media = indexed[1]
    original = sound(2, 3.0)  # sound_0002.wav
    resampled = soxr.resample(original, 48_000, 32_000)
    sf.write(tmp_path / "resampled.flac", resampled, 32_000)
    sf.write(tmp_path / "trimmed.wav", original[int(0.4 * 48_000): int(2.6 * 48_000)], 48_000)
    sf.write(tmp_path / "quieter.mp3", 0.5 * original, 48_000)
    for copy in ("resampled.flac", "trimmed.wav", "quieter.mp3"):
        results = searcher.search(audio=tmp_path / copy, target="audio", k=3)
        assert results[0].uri.endswith("sound_0002.wav"), (copy, [r.uri for r in results])
    assert media.exists()


def test_a_long_clip_reports_its_best_matching_window(indexed, searcher, tmp_path):
    media = indexed[1]
    long = sound(9, 25.0)
    sf.write(tmp_path / "tail.wav", long[15 * 48_000:], 48_000)  # exactly the last window
    results = searcher.search(audio=tmp_path / "tail.wav", target="audio", k=7)
    hit = next(r for r in results if r.uri.endswith("long.wav"))
    assert hit.metadata["windows"] == 3 and hit.metadata["duration_s"] == pytest.approx(25.0, abs=0.01)
    assert hit.segment is not None
    assert (hit.segment["start_s"], hit.segment["end_s"]) == (15.0, 25.0) and hit.segment["score"] > 0.999
    sf.write(tmp_path / "head.wav", long[: 10 * 48_000], 48_000)
    hit = next(r for r in searcher.search(audio=tmp_path / "head.wav", target="audio", k=7)
               if r.uri.endswith("long.wav"))
    assert (hit.segment["start_s"], hit.segment["end_s"]) == (0.0, 10.0)
    short = next(r for r in results if r.uri.endswith("sound_0000.wav"))
    assert short.segment is None  # one window: nothing to point at
    assert media.exists()


def test_a_long_clip_lists_its_windows_best_first_on_request(indexed, searcher, tmp_path):
    long = sound(9, 25.0)
    sf.write(tmp_path / "tail.wav", long[15 * 48_000:], 48_000)  # exactly the last window
    outcome = searcher.run(audio=tmp_path / "tail.wav", target="audio", k=7, segments=5)
    hit = next(r for r in outcome.results if r.uri.endswith("long.wav"))
    assert hit.segments is not None and len(hit.segments) == 3  # all it has, though 5 were asked for
    assert hit.segments[0] == hit.segment and (hit.segment["start_s"], hit.segment["end_s"]) == (15.0, 25.0)
    assert sorted((s["start_s"], s["end_s"]) for s in hit.segments) == [(0.0, 10.0), (10.0, 20.0), (15.0, 25.0)]
    scores = [s["score"] for s in hit.segments]
    assert scores == sorted(scores, reverse=True) and scores[1] < 0.999
    assert "segments" in hit.as_dict() and all("relevance" not in s for s in hit.segments)  # pooled calibration
    assert all(r.segments is None for r in outcome.results if r.segment is None)  # one window: no list either
    plain = next(r for r in searcher.run(audio=tmp_path / "tail.wav", target="audio", k=7).results
                 if r.uri.endswith("long.wav"))
    assert plain.segment == hit.segment and plain.segments is None and "segments" not in plain.as_dict()


def test_the_alignment_is_stored_reloaded_and_reported_not_refitted(indexed, capsys):
    settings, media, summary = indexed
    s = Searcher(settings, "av")
    try:
        stored = s.alignment
        assert stored is not None and stored.metrics == summary.alignment
        assert stored.key == align.alignment_key(s._spaces["clap"].space.model["identity"],
                                                 s._spaces["clip"].space.model["identity"])
    finally:
        s.close()
    again = index_sources(settings, [media], "av", progress=False)
    assert again.alignment == {} and again.embedded == 0 and not again.index["clip"]["built"]
    stats = cli_json(capsys, ["stats", "--home", str(settings.home), "-c", "av"])
    assert stats["alignment"]["held_out_recall@1"] == summary.alignment["held_out_recall@1"]
    assert stats["alignment"]["source"] == "clap" and stats["index"]["clip"]["aligned"]["source"] == "clap"
    assert stats["index"]["clip"]["parts"]["audio"]["vectors"] == 7


def test_eval_takes_audio_queries(indexed, capsys, tmp_path):
    settings, media, _ = indexed
    queries = tmp_path / "q.jsonl"
    queries.write_text("\n".join(json.dumps(q) for q in [
        {"audio": str(media / "sound_0001.wav"), "target": "audio", "expected": [str(media / "sound_0001.wav")]},
        {"text": "a dog barking", "target": "text", "expected": [str(media / "dog.txt")]},
    ]) + "\n")
    report = cli_json(capsys, ["eval", "--home", str(settings.home), "-c", "av", "--queries", str(queries)])
    assert report["queries"] == 2 and report["per_query"][0]["rank"] == 1


def test_a_collection_without_audio_says_so_when_asked_for_audio(tmp_path, tiny_clip, indexed):
    media = tmp_path / "m"
    write_photos(media, 3)
    settings = Settings(home=tmp_path / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        exact_threshold=1000, workers=1)
    summary = index_sources(settings, [media], "pics", progress=False)
    assert set(summary.index) == {"clip"} and summary.alignment == {}
    s = Searcher(settings, "pics")
    try:
        assert len(s.search(text="x", target="any", k=5)) == 3  # any: just what it holds
        with pytest.raises(UserError, match="has no audio.*CLAP"):
            s.search(text="a dog barking", target="audio")
        with pytest.raises(UserError, match="has no audio"):
            s.search(audio=indexed[1] / "sound_0000.wav", target="image")
        with pytest.raises(UserError, match="has no audio: searching image -> audio needs"):
            s.search(image=media / "photo_0000.jpg", target="audio")  # aligned route: still no audio
    finally:
        s.close()


def test_bad_audio_queries_are_user_errors(searcher, tmp_path):
    (tmp_path / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UserError, match="cannot use .*noise.mp3 as an audio query"):
        searcher.search(audio=tmp_path / "noise.mp3")
    sf.write(tmp_path / "silence.wav", np.zeros(48_000, dtype=np.float32), 48_000)
    with pytest.raises(UserError, match="silent"):
        searcher.search(audio=tmp_path / "silence.wav")


def test_an_audio_only_collection_is_reachable_from_images_and_text(tmp_path, tiny_clip, tiny_clap, indexed):
    media = tmp_path / "sfx"
    write_sounds(media, 3)
    settings = Settings(home=tmp_path / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1],
                        audio_model=tiny_clap, exact_threshold=1000, workers=1)
    summary = index_sources(settings, [media], "sfx", progress=False)
    assert summary.alignment and summary.index["clip"]["vectors"] == 3 and summary.index["clap"]["vectors"] == 3
    s = Searcher(settings, "sfx")
    try:
        hits = s.search(image=indexed[1] / "photo_0000.jpg", target="audio", k=5)
        assert len(hits) == 3 and {(r.space, r.method) for r in hits} == {("clip", "aligned-ip")}
        assert len(s.search(text="thunder", k=5)) == 3
    finally:
        s.close()


def test_a_text_search_for_images_loads_neither_the_audio_model_nor_its_index(indexed, capsys, monkeypatch):
    """A cold `xmodal search --text ... --target image` on a collection with audio: only what the query
    routes to is loaded (what `-v` says); asking for audio then loads the CLAP space."""
    from xmodal.cli import main

    monkeypatch.setenv("XMODAL_HOME", str(indexed[0].home))

    def loaded(target: str) -> list[str]:
        capsys.readouterr()
        assert main(["search", "-c", "av", "--text", "a dog barking", "--target", target, "-k", "2", "-v"]) == 0
        return [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()
                if line.startswith("INFO xmodal.search.engine: loaded the ")]

    images = loaded("image")
    assert any(m.startswith("loaded the clip model") for m in images)
    assert any(m.startswith("loaded the clip index") for m in images)
    assert not [m for m in images if m.startswith("loaded the clap")], images
    sounds = loaded("audio")
    assert any(m.startswith("loaded the clap model") for m in sounds)
    assert any(m.startswith("loaded the clap index") for m in sounds)
