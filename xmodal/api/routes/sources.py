"""A manifest's rows by their own ids (a shop's SKUs): the row with its items, and more like it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from xmodal.api.deps import ServiceDep
from xmodal.api.errors import responses
from xmodal.api.schemas import (
    FILTER_DOC,
    FUSION_DOC,
    MAX_FILTER_TEXT,
    MAX_K,
    MAX_OFFSET,
    MIN_RELEVANCE_DOC,
    MIN_SCORE_DOC,
    RECALL_DOC,
    CollectionName,
    Fusion,
    PlainInt,
    PlainNumber,
    SearchResponse,
    SignedNumber,
    SourceOut,
    Target,
    Text,
    parse_filter_text,
)

SOURCE_DOC = "the row's own id, as the manifest's id column gave it (a SKU); a '/' in it may be sent as %2F"
SourceId = Annotated[Text, Path(min_length=1, max_length=1000, description=SOURCE_DOC)]
Collection = Annotated[CollectionName | None, Query(description="the collection (needed only when the same id is in "
                                                                "several served collections)")]


def router(*, errors: tuple[int, ...]) -> APIRouter:
    r = APIRouter(prefix="/v1/sources", tags=["items"])

    @r.get("/{source_id:path}/similar", response_model=SearchResponse, responses=responses(*errors, 404, 422, 503))
    def similar(
        source_id: SourceId,
        service: ServiceDep,
        collection: Collection = None,
        column: Annotated[Text | None, Query(max_length=200, description="the media column whose item is the query "
                                                                          "(default: the row's first image, else "
                                                                          "its first item)")] = None,
        target: Target = "any",
        k: Annotated[PlainInt, Query(ge=1, le=MAX_K)] = 12,
        offset: Annotated[PlainInt, Query(ge=0, le=MAX_OFFSET)] = 0,
        filters: Annotated[str | None, Query(max_length=MAX_FILTER_TEXT, description=f"{FILTER_DOC}, as JSON text")]
        = None,
        recall: Annotated[PlainNumber | None, Query(gt=0, le=1, description=RECALL_DOC)] = None,
        fusion: Annotated[Fusion, Query(description=FUSION_DOC)] = "relevance",
        min_relevance: Annotated[SignedNumber | None, Query(ge=-1000, le=1000, description=MIN_RELEVANCE_DOC)] = None,
        min_score: Annotated[SignedNumber | None, Query(ge=-1, le=1, description=MIN_SCORE_DOC)] = None,
    ) -> dict[str, Any]:
        """More like this row: the row's own items are left out."""
        return service.similar_source(source_id=source_id, collection=collection, column=column,
                                      filters=parse_filter_text(filters), target=target, k=k, offset=offset,
                                      recall=recall, fusion=fusion, min_relevance=min_relevance, min_score=min_score)

    @r.get("/{source_id:path}", response_model=SourceOut, responses=responses(*errors, 404, 422, 503))
    def source(source_id: SourceId, service: ServiceDep, collection: Collection = None) -> dict[str, Any]:
        """A manifest row: its metadata and its items (one per media column) with media and thumbnail links."""
        return service.source(source_id=source_id, collection=collection)

    return r
