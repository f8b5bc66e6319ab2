"""Request and response bodies. Every field is bounded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Target = Literal["any", "image", "text", "audio"]
MAX_K = 100
RECALL_DOC = ("recall@10 wanted from approximate indexes: the cheapest operating point measured at build time "
              "that reaches it (lower is faster); default: the point the build tuned for")
MAX_OFFSET = 900  # k + offset stays within what one search may fetch (1000)
MAX_TEXT = 1000


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=64)
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    item_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    target: Target = "any"
    k: int = Field(default=12, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    filters: dict[str, Any] | None = None
    recall: float | None = Field(default=None, gt=0, le=1, description=RECALL_DOC)

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.item_id is None):
            raise ValueError("give exactly one of text or item_id (upload a file with /v1/search/upload)")
        if self.text is not None and not self.text.strip():
            raise ValueError("text must not be blank")
        return self


class ResultOut(BaseModel):
    id: int
    uri: str
    modality: str
    score: float
    space: str
    method: str
    space_score: float | None = None  # with method "rrf": the inner product in its own space
    segment: dict[str, float] | None = None  # a long audio clip's best-matching window (start_s, end_s)
    source: dict[str, str] | None = None  # a manifest item: the source's id and the media column
    metadata: dict[str, Any]
    media_url: str
    thumbnail_url: str | None


class SearchResponse(BaseModel):
    collection: str
    target: str
    k: int
    offset: int
    index_version: int
    routes: list[dict[str, str]] = []  # per target modality: the space searched and how scores came about
    fusion: str | None = None  # how lists of different spaces were merged, when they were
    ann: dict[str, dict[str, Any]] = {}  # per "space/part": index kind and the operating point used
    results: list[ResultOut]
    timings_ms: dict[str, float]


class ItemOut(BaseModel):
    id: int
    collection: str
    uri: str
    modality: str
    metadata: dict[str, Any]
    content_hash: str | None
    size: int | None
    media_url: str
    thumbnail_url: str | None


class CollectionOut(BaseModel):
    name: str
    items: dict[str, int]
    modalities: dict[str, int]
    metadata_fields: dict[str, str]
    index_version: int | None
    model: str | None


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class ErrorOut(BaseModel):
    error: str
    message: str
