"""A manifest's rows by their own ids (a shop's SKUs): the row with its items, and more like it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from xmodal.api.deps import ServiceDep
from xmodal.api.errors import responses
from xmodal.api.routes.options import PageOptions
from xmodal.api.schemas import CollectionName, SearchResponse, SourceOut, Text

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
        options: Annotated[PageOptions, Depends()],
        collection: Collection = None,
        column: Annotated[Text | None, Query(max_length=200, description="the media column whose item is the query "
                                                                          "(default: the row's first image, else "
                                                                          "its first item)")] = None,
    ) -> dict[str, Any]:
        """More like this row: the row's own items are left out."""
        return service.similar_source(source_id=source_id, collection=collection, column=column,
                                      **options.search_args())

    @r.get("/{source_id:path}", response_model=SourceOut, responses=responses(*errors, 404, 422, 503))
    def source(source_id: SourceId, service: ServiceDep, collection: Collection = None) -> dict[str, Any]:
        """A manifest row: its metadata and its items (one per media column) with media and thumbnail links."""
        return service.source(source_id=source_id, collection=collection)

    return r
