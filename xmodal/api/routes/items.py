from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from xmodal.api.deps import ServiceDep
from xmodal.api.errors import responses
from xmodal.api.files import VerifiedFileResponse
from xmodal.api.routes.options import PageOptions
from xmodal.api.schemas import MAX_ID, CollectionName, ItemOut, PlainInt, SearchResponse

ItemId = Annotated[PlainInt, Path(ge=1, le=MAX_ID)]
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def router(*, errors: tuple[int, ...]) -> APIRouter:
    r = APIRouter(prefix="/v1/items", tags=["items"])

    @r.get("/{item_id}", response_model=ItemOut, responses=responses(*errors, 404, 422, 503))
    def item(item_id: ItemId, service: ServiceDep) -> dict[str, Any]:
        return service.item(item_id=item_id)

    @r.get("/{item_id}/similar", response_model=SearchResponse, responses=responses(*errors, 404, 422, 503))
    def similar(item_id: ItemId, service: ServiceDep, options: Annotated[PageOptions, Depends()],
                collection: Annotated[CollectionName | None, Query()] = None) -> dict[str, Any]:
        return service.similar(item_id=item_id, collection=collection, **options.search_args())

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
        200: {"description": "A JPEG thumbnail of an image item, or of a video's frame at `t` seconds (default: "
                     "its middle).", "content": {"image/jpeg": _BINARY}},
        **responses(*errors, 404, 409, 422, 503)})
    def thumbnail(item_id: ItemId, service: ServiceDep,
                  t: Annotated[float | None, Query(ge=0, le=1e6, description="a video's time, seconds")] = None
                  ) -> FileResponse:
        return FileResponse(service.thumbnail(item_id=item_id, at_s=t), media_type="image/jpeg",
                            headers={"Cache-Control": "public, max-age=86400"})

    return r
