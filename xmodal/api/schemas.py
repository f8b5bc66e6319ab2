"""Request and response bodies. Every field is bounded, and the published schema is what is enforced.

- JSON bodies are strict: an integer is a JSON integer (``true``, ``1.0`` and ``"1"`` are refused),
  unknown keys are refused, and text holds no lone surrogates (``"\\ud800"`` is valid JSON but no text).
- Path, query and form values are strings: integers there are plain digits (``1_0``, ``+1``, `` 1``
  and ``1.0`` are refused), numbers plain decimals.
- The text-query limit is the configured one (``XMODAL_MAX_QUERY_CHARS``): the models are built per app.
- ``filters`` is validated by ``xmodal.search.filters`` (with the path of the problem); its grammar is
  published as the ``Filter`` schema built from the models below.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from xmodal.errors import UserError
from xmodal.search.browse import FACET_VALUES, MAX_FACETS, MAX_SORT_KEYS
from xmodal.search.filters import MAX_DEPTH, MAX_STRING, MAX_VALUES
from xmodal.search.results import SORT_WINDOW
from xmodal.search.segments import MAX_SEGMENTS, SEGMENTS_DOC
from xmodal.spaces import TARGETS
from xmodal.storage.catalog import COLLECTION_NAME_RE

Target = Literal[TARGETS]  # type: ignore[valid-type] # "any", then each modality of the spaces table
MAX_K = 100
RECALL_DOC = ("recall@10 wanted from approximate indexes: the cheapest operating point measured at build time "
              "that reaches it (lower is faster); default: the point the build tuned for")
MAX_OFFSET = 900  # k + offset stays within what one search may fetch (1000)
MAX_ID = 2**63 - 1
MAX_FILTER_TEXT = 20_000
Fusion = Literal["relevance", "rrf"]
FUSION_DOC = ("how the lists of several target modalities merge: by calibrated relevance (default), or by reciprocal "
              "rank (rrf)")
MIN_RELEVANCE_DOC = ("leave out results whose relevance is below this (relevance: -log10 of how many unrelated items "
                     "of the collection would score as high; 0 is chance, 1 ten times less likely, a near-duplicate "
                     "far above); a page left empty says no_good_match")
Mode = Literal["vector", "lexical", "hybrid"]
MODE_DOC = ("vector: the embeddings only; lexical: the catalog's full-text index only (words, SKUs, brands; no model "
            "runs); hybrid: both lists fused by reciprocal rank (rrf, k=60), a query equal to a source id first. "
            "Default: hybrid for a text query on a collection with a full-text index, else vector; an item query "
            "is vector only")
MIN_SCORE_DOC = "leave out results whose raw score (inner product in their space) is below this"
GroupBy = Literal["source", "none"]
GROUP_BY_DOC = ("source: one result per product (manifest row), its score fused from its items; none: one result "
                "per item. Default: source for a collection whose items mostly came from a manifest, else none")
GROUP_WEIGHTS_DOC = ("with group_by source: a product's score is the weighted sum of the best item value under each "
                     "key, a media column or a modality (relevance; rrf when lists were fused by rank; raw score "
                     "when uncalibrated), e.g. {\"image\": 0.7, \"title\": 0.3}; default: its best item's value")
MAX_GROUP_WEIGHTS = 32
_WeightKey = Annotated[str, Field(min_length=1, max_length=64)]
GroupWeights = Annotated[dict[_WeightKey, Annotated[float, Field(ge=0, le=1000)]],
                         Field(min_length=1, max_length=MAX_GROUP_WEIGHTS, description=GROUP_WEIGHTS_DOC)]
SORT_DOC = (f"order results by these fields (the collection's metadata fields holding one value, and id), then by id "
            f"when browsing or by relevance with a query; a missing value sorts last. With a query the sort reorders "
            f"the best {SORT_WINDOW} results by relevance (after the cutoff)")
FACETS_DOC = (f"count the matching items per value of these fields: the {FACET_VALUES} most frequent values and "
              f"'other'; over every match when browsing or in lexical mode, over the best {SORT_WINDOW} by relevance "
              "(after the cutoff) for a vector or hybrid query")
FILTER_DOC = ("a structured filter over metadata fields (schema Filter): {\"field\", \"op\", \"value\"} conditions "
              f"combined with {{\"and\": [...]}}, {{\"or\": [...]}}, {{\"not\": ...}}, at most {MAX_DEPTH} levels deep")

_DIGITS = re.compile(r"(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")
_SIGNED = re.compile(r"-?([0-9]+(\.[0-9]+)?|\.[0-9]+)")


def _no_surrogates(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (it holds a lone surrogate such as \\ud800)") from None
    return value


def _plain_int(value: Any) -> Any:
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise ValueError("expected an integer written as plain digits")
        return int(value)
    return value


def _plain_number(value: Any) -> Any:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise ValueError("expected a number written as plain decimal digits")
        return float(value)
    return value


def _signed_number(value: Any) -> Any:
    if isinstance(value, str):
        if not _SIGNED.fullmatch(value):
            raise ValueError("expected a number written as plain decimal digits, with a minus sign if negative")
        return float(value)
    return value


Text = Annotated[str, AfterValidator(_no_surrogates)]
#: a possibly negative number in a query string or form (a cutoff): decimal digits and a minus sign only
SignedNumber = Annotated[float, BeforeValidator(_signed_number)]
#: an integer in a path, query string or form: digits only
PlainInt = Annotated[int, BeforeValidator(_plain_int), Field(strict=True)]
#: a number in a query string or form: decimal digits only
PlainNumber = Annotated[float, BeforeValidator(_plain_number)]
CollectionName = Annotated[Text, Field(min_length=1, max_length=64, pattern=COLLECTION_NAME_RE.pattern)]


# the filter grammar, as published (validation: xmodal.search.filters.compile_filter) -----------------

Scalar = Annotated[Annotated[str, Field(max_length=MAX_STRING)] | float | bool, Field(title="Scalar")]
FieldName = Annotated[str, Field(min_length=1, max_length=200)]


class Compare(BaseModel):
    """A field equals, differs from, or is ordered against a value (on a list field: contains it)."""

    model_config = ConfigDict(extra="forbid")
    field: FieldName
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte"]
    value: Scalar


class Among(BaseModel):
    """A field's value is (``in``) or is not (``nin``) one of the values (on a list field: contains one)."""

    model_config = ConfigDict(extra="forbid")
    field: FieldName
    op: Literal["in", "nin"]
    value: list[Scalar] = Field(min_length=1, max_length=MAX_VALUES)


class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gt: Scalar | None = None
    gte: Scalar | None = None
    lt: Scalar | None = None
    lte: Scalar | None = None


class Between(BaseModel):
    """A field lies within bounds: one lower (gt or gte) and/or one upper (lt or lte)."""

    model_config = ConfigDict(extra="forbid")
    field: FieldName
    op: Literal["range"]
    value: Bounds


class Exists(BaseModel):
    """A field is present (true) or absent (false)."""

    model_config = ConfigDict(extra="forbid")
    field: FieldName
    op: Literal["exists"]
    value: bool


class All(BaseModel):
    model_config = ConfigDict(extra="forbid")
    and_: list[Filter] = Field(alias="and", min_length=1)


class AnyOf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    or_: list[Filter] = Field(alias="or", min_length=1)


class Negation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    not_: Filter = Field(alias="not")


Filter = Annotated[Compare | Among | Between | Exists | All | AnyOf | Negation, Field(title="Filter")]
for _model in (All, AnyOf, Negation):
    _model.model_rebuild()


def filter_components() -> dict[str, Any]:
    """The grammar's JSON schemas, keyed by name, for the OpenAPI document's components."""
    schema = TypeAdapter(Filter).json_schema(ref_template="#/components/schemas/{model}")
    defs: dict[str, Any] = schema.pop("$defs", {})
    defs["Filter"] = schema
    return defs


FILTER_REF = {"$ref": "#/components/schemas/Filter"}
#: a filter in a JSON body: any JSON object, checked by the filter compiler, published as ``Filter``
FilterSpec = Annotated[dict[str, Any], Field(json_schema_extra=lambda s: (s.clear(), s.update(FILTER_REF)))]


def parse_filter_text(raw: str | None) -> dict[str, Any] | None:
    """A filter sent as JSON text (the upload form's ``filters``), or None when absent."""
    if not raw:
        return None
    _no_surrogates(raw)
    if _nesting(raw) > 2 * MAX_DEPTH + 2:  # json.loads would recurse as deep as the brackets go
        raise UserError(f"filters: nested deeper than {MAX_DEPTH} levels")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"filters: not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(parsed, dict):
        raise UserError("filters: must be a JSON object")
    return parsed


def _nesting(text: str) -> int:
    """How deep brackets nest in JSON text (outside strings)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


# requests ---------------------------------------------------------------------------------------------


class SortKeyIn(BaseModel):
    """One sort key: a field and its order."""

    model_config = ConfigDict(extra="forbid", strict=True)
    field: FieldName
    order: Literal["asc", "desc"] = "asc"


class SearchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    collection: CollectionName
    target: Target = "any"
    k: int = Field(default=12, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    filters: FilterSpec | None = None
    recall: float | None = Field(default=None, gt=0, le=1, description=RECALL_DOC)
    fusion: Fusion = Field(default="relevance", description=FUSION_DOC)
    mode: Mode | None = Field(default=None, description=MODE_DOC)
    min_relevance: float | None = Field(default=None, ge=-1000, le=1000, description=MIN_RELEVANCE_DOC)
    min_score: float | None = Field(default=None, ge=-1, le=1, description=MIN_SCORE_DOC)
    group_by: GroupBy | None = Field(default=None, description=GROUP_BY_DOC)
    group_weights: GroupWeights | None = None
    sort: list[SortKeyIn] | None = Field(default=None, min_length=1, max_length=MAX_SORT_KEYS, description=SORT_DOC)
    facets: list[FieldName] | None = Field(default=None, min_length=1, max_length=MAX_FACETS, description=FACETS_DOC)
    segments: int = Field(default=1, ge=1, le=MAX_SEGMENTS, description=SEGMENTS_DOC)


def parse_weights_text(raw: str | None) -> dict[str, Any] | None:
    """``group_weights`` sent as JSON text (a form or a query string), checked as a JSON body's would be."""
    if not raw:
        return None
    _no_surrogates(raw)
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"group_weights: not valid JSON ({exc.msg} at character {exc.pos})") from None
    try:
        return dict(TypeAdapter(GroupWeights).validate_python(parsed, strict=True))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = " ".join(str(p) for p in err["loc"] if p != "[key]")
        raise UserError(f"group_weights{' ' + where if where else ''}: {err['msg']}") from None


class Browse(SearchOptions):
    """No query: the items that match ``filters`` (a ``sort`` or ``facets`` alone browse them all), sorted by
    ``sort`` then by id."""

    text: None = Field(default=None, description="null or absent (a browse has no query)")
    item_id: None = Field(default=None, description="null or absent (a browse has no query)")


class ItemSearch(SearchOptions):
    """More like an indexed item (the item itself is left out)."""

    item_id: int = Field(ge=1, le=MAX_ID)
    text: None = Field(default=None, description="null or absent (a query is a text or an item)")


def _query_kind(body: Any) -> str:
    """Which query a body is: an item when it names one and no text, a browse when it has neither and says
    what to browse by (filters, sort or facets), else a text (null counts as absent)."""
    if isinstance(body, dict) and body.get("item_id") is not None and body.get("text") is None:
        return "item"
    if isinstance(body, dict) and body.get("text") is None and any(body.get(k) for k in ("filters", "sort", "facets")):
        return "browse"
    return "text"


def search_request(max_text: int) -> Any:
    """The body of ``POST /v1/search``: a text query of at most ``max_text`` characters, an item id, or no query
    and filters (a sort, facets) to browse by (a body with ``text`` is read as a text search, so its problems
    are reported as such)."""

    class TextSearch(SearchOptions):
        """A text query, embedded by each space's text tower."""

        text: Text = Field(min_length=1, max_length=max_text, pattern=r"\S")
        item_id: None = Field(default=None, description="null or absent (a query is a text or an item)")

    return Annotated[Annotated[TextSearch, Tag("text")] | Annotated[ItemSearch, Tag("item")]
                     | Annotated[Browse, Tag("browse")], Discriminator(_query_kind)]


# responses --------------------------------------------------------------------------------------------


class ResultOut(BaseModel):
    id: int
    uri: str | None  # as XMODAL_CLIENT_URIS says: absolute, relative to its source folder, or None
    modality: str
    score: float  # the raw inner product in its space
    relevance: float | None  # calibrated: comparable across spaces and modalities (None: not calibrated yet)
    space: str
    method: str
    rrf: float | None = None  # with fusion "rrf": the fused reciprocal-rank value the page is ordered by
    segment: dict[str, float] | None = None  # a windowed item's best-matching window (start_s, end_s, score, ...)
    segments: list[dict[str, float]] | None = Field(default=None, description="with segments > 1: a windowed "
                                                    "item's best windows, best first (the first is segment)")
    source: dict[str, str] | None = None  # a manifest item: the source's id and the media column
    lexical: float | None = None  # full-text score when its words matched (bm25 on SQLite, ts_rank on PostgreSQL;
    #                               None for a hybrid query's common words on SQLite: newest first, unscored)
    exact: bool = False  # the query equals its source id: first on the page
    metadata: dict[str, Any]
    media_url: str
    thumbnail_url: str | None


class ProductItemOut(BaseModel):
    id: int
    modality: str
    column: str | None  # the manifest's media column (None: a folder item)
    media_url: str
    thumbnail_url: str | None


class BestItemOut(ProductItemOut):
    score: float  # the raw inner product in its space (lexical: the full-text score)
    relevance: float | None
    space: str
    method: str
    segment: dict[str, float] | None = None  # a windowed item's best-matching window
    segments: list[dict[str, float]] | None = None  # with segments > 1: its best windows, best first
    lexical: float | None = None


class ProductOut(BaseModel):
    """One product (a manifest row; a folder item is one of its own) with ``group_by: "source"``."""

    source_id: str | None = Field(description="the row's own id (a SKU); null for a folder item")
    score: float = Field(description="the product's fused score, the page's order (see the response's group.fusion)")
    relevance: float | None = Field(description="its best item's calibrated relevance")
    exact: bool = Field(description="the query equals its source id: first on the page")
    columns: dict[str, float] = Field(description="each column's best item value among the candidates: the terms "
                                                  "that group_weights weigh")
    best: BestItemOut = Field(description="the item that matched best")
    items: list[ProductItemOut] = Field(description="every servable item of the row")
    metadata: dict[str, Any] = Field(description="the row's fields as the manifest gave them")
class FacetValue(BaseModel):
    value: bool | int | float | str
    count: int


class FacetOut(BaseModel):
    values: list[FacetValue] = Field(description=f"the {FACET_VALUES} most frequent values, most frequent first")
    other: int = Field(description="what the other values count together")


class SearchResponse(BaseModel):
    collection: str
    target: str
    k: int
    offset: int
    index_version: int
    mode: Literal["vector", "lexical", "hybrid", "browse"] = "vector"  # how the page was found (request's mode)
    routes: list[dict[str, str]] = []  # per target modality: the space searched and how scores came about
    fusion: str | None = None  # how lists of different spaces were merged, when they were
    ann: dict[str, dict[str, Any]] = {}  # per "space/part": index kind and the operating point used
    cutoff: dict[str, float] | None = None  # min_relevance / min_score asked for, and how many results it dropped
    no_good_match: bool = False  # a cutoff was asked for and nothing passed it
    group_by: GroupBy = "none"  # source: results are products (ProductOut); none: items (ResultOut)
    group: dict[str, Any] | None = None  # with source: the fusion used, item candidates considered, search rounds
    total: int = Field(description="how many results there are: exact (total_exact) when browsing and in lexical "
                                   "mode; for a vector or hybrid query those in its window (window) that pass the "
                                   "cutoff, an estimate when the window was full")
    total_exact: bool
    has_more: bool = Field(description="offset + k < total, or the total is an estimate")
    counted: Literal["matches", "window"] = Field(
        description="what total and facets count: every matching item, or the query's window")
    window: int | None = Field(description="a query's window: the best results by relevance (after the cutoff) the "
                                           "page, its sort, total and facets come from; null when browsing")
    sort: list[SortKeyIn] | None = None
    facets: dict[str, FacetOut] | None = None
    results: list[ResultOut] | list[ProductOut]
    timings_ms: dict[str, float]


class ItemOut(BaseModel):
    id: int
    collection: str
    uri: str | None
    modality: str
    metadata: dict[str, Any]
    content_hash: str | None
    size: int | None
    media_url: str
    thumbnail_url: str | None


class SourceItemOut(ItemOut):
    column: str | None = Field(description="the manifest's media column this item came from")


class SourceOut(BaseModel):
    """A manifest row (a product): its own id, its metadata, and one item per media column."""

    collection: str
    source_id: str
    metadata: dict[str, Any]
    items: list[SourceItemOut]


class CollectionOut(BaseModel):
    name: str
    items: dict[str, int]
    modalities: dict[str, int]
    metadata_fields: dict[str, str]
    index_version: int | None
    model: str | None


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class ReadyOut(BaseModel):
    status: Literal["ready", "loading", "failed"]
    collections: dict[str, int] | None = None
    message: str | None = None
