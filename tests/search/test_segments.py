"""search.segments: a windowed result's windows ranked best first, ties in time order, the first its segment."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.errors import UserError
from xmodal.search.results import SearchResult
from xmodal.search.segments import MAX_SEGMENTS, attach, best_windows, check_segments

SPANS = np.array([[0.0, 10.0], [10.0, 20.0], [15.0, 25.0], [25.0, 27.5]])


def test_windows_rank_best_first_ties_in_time_order_at_most_what_there_is() -> None:
    scores = np.array([0.2, 0.5, 0.2, 0.7], dtype=np.float32)
    ranked = best_windows(scores, SPANS, 10)
    assert [s["window"] for s in ranked] == [3, 1, 0, 2]
    assert ranked[0] == {"start_s": 25.0, "end_s": 27.5, "score": pytest.approx(0.7), "window": 3}
    assert [s["window"] for s in best_windows(scores, SPANS, 2, relevance=lambda x: 10 * x)] == [3, 1]
    assert best_windows(scores, SPANS, 2, relevance=lambda x: 10 * x)[1]["relevance"] == pytest.approx(5.0)


def test_attach_sets_the_segment_and_the_list_only_when_more_are_asked_for() -> None:
    result = SearchResult(1, "/v.mp4", "video", 0.0, {}, "clip", "ip")
    scores = np.array([0.1, 0.9, 0.3, 0.0])
    assert attach(result, scores, SPANS, 1) == pytest.approx(0.9)
    assert result.segment["window"] == 1 and result.segments is None and "segments" not in result.as_dict()
    attach(result, scores, SPANS, 3)
    assert result.segments[0] == result.segment and [s["window"] for s in result.segments] == [1, 2, 0]
    assert result.as_dict()["segments"] == result.segments


@pytest.mark.parametrize("bad", [0, MAX_SEGMENTS + 1, -1, 2.0, "3", True, None])
def test_a_bad_count_is_refused(bad) -> None:
    with pytest.raises(UserError, match=f"segments must be an integer from 1 to {MAX_SEGMENTS}"):
        check_segments(bad)
    check_segments(MAX_SEGMENTS)
