"""What a search returns, and how lists of different targets become one page.

Every result carries its raw ``score`` (the inner product in its space), its calibrated ``relevance``
(``storage.calibration``: comparable across spaces, modality pairs and collection sizes), and the
``space`` and ``method`` that produced the score. Lists merge by relevance (``fusion: "relevance"``, the
default); ``fusion: "rrf"`` merges by reciprocal rank instead, each result's fused value in ``rrf``.
A cutoff (``min_relevance``, or ``min_score`` on raw scores for callers that tuned one) drops what falls
below it; a page emptied by it says so (``no_good_match``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RRF_K = 60  # reciprocal rank fusion: a result's value is the sum over lists of 1 / (RRF_K + rank)
FUSIONS = ("relevance", "rrf")
VECTOR, LEXICAL, HYBRID = "vector", "lexical", "hybrid"
MODES = (VECTOR, LEXICAL, HYBRID)  # how a search finds its results (search.lexical)
GROUPS = ("source", "none")  # one result per product (manifest row), or per item (search.products)
SORT_WINDOW = 1000  # the best results by relevance a query's sort and facets consider (search.browse)


@dataclass
class SearchResult:
    id: int
    uri: str
    modality: str
    score: float  # the raw inner product in ``space``
    metadata: dict[str, Any]
    space: str
    method: str  # "ip", "aligned-ip" (one side mapped through an alignment), "lexical" or "hybrid" (both lists)
    relevance: float | None = None  # calibrated; None for an index version built before calibration
    rrf: float | None = None  # with fusion "rrf": the fused reciprocal-rank value the page is ordered by
    segment: dict[str, float] | None = None  # a windowed item's best-matching window
    segments: list[dict[str, float]] | None = None  # on request: its best windows, best first (search.segments)
    source: dict[str, str] | None = None  # a manifest item: {"id": the source's key, "column": its media column}
    lexical: float | None = None  # its full-text score (bm25 on SQLite, ts_rank on PostgreSQL), when words matched
    exact: bool = False  # the query equals its source id (a SKU): first on the page

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "uri": self.uri, "modality": self.modality, "score": round(self.score, 6),
               "relevance": self.relevance, "metadata": self.metadata, "space": self.space, "method": self.method}
        if self.rrf is not None:
            out["rrf"] = round(self.rrf, 6)
        if self.segment is not None:
            out["segment"] = self.segment
        if self.segments is not None:
            out["segments"] = self.segments
        if self.source is not None:
            out["source"] = self.source
        if self.lexical is not None:
            out["lexical"] = round(self.lexical, 6)
        if self.exact:
            out["exact"] = True
        return out


@dataclass
class Timings:
    encode_ms: float = 0.0
    ann_ms: float = 0.0
    sql_ms: float = 0.0


@dataclass
class SearchOutcome:
    results: list[SearchResult]
    timings: Timings
    version: int  # the index version that answered (the primary space's)
    versions: dict[str, int] = field(default_factory=dict)  # the version of each space the query searched
    routes: list[dict[str, Any]] = field(default_factory=list)  # how each target modality was searched
    fusion: str | None = None  # how lists of different targets were merged, when they were
    ann: dict[str, dict[str, Any]] = field(default_factory=dict)  # "space/part" -> the operating point used
    cutoff: dict[str, Any] | None = None  # the cutoff asked for, and how many results it dropped
    no_good_match: bool = False  # a cutoff was asked for and nothing passed it
    mode: str = "vector"  # vector | lexical | hybrid (see search.lexical), or browse (search.browse)
    considered: int = 0  # how many results the page was cut from (the window, after the cutoff)
    window: int = 0  # how many the search looked for: k + offset, or the sort window (search.browse)


@dataclass(frozen=True)
class Cutoff:
    min_relevance: float | None = None
    min_score: float | None = None

    def __bool__(self) -> bool:
        return self.min_relevance is not None or self.min_score is not None

    def passes(self, r: SearchResult) -> bool:
        if self.min_score is not None and r.score < self.min_score:
            return False
        return self.min_relevance is None or (r.relevance is not None and r.relevance >= self.min_relevance)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("min_relevance", self.min_relevance), ("min_score", self.min_score))
                if v is not None}


def by_relevance(lists: list[list[SearchResult]]) -> list[SearchResult]:
    """One page from several lists, best relevance first (raw score, then id, break ties)."""
    merged = [r for results in lists for r in results]
    return sorted(merged, key=lambda r: (-(r.relevance if r.relevance is not None else float("-inf")), -r.score, r.id))


def by_rank(lists: list[list[SearchResult]]) -> list[SearchResult]:
    """Reciprocal rank fusion: each list ranked by its own order, the ranks summed (``rrf``)."""
    fused: dict[int, SearchResult] = {}
    for results in lists:
        for rank, r in enumerate(results, 1):
            value = 1.0 / (RRF_K + rank)
            if r.id in fused:
                fused[r.id].rrf = (fused[r.id].rrf or 0.0) + value
            else:
                r.rrf = value
                fused[r.id] = r
    return sorted(fused.values(), key=lambda r: (-(r.rrf or 0.0), r.id))
