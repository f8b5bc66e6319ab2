"""Query-time side of the ANN indexes: recipes (what an index is and how to search it) and search.

Shared by the indexer (which builds and tunes) and the searcher (which only reads and queries), so
that ``search`` never imports ``indexer``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from xmodal.errors import UserError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]

CHECK_CHUNK = 100_000  # rows checked at a time: no full-size temporaries

RecipeKind = Literal["flat", "ivfpq"]

#: Recipe kinds keyed by name, with a one-line description each.
RECIPE_KINDS: dict[str, str] = {
    "flat": "exact inner-product search over all vectors (IndexFlatIP)",
    "ivfpq": "inverted file + product quantization (IndexIVFPQ), optionally re-ranked with exact vectors",
}


def recipe_kind(name: str) -> str:
    """Return the description of recipe kind ``name``; raise ``UserError`` listing valid names."""
    try:
        return RECIPE_KINDS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(RECIPE_KINDS))
        raise UserError(f"unknown index recipe kind {name!r}; valid kinds: {valid}") from None


@dataclass(frozen=True)
class IndexRecipe:
    """Parameters of one FAISS index. Only ``kind`` matters for ``flat``."""

    kind: RecipeKind
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    refine: bool = True
    nprobe: int = 1
    k_factor: int = 4

    def __post_init__(self) -> None:
        recipe_kind(self.kind)
        if self.kind == "ivfpq":
            problems = []
            if self.nlist < 1:
                problems.append(f"nlist={self.nlist} (must be >= 1)")
            if self.m < 1:
                problems.append(f"m={self.m} (must be >= 1)")
            if not 1 <= self.nbits <= 16:
                problems.append(f"nbits={self.nbits} (must be 1..16)")
            if not 1 <= self.nprobe <= max(1, self.nlist):
                problems.append(f"nprobe={self.nprobe} (must be 1..nlist)")
            if self.k_factor < 1:
                problems.append(f"k_factor={self.k_factor} (must be >= 1)")
            if problems:
                raise UserError("invalid ivfpq recipe: " + ", ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (for manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexRecipe:
        """Inverse of :meth:`to_dict`; unknown keys or kinds raise ``UserError``."""
        if not isinstance(data, dict) or "kind" not in data:
            raise UserError(f"index recipe must be a mapping with a 'kind' key, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown index recipe keys {unknown}; valid keys: {sorted(known)}")
        recipe_kind(data["kind"])
        return cls(**data)

    def describe(self) -> str:
        """Short human-readable summary."""
        if self.kind == "flat":
            return "flat (exact)"
        refine = f", refine x{self.k_factor}" if self.refine else ""
        return f"ivfpq nlist={self.nlist} m={self.m} nbits={self.nbits} nprobe={self.nprobe}{refine}"


def as_vectors(vectors: Any, *, name: str = "vectors") -> FloatArray:
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have dim >= 1, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    for start in range(0, out.shape[0], CHECK_CHUNK):  # chunked: no full-size temporaries
        finite = np.isfinite(out[start : start + CHECK_CHUNK]).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{name} contain NaN or inf (first at row {bad})")
    return out


def _unwrap(index: faiss.Index) -> tuple[Any, Any]:
    """Find the ``IndexRefine`` (or None) and ``IndexIVF`` (or None) inside ``index``."""
    refine = None
    ivf = None
    cur: Any = faiss.downcast_index(index)
    for _ in range(8):  # layouts are shallow; bound the walk
        if isinstance(cur, faiss.IndexIVF):
            ivf = cur
            break
        if isinstance(cur, faiss.IndexRefine):
            refine = cur
            cur = faiss.downcast_index(cur.base_index)
        elif isinstance(cur, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            cur = faiss.downcast_index(cur.index)
        else:
            break
    return refine, ivf


def set_search_params(index: faiss.Index, nprobe: int, k_factor: int) -> None:
    """Store ``nprobe`` on the inner IVF and ``k_factor`` on the refine wrapper (they persist on write).

    Indexes without IVF / refine layers are left as they are.
    """
    refine, ivf = _unwrap(index)
    if ivf is not None:
        ivf.nprobe = int(min(max(1, nprobe), ivf.nlist))
    if refine is not None:
        refine.k_factor = float(max(1, k_factor))


def _search_params(index: faiss.Index, recipe: IndexRecipe | None) -> tuple[Any, list[Any]]:
    """Per-call ``SearchParameters`` for ``recipe`` (thread-safe: the index is not mutated).

    Returns the params (or None) and the objects they point to, which must stay alive during search.
    """
    if recipe is None or recipe.kind == "flat":
        return None, []
    refine, ivf = _unwrap(index)
    keep: list[Any] = []
    params: Any = None
    if ivf is not None:
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(recipe.nprobe, ivf.nlist))
        keep.append(params)
    if refine is not None:
        outer: Any = faiss.IndexRefineSearchParameters()
        outer.k_factor = float(recipe.k_factor)
        outer.base_index_params = params
        params = outer
        keep.append(params)
    return params, keep


def search(
    index: faiss.Index, queries: np.ndarray, k: int, recipe: IndexRecipe | None = None
) -> tuple[FloatArray, IdArray]:
    """Top-``k`` search: ``(scores float32 (q, k), ids int64 (q, k))``.

    Missing results (``k`` > number of vectors, or too few candidates) have id -1 and score -inf.
    ``recipe`` supplies ``nprobe`` / ``k_factor`` for this call; without it the index's stored values apply.
    A 1-D query is treated as a single query.
    """
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    x = as_vectors(q, name="queries")
    if x.shape[1] != index.d:
        raise ValueError(f"queries have dim {x.shape[1]}, index has dim {index.d}")
    nq = x.shape[0]
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    ids = np.full((nq, k), -1, dtype=np.int64)
    k_eff = min(k, int(index.ntotal))
    if nq == 0 or k_eff == 0:
        return scores, ids
    params, _keep = _search_params(index, recipe)
    if params is None:
        d, i = index.search(x, k_eff)
    else:
        d, i = index.search(x, k_eff, params=params)
    scores[:, :k_eff] = d
    ids[:, :k_eff] = i
    scores[ids < 0] = -np.inf
    return scores, ids
