"""The query-string options of every GET that answers a page of results (more like an item, more like a
source row): one definition, so both routes take and document the same ones."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from xmodal.api.schemas import (
    FILTER_DOC,
    FUSION_DOC,
    GROUP_BY_DOC,
    GROUP_WEIGHTS_DOC,
    MAX_FILTER_TEXT,
    MAX_K,
    MAX_OFFSET,
    MAX_SEGMENTS,
    MIN_RELEVANCE_DOC,
    MIN_SCORE_DOC,
    RECALL_DOC,
    SEGMENTS_DOC,
    Fusion,
    GroupBy,
    PlainInt,
    PlainNumber,
    SignedNumber,
    Target,
    parse_filter_text,
    parse_weights_text,
)


class PageOptions:
    """``target``, ``k``, ``offset``, ``filters`` (JSON text), ``recall``, ``fusion``, the cutoffs, the grouping
    (``group_weights`` as JSON text) and ``segments``, as a
    FastAPI dependency (``Annotated[PageOptions, Depends()]``); :meth:`search_args` for the service."""

    def __init__(
        self,
        target: Target = "any",
        k: Annotated[PlainInt, Query(ge=1, le=MAX_K)] = 12,
        offset: Annotated[PlainInt, Query(ge=0, le=MAX_OFFSET)] = 0,
        filters: Annotated[str | None, Query(max_length=MAX_FILTER_TEXT, description=f"{FILTER_DOC}, as JSON text")]
        = None,
        recall: Annotated[PlainNumber | None, Query(gt=0, le=1, description=RECALL_DOC)] = None,
        fusion: Annotated[Fusion, Query(description=FUSION_DOC)] = "relevance",
        min_relevance: Annotated[SignedNumber | None, Query(ge=-1000, le=1000, description=MIN_RELEVANCE_DOC)] = None,
        min_score: Annotated[SignedNumber | None, Query(ge=-1, le=1, description=MIN_SCORE_DOC)] = None,
        group_by: Annotated[GroupBy | None, Query(description=GROUP_BY_DOC)] = None,
        group_weights: Annotated[str | None, Query(max_length=MAX_FILTER_TEXT,
                                                   description=f"{GROUP_WEIGHTS_DOC}; as JSON text")] = None,
        segments: Annotated[PlainInt, Query(ge=1, le=MAX_SEGMENTS, description=SEGMENTS_DOC)] = 1,
    ) -> None:
        self.args: dict[str, Any] = {"target": target, "k": k, "offset": offset, "filters": parse_filter_text(filters),
                                     "recall": recall, "fusion": fusion, "min_relevance": min_relevance,
                                     "min_score": min_score, "group_by": group_by,
                                     "group_weights": parse_weights_text(group_weights), "segments": segments}

    def search_args(self) -> dict[str, Any]:
        return dict(self.args)
