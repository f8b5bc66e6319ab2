from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Form, Request, UploadFile

from xmodal.api.deps import ServiceDep
from xmodal.api.errors import responses
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
    CollectionName,
    Fusion,
    GroupBy,
    PlainInt,
    PlainNumber,
    SearchOptions,
    SearchResponse,
    SignedNumber,
    Target,
    parse_filter_text,
    parse_weights_text,
    search_request,
)
from xmodal.config import Settings
from xmodal.spaces import UPLOAD_TYPES

UPLOAD_TYPE_LIST = ", ".join(sorted(UPLOAD_TYPES))


def router(settings: Settings, *, errors: tuple[int, ...]) -> APIRouter:
    """``errors``: the statuses every operation may answer besides its own (401 with keys set)."""
    r = APIRouter(prefix="/v1", tags=["search"])
    SearchRequest = search_request(settings.max_query_chars)  # noqa: N806 - a type

    @r.post("/search", response_model=SearchResponse, responses=responses(*errors, 404, 409, 422, 503))
    def search(body: Annotated[SearchRequest, Body()], service: ServiceDep) -> dict[str, Any]:  # type: ignore[valid-type]
        q: SearchOptions = body
        return service.search(collection=q.collection, text=getattr(q, "text", None),
                              item_id=getattr(q, "item_id", None), target=q.target, k=q.k,
                              offset=q.offset, filters=q.filters, recall=q.recall, fusion=q.fusion,
                              min_relevance=q.min_relevance, min_score=q.min_score, mode=q.mode,
                              group_by=q.group_by, group_weights=q.group_weights,
                              sort=[key.model_dump() for key in q.sort or []], facets=q.facets,
                              segments=q.segments)

    @r.post("/search/upload", response_model=SearchResponse,
            responses=responses(*errors, 404, 415, 422, 503),
            openapi_extra={"requestBody": {"content": {"multipart/form-data": {
                "encoding": {"file": {"contentType": UPLOAD_TYPE_LIST}}}}}})
    async def search_upload(
        request: Request,
        service: ServiceDep,
        file: Annotated[UploadFile, File(description=f"an image, a sound or a short video clip ({UPLOAD_TYPE_LIST});"
                                                     f" at most {settings.max_upload_bytes} bytes, "
                                                     f"{settings.query_max_image_pixels} pixels, "
                                                     f"{settings.query_max_audio_seconds:g} s of sound or "
                                                     f"{settings.query_max_video_seconds:g} s of video at "
                                                     f"{settings.query_max_video_pixels} pixels a frame")],
        collection: Annotated[CollectionName, Form()],
        target: Annotated[Target, Form()] = "any",
        k: Annotated[PlainInt, Form(ge=1, le=MAX_K)] = 12,
        offset: Annotated[PlainInt, Form(ge=0, le=MAX_OFFSET)] = 0,
        filters: Annotated[str | None, Form(max_length=MAX_FILTER_TEXT, description=f"{FILTER_DOC}, as JSON text")]
        = None,
        recall: Annotated[PlainNumber | None, Form(gt=0, le=1, description=RECALL_DOC)] = None,
        fusion: Annotated[Fusion, Form(description=FUSION_DOC)] = "relevance",
        min_relevance: Annotated[SignedNumber | None, Form(ge=-1000, le=1000, description=MIN_RELEVANCE_DOC)] = None,
        min_score: Annotated[SignedNumber | None, Form(ge=-1, le=1, description=MIN_SCORE_DOC)] = None,
        group_by: Annotated[GroupBy | None, Form(description=GROUP_BY_DOC)] = None,
        group_weights: Annotated[str | None, Form(max_length=MAX_FILTER_TEXT,
                                                  description=f"{GROUP_WEIGHTS_DOC}; as JSON text")] = None,
        segments: Annotated[PlainInt, Form(ge=1, le=MAX_SEGMENTS, description=SEGMENTS_DOC)] = 1,
    ) -> dict[str, Any]:
        return await service.search_upload(request=request, collection=collection, data=await file.read(),
                                           media_type=file.content_type or "", target=target, k=k, offset=offset,
                                           filters=parse_filter_text(filters), recall=recall, fusion=fusion,
                                           min_relevance=min_relevance, min_score=min_score, group_by=group_by,
                                           group_weights=parse_weights_text(group_weights), segments=segments)

    return r
