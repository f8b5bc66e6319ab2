from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from xmodal.api.deps import ServiceDep, require_api_key
from xmodal.api.errors import ApiError
from xmodal.api.schemas import MAX_K, MAX_OFFSET, RECALL_DOC, SearchRequest, SearchResponse, Target
from xmodal.api.service import AUDIO_TYPES, IMAGE_TYPES

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_api_key)])


@router.post("/search", response_model=SearchResponse)
def search(body: SearchRequest, service: ServiceDep) -> dict[str, Any]:
    return service.search(collection=body.collection, text=body.text, item_id=body.item_id, target=body.target,
                          k=body.k, offset=body.offset, filters=body.filters, recall=body.recall)


def _filters(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_request", f"filters: not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict):
        raise ApiError(422, "invalid_request", "filters: must be a JSON object")
    return parsed


@router.post("/search/upload", response_model=SearchResponse)
def search_upload(
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="an image (jpeg, png, webp, gif, bmp, tiff) or audio "
                                                 "(wav, flac, ogg, opus, mp3, aiff)")],
    collection: Annotated[str, Form(min_length=1, max_length=64)],
    target: Annotated[Target, Form()] = "any",
    k: Annotated[int, Form(ge=1, le=MAX_K)] = 12,
    offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
    filters: Annotated[str | None, Form(max_length=20_000)] = None,
    recall: Annotated[float | None, Form(gt=0, le=1, description=RECALL_DOC)] = None,
) -> dict[str, Any]:
    declared = (file.content_type or "").split(";")[0].strip().lower()
    if declared not in IMAGE_TYPES | AUDIO_TYPES:
        raise ApiError(415, "unsupported_media", f"file type {declared or 'unknown'!r} is not accepted; send one of "
                                                 f"{', '.join(sorted(IMAGE_TYPES | AUDIO_TYPES))}")
    data = file.file.read()
    audio = declared in AUDIO_TYPES
    return service.search(collection=collection, image_bytes=None if audio else data, audio_bytes=data if audio else None,
                          target=target, k=k, offset=offset, filters=_filters(filters), recall=recall)
