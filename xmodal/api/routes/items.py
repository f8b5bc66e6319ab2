from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from xmodal.api.deps import ServiceDep
from xmodal.api.errors import responses
from xmodal.api.files import VerifiedFileResponse
from xmodal.api.schemas import (
    FILTER_DOC,
    FUSION_DOC,
    MAX_FILTER_TEXT,
    MAX_ID,
    MAX_K,
    MAX_OFFSET,
    MIN_RELEVANCE_DOC,
    MIN_SCORE_DOC,
    RECALL_DOC,
    CollectionName,
    Fusion,
    ItemOut,
    PlainInt,
    PlainNumber,
    SearchResponse,
    SignedNumber,
    Target,
    parse_filter_text,
)

ItemId = Annotated[PlainInt, Path(ge=1, le=MAX_ID)]
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def router(*, errors: tuple[int, ...]) -> APIRouter:
    r = APIRouter(prefix="/v1/items", tags=["items"])

    @r.get("/{item_id}", response_model=ItemOut, responses=responses(*errors, 404, 422, 503))
    def item(item_id: ItemId, service: ServiceDep) -> dict[str, Any]:
        return service.item(item_id=item_id)

    @r.get("/{item_id}/similar", response_model=SearchResponse, responses=responses(*errors, 404, 422, 503))
    def similar(
        item_id: ItemId,
        service: ServiceDep,
        collection: Annotated[CollectionName | None, Query()] = None,
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
        return service.similar(item_id=item_id, collection=collection, target=target, k=k, offset=offset,
                               filters=parse_filter_text(filters), recall=recall, fusion=fusion, min_relevance=min_relevance, min_score=min_score)

    @r.get("/{item_id}/media", response_class=Response, responses={
        200: {"description": "The original file, as indexed (Range requests are honoured).",
              "content": {"application/octet-stream": _BINARY, "image/*": _BINARY, "audio/*": _BINARY,
                          "text/plain": _BINARY}},
        307: {"description": "A manifest item's media lives at a URL: the Location header."},
        **responses(*errors, 404, 409, 422, 503)})
    def media(item_id: ItemId, service: ServiceDep) -> Response:
        found = service.media(item_id=item_id)
        if isinstance(found, str):  # a manifest item's media URL
            return RedirectResponse(found, status_code=307)
        opened, media_type = found
        return VerifiedFileResponse(opened, media_type=media_type)

    @r.get("/{item_id}/thumbnail", response_class=FileResponse, responses={
        200: {"description": "A JPEG thumbnail of an image item.", "content": {"image/jpeg": _BINARY}},
        **responses(*errors, 404, 409, 422, 503)})
    def thumbnail(item_id: ItemId, service: ServiceDep) -> FileResponse:
        return FileResponse(service.thumbnail(item_id=item_id), media_type="image/jpeg",
                            headers={"Cache-Control": "public, max-age=86400"})

    return r
