"""Filtered search over a collection of videos: a filter on a manifest field restricts the video part under
each plan of ``search.plans`` (exact, ann-restricted, post-filter), and every result is a matching video
with the segment of the shot that matched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import module_database_url
from helpers import photo, write_csv, write_video
from PIL import Image

from xmodal.config import Settings
from xmodal.indexer.pipeline import index_manifest
from xmodal.search import plans
from xmodal.search.engine import Searcher
from xmodal.search.filters import metadata_fields, prepare_filter

database_url = pytest.fixture(scope="module", name="database_url")(module_database_url)  # one build per backend

#: six videos of three shots (2, 3 and 2 seconds) from photos no other video uses; four are "sport"
CATEGORY = ["sport", "sport", "nature", "sport", "city", "sport"]
SHOT_2 = (2.0, 5.0)
K = 10


@pytest.fixture(scope="module")
def videos(database_url: str, tiny_clip: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("video-shop")
    rows = []
    for v, category in enumerate(CATEGORY):
        write_video(root / "media" / f"film_{v}.mp4", [(photo(200 + 3 * v + s), secs)
                                                       for s, secs in enumerate((2.0, 3.0, 2.0))])
        rows.append({"id": f"V{v}", "video": f"media/film_{v}.mp4", "category": category, "minutes": v})
    settings = Settings(home=root / "home", database_url=database_url, clip_model=tiny_clip[0],
                        clip_pretrained=tiny_clip[1], batch_size=8, exact_threshold=1000, workers=1, video_fps=2.0)
    summary = index_manifest(settings, write_csv(root / "videos.csv", rows), "films", media={"video": None},
                             progress=False)
    assert summary.ok == len(CATEGORY) and summary.failed == 0
    return settings


def _still(folder: Path, video: int) -> Path:
    """A frame of the video's second shot, resized and noised."""
    img = np.asarray(photo(200 + 3 * video + 1).resize((140, 100))).astype(np.int16)
    img += np.random.default_rng(3).integers(-6, 7, size=img.shape, dtype=np.int16)
    path = folder / f"still_{video}.png"
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def _search(searcher: Searcher, still: Path, spec: dict[str, Any]) -> tuple[str, list[Any]]:
    flt = prepare_filter(spec, metadata_fields(searcher.catalog, searcher.collection_id))
    outcome = searcher.run(image=still, target="video", k=K, where=flt)
    return outcome.ann["clip/video"]["plan"], outcome.results


@pytest.mark.backends
def test_a_filter_restricts_video_search_under_every_plan_with_the_segment(
        videos: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = Searcher(videos, "films")
    try:
        plain = searcher.run(image=_still(tmp_path, 2), target="video", k=K)
        assert plain.results[0].source["id"] == "V2"  # unfiltered, the still finds its own video first

        cases = [
            ({"field": "category", "op": "eq", "value": "sport"}, 1, "post-filter", {"V0", "V1", "V3", "V5"}),
            ({"field": "category", "op": "eq", "value": "nature"}, 2, "exact", {"V2"}),
            ({"and": [{"field": "category", "op": "eq", "value": "city"},
                      {"field": "minutes", "op": "gte", "value": 4}]}, 4, "exact", {"V4"}),
            ({"field": "source_id", "op": "in", "value": ["V0", "V3"]}, 3, "exact", {"V0", "V3"}),
        ]
        for spec, video, plan, want in cases:
            got_plan, results = _search(searcher, _still(tmp_path, video), spec)
            assert got_plan == plan, spec
            assert {r.source["id"] for r in results} == want and len(results) == len(want), spec
            assert all(r.modality == "video" and r.metadata["category"] == CATEGORY[int(r.source["id"][1:])]
                       for r in results)
            assert all(r.segment is not None and r.segment["end_s"] > r.segment["start_s"] for r in results)
            best = results[0]
            assert best.source["id"] == f"V{video}", (spec, [r.source["id"] for r in results])
            assert (best.segment["start_s"], best.segment["end_s"]) == pytest.approx(SHOT_2, abs=0.51)

        # a filter that leaves the still's own video out: its best match is not returned
        plan, results = _search(searcher, _still(tmp_path, 2), {"field": "category", "op": "eq", "value": "city"})
        assert plan == "exact" and [r.source["id"] for r in results] == ["V4"] and results[0].segment is not None
        plan, results = _search(searcher, _still(tmp_path, 2), {"field": "category", "op": "eq", "value": "none"})
        assert (plan, results) == ("empty", [])

    finally:
        searcher.close()
    # the restricted ANN plan (a flat part: its scan with an id selector), shown without the cost rule
    monkeypatch.setattr(plans, "EXACT_COST", 10**9)
    searcher = Searcher(videos.model_copy(update={"filter_exact_max": 0}), "films")
    try:
        plan, results = _search(searcher, _still(tmp_path, 4), {"field": "category", "op": "eq", "value": "city"})
        assert plan == "ann-restricted" and [r.source["id"] for r in results] == ["V4"]
        assert results[0].segment is not None
        assert (results[0].segment["start_s"], results[0].segment["end_s"]) == pytest.approx(SHOT_2, abs=0.51)
    finally:
        searcher.close()
