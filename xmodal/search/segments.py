"""A windowed result's matching segments: its windows (a video's shots, a long sound's windows), each with its
time range, ranked by their score against the query, best first.

Every windowed result names its best window (``segment``: ``start_s``, ``end_s``, ``score``, ``window``, and
``relevance`` where the route's calibration scores windows: a video searched in a space its frames or sound
are native to). On request (``segments`` > 1: the HTTP body or form field, the query-string option of the
"similar" routes, ``xmodal search --segments N``) it also carries ``segments``: its best ``segments``
windows in that order, at most :data:`MAX_SEGMENTS`, the first equal to ``segment``. Ties keep the windows'
order in time. The engine computes the scores (``search.engine``); this module ranks and shapes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xmodal.errors import UserError

MAX_SEGMENTS = 20  # windows listed per result, at most
SEGMENTS_DOC = (f"how many matching segments each windowed result (a video, a long sound) lists in 'segments', best "
                f"first (1 to {MAX_SEGMENTS}); 1, the default: only its best one, in 'segment'")


def check_segments(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEGMENTS:
        raise UserError(f"segments must be an integer from 1 to {MAX_SEGMENTS}, not {n!r}")


def best_windows(scores: np.ndarray, spans: Any, n: int,
                 relevance: Callable[[float], float] | None = None) -> list[dict[str, Any]]:
    """The ``n`` best windows by ``scores`` (one per window, as ``spans``: (start, end) seconds), best first."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max(1, n)]
    out = []
    for w in order:
        score = float(scores[w])
        seg: dict[str, Any] = {"start_s": round(float(spans[w][0]), 3), "end_s": round(float(spans[w][1]), 3),
                               "score": round(score, 6), "window": int(w)}
        if relevance is not None:
            seg["relevance"] = relevance(score)
        out.append(seg)
    return out


def attach(result: Any, scores: np.ndarray, spans: Any, n: int,
           relevance: Callable[[float], float] | None = None) -> float:
    """Set ``result.segment`` (and ``result.segments`` when ``n`` > 1) from its windows' scores; returns the best
    score."""
    ranked = best_windows(scores, spans, n, relevance)
    result.segment = ranked[0]
    result.segments = ranked if n > 1 else None
    return float(scores[ranked[0]["window"]])
