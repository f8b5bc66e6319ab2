"""Query-time side of the ANN indexes: recipes (what an index is), parts (an index with its re-rank
store and measured operating points) and search.

Shared by the indexer (which builds and tunes) and the searcher (which only reads and queries), so
that ``search`` never imports ``indexer``.

Layouts (ids are the catalog's int64 item ids everywhere; search returns ids, never row numbers):

* ``flat``:  ``IndexIDMap2(IndexFlatIP)``: exact.
* ``ivfpq``: ``IndexIVFPQ`` (inner product, ids kept in the inverted lists), behind
  ``IndexPreTransform(OPQMatrix)`` when OPQ paid at build time. The top ``k * k_factor`` PQ candidates
  are re-ranked by their exact vectors from a :class:`RerankStore` (float32, id-sorted rows, held in
  RAM or memory-mapped from the version folder), so recall@1 is close to exact while RAM holds only
  the codes (``m`` bytes at 8 bits) and ids (8 bytes) per vector.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from xmodal.errors import UserError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]

CHECK_CHUNK = 100_000  # rows checked at a time: no full-size temporaries
MIN_RERANK_K = 16  # a re-ranked search fetches at least this many times k_factor PQ candidates

RecipeKind = Literal["flat", "ivfpq"]
RerankMode = Literal["none", "ram", "mmap"]
RERANK_MODES = ("none", "ram", "mmap")

#: Recipe kinds keyed by name, with a one-line description each.
RECIPE_KINDS: dict[str, str] = {
    "flat": "exact inner-product search over all vectors (IndexFlatIP)",
    "ivfpq": "inverted file + product quantization (IndexIVFPQ, OPQ where it pays), re-ranked with exact vectors",
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
    """Parameters of one FAISS index. Only ``kind`` matters for ``flat``.

    ``opq``: None means "decide at build time by measurement"; a built recipe says True or False.
    ``rerank``: where the exact vectors for re-ranking live (``none``: no re-ranking).
    """

    kind: RecipeKind
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    opq: bool | None = None
    rerank: RerankMode = "mmap"
    nprobe: int = 1
    k_factor: int = 4
    ondisk: bool = False  # inverted lists (the codes) in an .ivfdata file beside the index, memory-mapped

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
            if self.rerank not in RERANK_MODES:
                problems.append(f"rerank={self.rerank!r} (must be one of {', '.join(RERANK_MODES)})")
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

    @property
    def reranked(self) -> bool:
        return self.kind == "ivfpq" and self.rerank != "none"

    def describe(self) -> str:
        """Short human-readable summary."""
        if self.kind == "flat":
            return "flat (exact)"
        opq = "opq+" if self.opq else ""
        rerank = f", rerank x{self.k_factor} ({self.rerank})" if self.reranked else ""
        ondisk = ", lists on disk" if self.ondisk else ""
        return f"{opq}ivfpq nlist={self.nlist} m={self.m} nbits={self.nbits} nprobe={self.nprobe}{rerank}{ondisk}"


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


def ivf_of(index: faiss.Index) -> Any:
    """The ``IndexIVF`` inside ``index`` (through a pre-transform or id map), or None."""
    cur: Any = faiss.downcast_index(index)
    for _ in range(4):  # layouts are shallow; bound the walk
        if isinstance(cur, faiss.IndexIVF):
            return cur
        if isinstance(cur, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            cur = faiss.downcast_index(cur.index)
        else:
            return None
    return None


# --------------------------------------------------------------------------- re-rank store


@dataclass
class RerankStore:
    """Exact vectors by id: ``ids`` sorted ascending, ``vectors[i]`` the vector of ``ids[i]``.

    ``vectors`` may be an ``np.memmap`` (only the rows a query touches are read) or an array in RAM.
    """

    ids: IdArray
    vectors: FloatArray

    @classmethod
    def from_unsorted(cls, ids: IdArray, vectors: FloatArray) -> RerankStore:
        order = np.argsort(ids, kind="stable")
        if np.array_equal(order, np.arange(order.shape[0])):
            return cls(np.ascontiguousarray(ids, dtype=np.int64), vectors)
        return cls(np.ascontiguousarray(ids[order], dtype=np.int64), np.ascontiguousarray(vectors[order]))

    @property
    def mapped(self) -> bool:
        return isinstance(self.vectors, np.memmap)

    def rows(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Row of each id, -1 where the store does not hold it."""
        want = np.asarray(ids, dtype=np.int64)
        n = self.ids.shape[0]
        if n == 0:
            return np.full(want.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, want), n - 1)
        return np.where(self.ids[pos] == want, pos, -1).astype(np.int64)

    def vector(self, item_id: int) -> FloatArray | None:
        row = int(self.rows([item_id])[0])
        return None if row < 0 else np.asarray(self.vectors[row], dtype=np.float32)

    def rerank(self, queries: FloatArray, candidates: IdArray, k: int) -> tuple[FloatArray, IdArray]:
        """Exact inner products of each query with its candidate ids; the best ``k`` (-1 / -inf pad)."""
        nq, kk = candidates.shape
        rows = self.rows(candidates.ravel()).reshape(nq, kk)
        valid = (candidates >= 0) & (rows >= 0)
        flat = rows[valid]
        # read the touched rows in file order (memory-mapped: sequential-ish page faults), then scatter
        order = np.argsort(flat, kind="stable")
        gathered = np.empty((flat.shape[0], self.vectors.shape[1]), dtype=np.float32)
        gathered[order] = self.vectors[flat[order]]
        scores = np.full((nq, kk), -np.inf, dtype=np.float32)
        qidx = np.nonzero(valid)[0]
        scores[valid] = np.einsum("ij,ij->i", gathered, queries[qidx])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(scores, top, axis=1)
        out_ids = np.take_along_axis(np.where(valid, candidates, -1), top, axis=1)
        out_ids[~np.isfinite(out_scores)] = -1
        return out_scores, out_ids

    def nbytes(self) -> int:
        return int(self.ids.nbytes) + int(self.vectors.shape[0]) * int(self.vectors.shape[1]) * 4


# --------------------------------------------------------------------------- parts


def _point_cost(point: dict[str, Any]) -> tuple[int, int, float]:
    """Work of an operating point: lists probed times re-rank depth, then lists, then measured ms. Not
    ms first: timings of a few hundred probes are noisy, and a request for less recall must never get
    a point that does more work."""
    return (int(point["nprobe"]) * int(point["k_factor"]), int(point["nprobe"]), float(point.get("ms") or 0.0))


@dataclass
class AnnPart:
    """One searchable index part: the FAISS index, how it was built, its re-rank store and the
    operating points measured at build time (``{nprobe, k_factor, recall@1, recall@10, ms}``)."""

    index: faiss.Index
    recipe: IndexRecipe
    store: RerankStore | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    trained_n: int = 0  # vectors the IVF-PQ part was trained for (growth adds to it without retraining)
    _resident: int | None = None
    _flat_ids: IdArray | None = None  # a flat part's ids, sorted (search_among)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    def resident_bytes(self) -> int:
        """Bytes the FAISS structure holds in RAM (its serialised size: codes, ids, centroids, rotation;
        with on-disk lists only the list directory, the codes being memory-mapped), plus the re-rank
        store when the recipe holds it in RAM (a memory-mapped one is paged by the OS)."""
        if self._resident is None:
            self._resident = int(faiss.serialize_index(self.index).nbytes)
        extra = self.store.nbytes() if self.store is not None and self.recipe.rerank == "ram" else 0
        return self._resident + extra

    def store_bytes(self) -> int:
        return self.store.nbytes() if self.store is not None else 0

    def ivfdata(self) -> str | None:
        """The file holding this part's inverted lists when they are on disk."""
        ivf = ivf_of(self.index)
        if ivf is None:
            return None
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        return str(lists.filename) if isinstance(lists, faiss.OnDiskInvertedLists) else None

    def point_for(self, recall: float) -> dict[str, Any] | None:
        """The cheapest measured operating point with recall@10 >= ``recall`` (the most accurate one
        when none reaches it); None for exact indexes or when nothing was measured."""
        if self.recipe.kind == "flat" or not self.points:
            return None
        ok = [p for p in self.points if p["recall@10"] >= recall]
        if ok:
            return min(ok, key=_point_cost)
        return max(self.points, key=lambda p: (p["recall@10"], -_point_cost(p)[0]))

    def vector(self, item_id: int) -> FloatArray | None:
        """The exact vector this part holds for ``item_id`` (None when it holds none)."""
        if self.store is not None:
            return self.store.vector(item_id)
        if self.recipe.kind == "flat":
            try:
                return np.asarray(self.index.reconstruct(int(item_id)), dtype=np.float32)
            except RuntimeError:
                return None
        return None

    def search(self, queries: Any, k: int, *, nprobe: int | None = None, k_factor: int | None = None,
               recall: float | None = None, exclude: Any = None,
               among: IdSet | None = None) -> tuple[FloatArray, IdArray]:
        """Top-``k``: ``(scores float32 (q, k), ids int64 (q, k))``, -inf / -1 where missing.

        The operating point is the tuned one, or the measured point for ``recall`` (see
        :meth:`point_for`), or explicit ``nprobe`` / ``k_factor``. ``exclude``: ids never returned
        (deleted since the build), filtered inside FAISS so that ``k`` live results still come back.
        ``among``: only these ids are returned (a filter's matches), also chosen inside FAISS.
        A 1-D query is treated as a single query.
        """
        if k <= 0:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        x = as_vectors(q, name="queries")
        if x.shape[1] != self.d:
            raise ValueError(f"queries have dim {x.shape[1]}, index has dim {self.d}")
        nq = x.shape[0]
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or self.ntotal == 0:
            return scores, ids
        point = self.point_for(recall) if recall is not None else None
        nprobe = nprobe or (point["nprobe"] if point else self.recipe.nprobe)
        k_factor = k_factor or (point["k_factor"] if point else self.recipe.k_factor)
        rerank = self.recipe.reranked and self.store is not None
        # the depth tuning measured (k >= 10) is the least a re-ranked search looks at, also for k=1
        fetch = min(self.ntotal, max(k, MIN_RERANK_K) * k_factor if rerank else k)
        params, _keep = _params(self.index, nprobe, exclude, among)
        d, i = self.index.search(x, fetch, params=params) if params is not None else self.index.search(x, fetch)
        if rerank:
            assert self.store is not None
            d, i = self.store.rerank(x, i, min(k, fetch))
        width = min(k, d.shape[1])
        scores[:, :width] = d[:, :width]
        ids[:, :width] = i[:, :width]
        scores[ids < 0] = -np.inf
        return scores, ids


    def search_among(self, queries: Any, k: int, among: IdSet, *, exclude: Any = None) -> tuple[FloatArray, IdArray]:
        """Exact top-``k`` over just the ids of ``among`` (less ``exclude``): their exact vectors read from
        the re-rank store (memory-mapped: only those rows) or a flat index. An approximate part without a
        store answers by probing every list with the id set as the selector."""
        q = as_vectors(np.asarray(queries).reshape(-1, self.d), name="queries")
        ids = among.ids
        if exclude is not None and len(exclude) and self.store is None:
            ids = ids[~np.isin(ids, np.asarray(exclude, dtype=np.int64))]
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        out = np.full((q.shape[0], k), -1, dtype=np.int64)
        if self.store is not None:
            ids, rows = among.rows_in(self.store)  # in file order: sequential reads of the memory map
            if exclude is not None and len(exclude):
                kept = ~np.isin(ids, np.asarray(exclude, dtype=np.int64))
                ids, rows = ids[kept], rows[kept]
            vectors = np.asarray(self.store.vectors[rows], dtype=np.float32)
        elif self.recipe.kind == "flat":
            if self._flat_ids is None:
                mapped: Any = faiss.downcast_index(self.index)  # IndexIDMap2: the ids it holds
                self._flat_ids = np.sort(faiss.vector_to_array(mapped.id_map))
            ids = ids[np.isin(ids, self._flat_ids, assume_unique=True)]
            vectors = self.index.reconstruct_batch(ids) if ids.shape[0] else np.empty((0, self.d), np.float32)
        else:
            ivf = ivf_of(self.index)
            return self.search(q, k, nprobe=int(ivf.nlist) if ivf is not None else None, exclude=exclude, among=among)
        if not ids.shape[0]:
            return scores, out
        all_scores = q @ np.asarray(vectors, dtype=np.float32).T  # (nq, m)
        width = min(k, ids.shape[0])
        for n in range(q.shape[0]):
            top = np.argpartition(-all_scores[n], width - 1)[:width] if width < ids.shape[0] else np.arange(width)
            top = top[np.argsort(-all_scores[n][top], kind="stable")]
            scores[n, :width] = all_scores[n][top]
            out[n, :width] = ids[top]
        return scores, out


@dataclass
class IdSet:
    """A set of item ids a search is restricted to (sorted, unique), with the FAISS selector built once:
    a bitmap over ids (one bit per id up to the largest) where that stays small, else a hashed batch."""

    ids: IdArray
    _bitmap: npt.NDArray[np.uint8] | None = None
    _rows: tuple[weakref.ref[RerankStore], IdArray, IdArray] | None = None

    MAX_BITMAP_BYTES = 64 << 20

    @classmethod
    def of(cls, ids: npt.ArrayLike) -> IdSet:
        return cls(np.unique(np.asarray(ids, dtype=np.int64)))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows_in(self, store: RerankStore) -> tuple[IdArray, IdArray]:
        """The ids ``store`` holds (one added after its build has no row) and their rows, in row order,
        found once per store: a filter's matches are searched again and again (a shop's category page),
        and finding 5,000 rows among a million ids costs as much as reading their vectors."""
        cached = self._rows
        if cached is not None and cached[0]() is store:
            return cached[1], cached[2]
        rows = store.rows(self.ids)
        held = rows >= 0
        order = np.argsort(rows[held], kind="stable")
        ids, rows = self.ids[held][order], rows[held][order]
        self._rows = (weakref.ref(store), ids, rows)
        return ids, rows

    def selector(self) -> tuple[Any, list[Any]]:
        """The FAISS selector (and what must stay alive while it is used)."""
        ids = self.ids
        top = int(ids[-1]) if ids.shape[0] else 0
        if ids.shape[0] and int(ids[0]) >= 0 and top // 8 + 1 <= self.MAX_BITMAP_BYTES:
            if self._bitmap is None:
                bits = np.zeros(top + 1, dtype=bool)
                bits[ids] = True
                self._bitmap = np.packbits(bits, bitorder="little")
            sel = faiss.IDSelectorBitmap(self._bitmap.shape[0], faiss.swig_ptr(self._bitmap))
            return sel, [self._bitmap, sel]
        batch = faiss.IDSelectorBatch(ids.shape[0], faiss.swig_ptr(ids))
        return batch, [ids, batch]


def _params(index: faiss.Index, nprobe: int, exclude: Any, among: IdSet | None = None) -> tuple[Any, list[Any]]:
    """Per-call ``SearchParameters`` (thread-safe: the index is not mutated): ``nprobe`` and an id
    selector that keeps only ``among`` (when given) and leaves out ``exclude``. Returns the params (or
    None) and what must stay alive."""
    keep: list[Any] = []
    sel: Any = None
    excluded = np.unique(np.asarray(exclude if exclude is not None else [], dtype=np.int64))
    if excluded.shape[0]:
        batch = faiss.IDSelectorBatch(excluded.shape[0], faiss.swig_ptr(excluded))
        sel = faiss.IDSelectorNot(batch)
        keep += [excluded, batch, sel]
    if among is not None:
        only, held = among.selector()
        keep += held
        sel = only if sel is None else faiss.IDSelectorAnd(only, sel)
        keep.append(sel)
    ivf = ivf_of(index)
    if ivf is not None:
        params: Any = faiss.SearchParametersIVF()
        params.nprobe = int(min(max(1, nprobe), ivf.nlist))
    elif sel is not None:
        params = faiss.SearchParameters()
    else:
        return None, keep
    if sel is not None:
        params.sel = sel
    keep.append(params)
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        outer: Any = faiss.SearchParametersPreTransform()
        outer.index_params = params
        keep.append(outer)
        params = outer
    return params, keep
