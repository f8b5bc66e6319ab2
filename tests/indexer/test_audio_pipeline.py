"""Indexing audio with images and text: decode workers, damaged files, a missing audio model, crashes
between the two spaces of a text, and changed content re-embedded in every space."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from helpers import Crash, crash_once_at, sound, write_photos, write_sounds, write_texts

from xmodal.encoders import clap
from xmodal.indexer.models import UNAVAILABLE
from xmodal.indexer.pipeline import index_sources
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import Catalog


@pytest.fixture
def av_settings(settings, tiny_clap):
    return settings.model_copy(update={"audio_model": tiny_clap, "workers": 1})


def _live(settings, collection="c"):
    catalog = Catalog(settings.resolved_database_url)
    try:
        cid = catalog.collection_id(collection)
        return {sp: sorted(i for i, *_ in catalog.live_vectors(cid, sp)) for sp in ("clip", "clap")}
    finally:
        catalog.close()


def test_damaged_audio_is_recorded_failed_and_the_run_goes_on(av_settings, tmp_path):
    media = tmp_path / "m"
    good = write_sounds(media, 30, seconds=1.0)  # with the photos, enough to start decode workers
    write_photos(media, 4)
    (media / "random.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    (media / "empty.flac").write_bytes(b"")
    (media / "text.wav").write_text("not audio at all")
    sf.write(media / "silent.ogg", np.zeros(48_000, dtype=np.float32), 48_000)
    sf.write(media / "blip.wav", sound(1, 0.05), 48_000)
    full = media / "cut.wav"
    sf.write(full, sound(2, 4.0), 48_000)
    full.write_bytes(full.read_bytes()[: 48_000])  # header says 4 s
    summary = index_sources(av_settings, [media], "c", progress=False)
    reasons = {os.path.basename(u): r for u, r in summary.failures}
    assert set(reasons) == {"random.mp3", "empty.flac", "text.wav", "silent.ogg", "cut.wav"}
    assert "empty" in reasons["empty.flac"] and "silent" in reasons["silent.ogg"]
    assert "truncated" in reasons["cut.wav"]
    assert summary.ok == len(good) + 5 and summary.failed == 5  # the 0.05 s blip is padded and indexed
    live = _live(av_settings)
    assert len(live["clap"]) == len(good) + 1 and len(live["clip"]) == 4
    assert summary.index["clip"]["vectors"] == 5 + len(good)  # the audio, aligned into clip
    again = index_sources(av_settings, [media], "c", progress=False)
    assert again.failed == 0 and again.unchanged == summary.ok + 5  # failures are not retried unchanged


def test_without_audio_support_audio_waits_as_failed_and_is_retried_once_it_works(av_settings, tmp_path,
                                                                                 monkeypatch):
    media = tmp_path / "m"
    write_sounds(media, 2)
    write_photos(media, 2)
    write_texts(media, {"a.txt": "rain on a roof"})
    no_audio = av_settings.model_copy(update={"audio_model": None})
    monkeypatch.setattr(clap, "audio_available", lambda: False)
    first = index_sources(no_audio, [media], "c", progress=False)
    assert first.ok == 3 and first.failed == 2
    assert all("xmodal[audio]" in r and r.startswith(UNAVAILABLE) for _, r in first.failures)
    assert any("xmodal[audio]" in w for w in first.warnings) and set(first.index) == {"clip"}
    monkeypatch.undo()
    second = index_sources(av_settings, [media], "c", progress=False)  # no --retry-failed needed
    assert second.failed == 0 and second.ok == 3  # the two clips, and the text's new clap vector
    live = _live(av_settings)
    assert len(live["clap"]) == 3 and len(live["clip"]) == 3 and second.index["clip"]["vectors"] == 5


def test_a_named_audio_model_that_does_not_load_stops_the_run(av_settings, tmp_path):
    media = tmp_path / "m"
    write_sounds(media, 1)
    from xmodal.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a CLAP folder"):
        index_sources(av_settings.model_copy(update={"audio_model": str(tmp_path)}), [media], "c", progress=False)


@pytest.mark.parametrize("point", ["before-shard-write", "before-shard-commit", "after-shard-commit",
                                   "before-index-write", "before-publish"])
def test_a_crash_between_a_texts_two_spaces_is_finished_exactly_once(av_settings, tmp_path, point):
    media = tmp_path / "m"
    write_texts(media, {f"t{i}.txt": f"description number {i}" for i in range(6)})
    write_sounds(media, 3)
    with pytest.raises(Crash):
        index_sources(av_settings, [media], "c", progress=False, crash_at=crash_once_at(point))
    summary = index_sources(av_settings, [media], "c", progress=False)
    assert summary.failed == 0
    live = _live(av_settings)
    assert len(live["clip"]) == len(set(live["clip"])) == 6 and len(live["clap"]) == len(set(live["clap"])) == 9
    assert summary.index["clip"]["vectors"] == 6 + 3 and summary.index["clap"]["vectors"] == 9
    clean = av_settings.model_copy(update={"home": tmp_path / "clean",
                                           "database_url": f"sqlite:///{tmp_path / 'clean.sqlite'}"})
    index_sources(clean, [media], "c", progress=False)
    for target in ("text", "audio", "image"):  # image: none, but the aligned audio part is searched the same
        assert _ranked(av_settings, target) == _ranked(clean, target)


def _ranked(settings, target: str) -> list[tuple[str, float]]:
    s = Searcher(settings, "c")
    try:
        return [(r.uri, round(r.score, 5)) for r in s.search(text="number", target=target, k=9)]
    finally:
        s.close()


def test_changed_text_is_embedded_again_in_both_spaces(av_settings, tmp_path):
    media = tmp_path / "m"
    write_texts(media, {"a.txt": "a dog barking", "b.txt": "a cat"})
    write_sounds(media, 1)
    index_sources(av_settings, [media], "c", progress=False)
    s = Searcher(av_settings, "c")
    before = {sp: s.item_vector(s.search(text="a dog barking", target="text", k=1)[0].id, sp) for sp in ("clip", "clap")}
    s.close()
    (media / "a.txt").write_text("glass shattering")
    summary = index_sources(av_settings, [media], "c", progress=False)
    assert summary.embedded == 1
    s = Searcher(av_settings, "c")
    item = next(r for r in s.search(text="glass shattering", target="text", k=2) if r.uri.endswith("a.txt"))
    for sp in ("clip", "clap"):
        now = s.item_vector(item.id, sp)
        assert not np.allclose(now, before[sp])
        assert np.allclose(now, s.text_vector("glass shattering", sp), atol=1e-5)
    s.close()
