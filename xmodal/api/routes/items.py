from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from xmodal.api.deps import ServiceDep, require_api_key
from xmodal.api.schemas import MAX_K, MAX_OFFSET, RECALL_DOC, ItemOut, SearchResponse, Target

router = APIRouter(prefix="/v1/items", tags=["items"], dependencies=[Depends(require_api_key)])
ItemId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.get("/{item_id}", response_model=ItemOut)
def item(item_id: ItemId, service: ServiceDep) -> dict[str, Any]:
    return service.item(item_id=item_id)


@router.get("/{item_id}/similar", response_model=SearchResponse)
def similar(
    item_id: ItemId,
    service: ServiceDep,
    collection: Annotated[str | None, Query(max_length=64)] = None,
    target: Target = "any",
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 12,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    recall: Annotated[float | None, Query(gt=0, le=1, description=RECALL_DOC)] = None,
) -> dict[str, Any]:
    return service.similar(item_id=item_id, collection=collection, target=target, k=k, offset=offset,
                           recall=recall)


@router.get("/{item_id}/media", response_class=FileResponse)
def media(item_id: ItemId, service: ServiceDep) -> Response:
    found = service.media(item_id=item_id)
    if isinstance(found, str):  # a manifest item's media URL
        return RedirectResponse(found, status_code=307)
    path, media_type = found
    return FileResponse(path, media_type=media_type)


@router.get("/{item_id}/thumbnail", response_class=FileResponse)
def thumbnail(item_id: ItemId, service: ServiceDep) -> FileResponse:
    return FileResponse(service.thumbnail(item_id=item_id), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=86400"})
