"""Scores that mean the same across modalities (issue 14): each version is calibrated per (query, target)
pair at build time; ``any`` merges by calibrated relevance, so a near-duplicate in one modality beats a
weak match in another and a text query shows several modalities; ``min_relevance`` says "no good match";
RRF stays available. On a mixed collection of photos, texts and sounds, with random-weight test models
(they rank near-duplicates; they say nothing of semantic quality).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import cli_json, live_app, sound, write_photos, write_sounds, write_texts
from PIL import Image

from xmodal.config import Settings
from xmodal.indexer.pipeline import index_sources
from xmodal.search.engine import Searcher
from xmodal.storage.calibration import Calibration, measure
from xmodal.storage.catalog import Catalog

PHOTOS, TEXTS, SOUNDS = 40, 24, 12
RATE = 48_000


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str], tiny_clap: str,
          ) -> tuple[Settings, Path]:
    root = tmp_path_factory.mktemp("ranking")
    media = root / "media"
    write_photos(media / "photos", PHOTOS)
    write_texts(media / "notes", {f"note_{i:02d}.txt": f"note {i}: {' '.join(['boots', 'kettle', 'rain', 'dog'][:1 + i % 4])}"
                                  for i in range(TEXTS)})
    write_sounds(media / "sounds", SOUNDS)
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1], audio_model=tiny_clap,
                        exact_threshold=1000, batch_size=16)
    assert index_sources(settings, [media], "mix", progress=False).failed == 0
    return settings, media


@pytest.fixture(scope="module")
def searcher(mixed: tuple[Settings, Path]) -> Iterator[Searcher]:
    s = Searcher(mixed[0], "mix")
    yield s
    s.close()


def altered_photo(path: Path, seed: int) -> bytes:
    img = Image.open(path).convert("RGB")
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4))
    arr = np.asarray(img).astype(np.int16) + np.random.default_rng(seed).integers(-6, 7, (img.height, img.width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def altered_sound(seed: int) -> bytes:
    x = sound(seed, 3.0, RATE)[int(0.2 * RATE):]  # trimmed
    x = 0.6 * x + 0.004 * np.random.default_rng(seed).standard_normal(len(x)).astype(np.float32)  # gain, noise
    buf = io.BytesIO()
    sf.write(buf, x[::2], RATE // 2, format="WAV")  # resampled
    return buf.getvalue()


def test_each_version_is_calibrated_per_pair_and_stats_report_it(mixed: tuple[Settings, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = mixed
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        cid = catalog.collection_id("mix")
        clip = catalog.published_index(cid, "clip").summary["calibration"]
        clap = catalog.published_index(cid, "clap").summary["calibration"]
    finally:
        catalog.close()
    # every (query, target) pair the spaces table routes to each space: natively, or through the alignment
    assert set(clip["pairs"]) == {"image->image", "text->image", "audio->image", "image->text", "text->text",
                                  "image->audio", "video->image", "video->text"}  # an uploaded clip asks too
    assert set(clap["pairs"]) == {"audio->audio", "text->audio", "audio->text", "video->audio"}
    # no video in this collection: a clip's pairs are measured with stand-ins (another part, the space, a prior)
    assert all(cal[pair]["queries"] != "items" for cal, pair in ((clip["pairs"], "video->image"),
                                                                   (clip["pairs"], "video->text"),
                                                                   (clap["pairs"], "video->audio")))
    # text queries are measured with the bank's captions (typed queries are short); the rest with their own part
    assert clip["pairs"]["text->image"]["queries"] == "bank" and clip["pairs"]["text->image"]["targets"] == PHOTOS
    assert clip["pairs"]["image->text"]["queries"] == "items" and clip["pairs"]["image->text"]["targets"] == TEXTS
    assert clip["pairs"]["audio->image"]["pairs"] == SOUNDS * PHOTOS  # the aligned audio part as queries
    assert clap["pairs"]["audio->audio"]["pairs"] == SOUNDS * (SOUNDS - 1)  # an item never pairs with itself
    assert clip["seconds"] < 5
    stats = cli_json(capsys, ["stats", "--home", str(settings.home), "-c", "mix"])
    assert stats["index"]["clip"]["calibration"]["pairs"]["text->image"] == clip["pairs"]["text->image"]
    from xmodal.cli import main

    assert main(["stats", "--home", str(settings.home), "-c", "mix"]) == 0
    text_image = clip["pairs"]["text->image"]
    assert (f"text->image: unrelated pairs score {text_image['score_mean']:.3f} +- {text_image['score_std']:.3f}"
            in capsys.readouterr().out)


def test_any_finds_near_duplicates_first_as_often_as_their_own_target(mixed: tuple[Settings, Path],
                                                                      searcher: Searcher) -> None:
    media = mixed[1]
    firsts: dict[str, list[bool]] = {"any": [], "own": []}
    for i, path in enumerate(sorted((media / "photos").iterdir())[:20]):
        for target, key in (("any", "any"), ("image", "own")):
            top = searcher.run(media=("image", altered_photo(path, i)), target=target, k=5).results[0]
            firsts[key].append(top.uri == str(path))
    for i in range(SOUNDS):
        original = str(media / "sounds" / f"sound_{i:04d}.wav")
        for target, key in (("any", "any"), ("audio", "own")):
            top = searcher.run(media=("audio", altered_sound(i)), target=target, k=5).results[0]
            firsts[key].append(top.uri == original)
    rate = {k: sum(v) / len(v) for k, v in firsts.items()}
    assert rate["own"] >= 0.8, rate  # the test models do find altered copies
    assert rate["any"] >= rate["own"] - 0.05, rate


def test_a_text_query_shows_several_modalities_on_the_first_page(searcher: Searcher) -> None:
    for text in ("boots and a kettle", "rain on a roof", "a dog"):
        outcome = searcher.run(text=text, k=12, mode="vector")  # the vector lists' merge (hybrid: test_lexical)
        assert outcome.fusion == "relevance"
        assert len({r.modality for r in outcome.results}) > 1, [(r.modality, r.relevance) for r in outcome.results]
        relevances = [r.relevance for r in outcome.results]
        assert all(r is not None for r in relevances) and relevances == sorted(relevances, reverse=True)
        assert all(r.score == pytest.approx(float(r.score)) and -1.01 <= r.score <= 1.01 for r in outcome.results)


def test_min_relevance_says_no_good_match_and_keeps_standouts(mixed: tuple[Settings, Path],
                                                              searcher: Searcher) -> None:
    media = mixed[1]
    path = sorted((media / "photos").iterdir())[3]
    dup = searcher.run(media=("image", altered_photo(path, 3)), k=5)
    strong = dup.results[0].relevance
    assert strong is not None and strong > 2  # a near-duplicate stands far out of what chance gives
    kept = searcher.run(media=("image", altered_photo(path, 3)), k=5, min_relevance=strong - 0.5)
    assert [r.uri for r in kept.results] == [str(path)] and not kept.no_good_match
    assert kept.cutoff == {"min_relevance": strong - 0.5, "dropped": 4}
    nothing = searcher.run(text="zq xv ww kj", k=10, min_relevance=strong + 5)
    assert nothing.results == [] and nothing.no_good_match and nothing.cutoff["dropped"] > 0
    raw = searcher.run(text="zq xv ww kj", k=10, min_score=1.01)
    assert raw.results == [] and raw.no_good_match


def test_rrf_stays_available(searcher: Searcher) -> None:
    outcome = searcher.run(text="rain on a roof", k=16, fusion="rrf", mode="vector")
    assert outcome.fusion == "rrf(k=60)"
    assert all(r.rrf is not None and r.relevance is not None for r in outcome.results)
    top = outcome.results[0].rrf
    assert top == pytest.approx(1 / 61, rel=1e-6)  # each list's first ties: ranks, not scores, decide


def test_http_cli_and_eval_agree(mixed: tuple[Settings, Path], searcher: Searcher, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    settings, media = mixed
    want = searcher.run(text="boots and a kettle", k=6, mode="vector")  # (hybrid: tests/search/test_lexical.py)
    cli = cli_json(capsys, ["search", "--home", str(settings.home), "-c", "mix", "--text", "boots and a kettle",
                            "-k", "6", "--mode", "vector"])
    with live_app(settings, "mix") as (base, _):
        http = httpx.post(base + "/v1/search", json={"collection": "mix", "text": "boots and a kettle", "k": 6,
                                                     "mode": "vector"}).json()
        cut = httpx.post(base + "/v1/search", json={"collection": "mix", "text": "boots and a kettle", "k": 6,
                                                    "min_relevance": 1000, "mode": "vector"}).json()
    expect = [(r.id, r.relevance) for r in want.results]
    assert [(r["id"], r["relevance"]) for r in cli["results"]] == expect
    assert [(r["id"], r["relevance"]) for r in http["results"]] == expect
    assert http["fusion"] == cli["fusion"] == "relevance"
    assert cut["results"] == [] and cut["no_good_match"] is True
    queries = tmp_path / "q.jsonl"
    photos = sorted((media / "photos").iterdir())
    queries.write_text("\n".join(json.dumps({"image": str(p), "expected": [str(p)]}) for p in photos[:6]) + "\n"
                       + json.dumps({"text": "boots and a kettle", "expected": [want.results[0].uri]}) + "\n")
    report = cli_json(capsys, ["eval", "--home", str(settings.home), "-c", "mix", "--queries", str(queries), "-k", "5",
                               "--min-relevance", "1000", "--no-progress", "--mode", "vector"])
    assert report["by_modality"]["image"]["queries"] == 6 and report["no_good_match"] == 1.0
    assert report["dropped_by_cutoff"] == 1.0 and report["recall@k"] == 0.0
    plain = cli_json(capsys, ["eval", "--home", str(settings.home), "-c", "mix", "--queries", str(queries), "-k", "5",
                              "--no-progress"])
    assert plain["by_modality"]["image"]["recall@1"] == 1.0 and plain["dropped_by_cutoff"] == 0.0


def test_relevance_is_an_e_value() -> None:
    m = math.atanh(0.2)  # calibrations hold Fisher's atanh of the scores
    cal = Calibration(mean=m, std=0.05, pairs=10_000, targets=1000, queries="items")
    assert cal.relevance(0.2) == pytest.approx(-math.log10(1000 * 0.5), abs=1e-3)  # the median: far below chance
    chance = math.tanh(m + 0.05 * 3.09)  # the score the best of 1000 unrelated items reaches about once: relevance ~0
    assert abs(cal.relevance(chance)) < 0.05
    assert cal.relevance(0.9) > cal.relevance(0.5) > cal.relevance(chance)
    assert cal.relevance(0.9999) > cal.relevance(0.999) + 50  # near 1, Fisher's scale keeps near-copies apart
    assert math.isfinite(cal.relevance(5.0)) and cal.relevance(5.0) > 1000  # far tails stay finite and ordered
    bigger = Calibration(mean=m, std=0.05, pairs=10_000, targets=1_000_000, queries="items")
    assert bigger.relevance(0.5) == pytest.approx(cal.relevance(0.5) - 3, abs=1e-3)  # more candidates, more chance
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(300)
    measured = measure(x, x, n_targets=300, query_ids=ids, target_ids=ids)
    assert measured is not None and measured.pairs == 256 * 299 and abs(measured.mean) < 0.02


def test_every_pair_is_calibrated_however_small_the_parts() -> None:
    """A collection of a few items still gets a relevance for every route: the query-like vectors fall back
    from the query's own part to the target part, to the whole space, to a prior."""
    from xmodal.indexer.calibrate import calibrate

    rng = np.random.default_rng(1)

    def part(ids: range, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((len(ids), dim)).astype(np.float32)
        return np.asarray(ids, dtype=np.int64), x / np.linalg.norm(x, axis=1, keepdims=True)

    few = calibrate("clip", {"image": part(range(4)), "text": part(range(10, 11))}, text_probes=lambda: None)
    assert few["image->text"]["queries"] == "items" and few["image->text"]["pairs"] == 4
    assert few["text->image"]["queries"] == "proxy:space" and few["text->image"]["pairs"] == 5 * 4 - 4  # most pairs
    assert few["text->text"]["queries"] == "proxy:space" and few["text->text"]["pairs"] == 4
    lone = calibrate("clip", {"image": part(range(1))}, text_probes=lambda: None)
    assert lone["image->image"]["queries"] == "prior" and lone["image->image"]["std"] == pytest.approx(32 ** -0.5,
                                                                                                       abs=1e-5)
    many = calibrate("clip", {"image": part(range(100)), "text": part(range(200, 203))},
                     text_probes=lambda: part(range(0, 50))[1])
    assert many["text->image"]["queries"] == "bank" and many["text->text"]["queries"] == "bank"
    assert many["image->text"]["queries"] == "items" and many["image->image"]["pairs"] == 100 * 99


def test_bank_probes_are_embedded_once_per_model_and_read_back_without_one(mixed: tuple[Settings, Path],
                                                                           tmp_path: Path) -> None:
    """A repair (no model loaded) calibrates text queries as the run did, from the cached bank vectors."""
    from xmodal.indexer.calibrate import PROBE_TEXTS, text_probes
    from xmodal.storage.layout import Layout

    settings, _ = mixed
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        record = dict(next(s for s in catalog.spaces(catalog.collection_id("mix")) if s.name == "clip").model)
    finally:
        catalog.close()
    cached = text_probes(Layout(settings.home), "clip", record, None)
    assert cached is not None and cached.shape[0] == PROBE_TEXTS
    # kept from the alignment's fit (which embeds the whole bank with both text towers), one file per space
    assert len(list((settings.home / "cache").glob("text-probes-*.npy"))) == 2
    assert np.allclose(np.linalg.norm(cached, axis=1), 1.0, atol=1e-3)
    assert text_probes(Layout(tmp_path), "clip", record, None) is None  # no cache, no model: no bank
    other = {**record, "identity": "another model"}
    assert text_probes(Layout(settings.home), "clip", other, None) is None  # cached per model


def test_a_version_built_before_calibration_merges_by_rank_and_refuses_min_relevance(
        tmp_path: Path, tiny_clip: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import xmodal.indexer.publish as publish
    from xmodal.errors import UserError

    write_photos(tmp_path / "media", 6)
    write_texts(tmp_path / "media", {"a.txt": "red boots", "b.txt": "a kettle"})
    settings = Settings(home=tmp_path / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1])
    with monkeypatch.context() as m:
        m.setattr(publish, "calibrate", lambda *a, **kw: {})  # as versions were built before calibration
        m.setattr(publish, "CALIBRATION_VERSION", 0)  # (and their fingerprints did not say it)
        assert index_sources(settings, [tmp_path / "media"], "old", progress=False).failed == 0
    s = Searcher(settings, "old")
    try:
        outcome = s.run(text="red boots", k=8, mode="vector")
        assert outcome.fusion.startswith("rrf(k=60): not calibrated") and len(outcome.results) == 8
        assert all(r.relevance is None for r in outcome.results)
        with pytest.raises(UserError, match="built before relevance was calibrated"):
            s.run(text="red boots", k=8, min_relevance=1)
        assert len(s.run(text="red boots", k=8, min_score=-1).results) == 8  # the raw cutoff still works
    finally:
        s.close()
    # the next run after the upgrade rebuilds it, calibrated
    assert index_sources(settings, [tmp_path / "media"], "old", progress=False).index["clip"]["built"]
    s = Searcher(settings, "old")
    try:
        assert s.run(text="red boots", k=8, mode="vector").fusion == "relevance"
    finally:
        s.close()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_a_near_copy_among_look_alikes_stands_out_and_noise_does_not() -> None:
    """Two tight clusters of look-alikes make a part (a shop's two product lines): against the pair's
    calibration a near-copy of one member does not stand out (half the part scores almost as high), against
    this query's own background and its nearest neighbours it does. Another modality's part, offset towards this query, gives only noise: the
    query's own background says so where a single number for the pair would call it a find."""
    from xmodal.storage.calibration import REFERENCE, Relevance, local_tail, reference_ids

    rng = np.random.default_rng(3)
    dim, n = 64, 2000
    a, b = _unit(rng.standard_normal(dim)), _unit(rng.standard_normal(dim))
    images = np.concatenate([_unit(a + 0.005 * rng.standard_normal((n // 2, dim))),
                             _unit(b + 0.005 * rng.standard_normal((n // 2, dim)))])
    ids = np.arange(n, dtype=np.int64)
    query = _unit(images[7] + 0.0005 * rng.standard_normal(dim))
    cal = measure(images, images, n_targets=n, query_ids=ids, target_ids=ids)
    assert cal is not None
    ref = images[reference_ids(ids)]
    assert len(ref) == REFERENCE
    scores = images @ query
    top = np.argsort(-scores)[:33]
    background = cal.for_query(ref @ query)
    copy_rel = Relevance(background, local_tail(scores[top], n))(float(scores[7]))
    assert int(top[0]) == 7 and copy_rel > 3  # a thousand times rarer than chance's best
    assert cal.relevance(float(scores[7])) < 1  # the pair's calibration alone: half the part scores as high

    texts = _unit(rng.standard_normal((n, dim)) + 2.0 * a)  # every text leans towards this query's side
    probes = _unit(rng.standard_normal((256, dim)))  # query-like vectors of the pair: no lean
    cal_text = measure(probes, texts, n_targets=n)
    assert cal_text is not None
    t_scores = texts @ query
    t_top = np.sort(t_scores)[::-1][:33]
    noise = Relevance(cal_text.for_query(texts[:REFERENCE] @ query), local_tail(t_top, n))(float(t_top[0]))
    assert cal_text.relevance(float(t_top[0])) > 3  # the pair's calibration alone: a "find"
    assert -1 < noise < 1.5 and copy_rel > noise + 2


def test_the_local_tail_and_the_query_background_are_robust_and_bounded() -> None:
    from xmodal.storage.calibration import MIN_REFERENCE, local_tail

    rng = np.random.default_rng(4)
    background = (0.1 + 0.05 * rng.standard_normal(4000)).astype(np.float32)
    cal = Calibration(mean=0.0, std=0.3, pairs=1000, targets=4000, queries="items")
    shifted = cal.for_query(np.concatenate([background[:500], np.full(5, 0.95, np.float32)]))
    assert shifted.mean == pytest.approx(math.atanh(0.1), abs=0.01)  # a few related items do not move it
    assert shifted.std == pytest.approx(0.05, rel=0.15)
    assert cal.for_query(background[: MIN_REFERENCE - 1]) is cal  # too few: the pair's calibration stands
    assert cal.for_query(np.full(100, 0.5, np.float32)).std == pytest.approx(0.03)  # floored, never zero
    top = np.sort(background)[::-1]
    tail = local_tail(top[:33], 4000)
    assert tail is not None and tail.n == 32
    assert abs(tail.relevance(float(top[0]))) < 1.5  # chance's best of the tail: about 0
    assert tail.relevance(0.6) > 5  # far above the neighbours' spacing
    assert local_tail(top[:33], 60) is None  # a tail is a quarter of the part at most: 15 < MIN_TAIL
