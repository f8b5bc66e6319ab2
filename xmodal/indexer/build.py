"""Build FAISS indexes from (vector, id) arrays, tune them by measurement, and search them.

Vectors are L2-normalised float32 embeddings; similarity is the inner product. Every index keeps the
caller's int64 ids (``IndexIDMap2`` outermost), so search returns ids, never row numbers.

Index layouts:

* ``flat``:  ``IndexIDMap2(IndexFlatIP)``
* ``ivfpq``: ``IndexIDMap2(IndexRefineFlat(IndexIVFPQ(IndexFlatIP quantizer, METRIC_INNER_PRODUCT)))``,
  or ``IndexIDMap2(IndexIVFPQ)`` when ``recipe.refine`` is off.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from xmodal.indexer.recipe import RECIPE_KINDS, IndexRecipe, recipe_kind
from xmodal.storage.ann import as_vectors, search, set_search_params

logger = logging.getLogger(__name__)

ADD_CHUNK = 100_000
TRAIN_CAP = 200_000
TRAIN_PER_LIST = 40  # k-means points per inverted list: FAISS asks for 39 to 256; training dominates builds
PROBE_QUERIES = 200
RECALL_K = 10
MAX_K_FACTOR = 64
PLATEAU_GAIN = 0.01  # recall@10 gained by doubling nprobe below which k_factor is raised instead

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


@dataclass
class BuiltIndex:
    """A built index, the recipe it was built with (nprobe tuned) and build statistics."""

    index: faiss.Index
    recipe: IndexRecipe
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _norm_range(x: FloatArray) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for start in range(0, x.shape[0], ADD_CHUNK):
        chunk = x[start : start + ADD_CHUNK]
        sq = np.einsum("ij,ij->i", chunk, chunk)
        lo, hi = min(lo, float(sq.min())), max(hi, float(sq.max()))
    return float(np.sqrt(lo)), float(np.sqrt(hi))


def _validate(vectors: Any, ids: Any) -> tuple[FloatArray, IdArray]:
    x = as_vectors(vectors)
    n = x.shape[0]
    if n < 1:
        raise ValueError("cannot build an index from 0 vectors")
    id_arr = np.asarray(ids)
    if id_arr.ndim != 1 or id_arr.shape[0] != n:
        raise ValueError(f"ids must be 1-D with one id per vector ({n}), got shape {id_arr.shape}")
    if not np.issubdtype(id_arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {id_arr.dtype}")
    if id_arr.dtype == np.uint64 and n and int(id_arr.max()) > np.iinfo(np.int64).max:
        raise ValueError("ids must fit in int64")
    id64 = np.ascontiguousarray(id_arr, dtype=np.int64)
    if (id64 < 0).any():
        raise ValueError(f"ids must be >= 0 (-1 marks a missing result), got {int(id64[id64 < 0][0])}")
    uniq, counts = np.unique(id64, return_counts=True)
    if uniq.shape[0] != n:
        raise ValueError(f"ids must be unique; duplicate id {int(uniq[counts > 1][0])}")
    lo, hi = _norm_range(x)
    if lo < 0.99 or hi > 1.01:
        logger.warning(
            "vectors are not L2-normalised (norms in [%.3g, %.3g]); inner product != cosine", lo, hi
        )
    return x, id64


# --------------------------------------------------------------------------- GPU (optional)


def _gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU. Tests monkeypatch this."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - defensive, faiss builds differ
        return False


def _gpu_clustering_index(dim: int) -> tuple[faiss.Index, Any]:
    """A GPU ``IndexFlatIP`` for IVF k-means, and the GPU resources that must outlive it."""
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, 0, faiss.IndexFlatIP(dim)), res


# --------------------------------------------------------------------------- builders


def _add_chunks(index: faiss.Index, x: FloatArray, ids: IdArray, progress: bool) -> None:
    n = x.shape[0]
    with tqdm(total=n, disable=not progress, unit="vec", desc="adding vectors") as bar:
        for start in range(0, n, ADD_CHUNK):
            stop = min(n, start + ADD_CHUNK)
            index.add_with_ids(x[start:stop], ids[start:stop])
            bar.update(stop - start)


def _build_flat(
    x: FloatArray, ids: IdArray, recipe: IndexRecipe, seed: int, progress: bool
) -> tuple[faiss.Index, dict[str, Any]]:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    _add_chunks(index, x, ids, progress)
    return index, {"device": "cpu", "train_points": 0}


def _train_sample(x: FloatArray, nlist: int, seed: int) -> FloatArray:
    n = x.shape[0]
    want = max(256 * 39, TRAIN_PER_LIST * nlist)
    size = min(n, max(min(want, TRAIN_CAP), 39 * nlist))
    if size >= n:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(x[rows])


def _build_ivfpq(
    x: FloatArray, ids: IdArray, recipe: IndexRecipe, seed: int, progress: bool
) -> tuple[faiss.Index, dict[str, Any]]:
    n, dim = x.shape
    if dim % recipe.m:
        raise ValueError(f"PQ m={recipe.m} must divide the vector dimension {dim}")
    if n < recipe.nlist:
        raise ValueError(f"ivfpq needs at least nlist={recipe.nlist} vectors to train, got {n}")
    small = n < 39 * recipe.nlist or n < 39 * (1 << recipe.nbits)
    if small:
        logger.info(
            "only %d vectors to train nlist=%d / nbits=%d; quality may suffer", n, recipe.nlist, recipe.nbits
        )
    quantizer = faiss.IndexFlatIP(dim)
    ivf: Any = faiss.IndexIVFPQ(
        quantizer, dim, recipe.nlist, recipe.m, recipe.nbits, faiss.METRIC_INNER_PRODUCT
    )
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    if small:  # said once above; keep FAISS from printing the same warning to stderr per sub-quantizer
        ivf.cp.min_points_per_centroid = 1
        ivf.pq.cp.min_points_per_centroid = 1
    sample = _train_sample(x, recipe.nlist, seed)

    device = "cpu"
    gpu_keep: tuple[Any, ...] = ()
    if _gpu_available():
        # Coarse k-means (the expensive part of training) on GPU; the trained index stays on CPU.
        try:
            gpu_keep = _gpu_clustering_index(dim)
            ivf.clustering_index = gpu_keep[0]
            device = "gpu"
        except Exception as exc:  # GPU present but unusable: fall back, say so
            logger.warning("GPU training unavailable (%s); training on CPU", exc)
    t0 = time.perf_counter()
    try:
        ivf.train(sample)
    finally:
        if device == "gpu":
            ivf.clustering_index = None
        del gpu_keep
    logger.info(
        "trained %s on %d points (%s) in %.1fs",
        recipe.describe(),
        sample.shape[0],
        device,
        time.perf_counter() - t0,
    )

    inner = faiss.IndexRefineFlat(ivf) if recipe.refine else ivf
    index = faiss.IndexIDMap2(inner)
    _add_chunks(index, x, ids, progress)
    set_search_params(index, recipe.nprobe, recipe.k_factor)
    return index, {"device": device, "train_points": int(sample.shape[0])}


_BUILDERS: dict[
    str, Callable[[FloatArray, IdArray, IndexRecipe, int, bool], tuple[faiss.Index, dict[str, Any]]]
] = {
    "flat": _build_flat,
    "ivfpq": _build_ivfpq,
}
assert set(_BUILDERS) == set(RECIPE_KINDS), "every recipe kind needs a builder"


# --------------------------------------------------------------------------- tuning


def _recall(found: IdArray, truth: IdArray, self_ids: IdArray, k: int) -> tuple[float, float]:
    """recall@1 and recall@k of ``found`` against ``truth``, ignoring each probe's own id."""
    r1 = 0.0
    rk = 0.0
    for row_found, row_truth, own in zip(found, truth, self_ids, strict=True):
        f = row_found[(row_found != own) & (row_found >= 0)][:k]
        t = row_truth[row_truth != own][:k]
        if t.shape[0] == 0:
            r1 += 1.0
            rk += 1.0
            continue
        r1 += float(f.shape[0] > 0 and f[0] == t[0])
        rk += len(np.intersect1d(f, t, assume_unique=True)) / t.shape[0]
    nq = found.shape[0]
    return r1 / nq, rk / nq


def _tune(
    index: faiss.Index, x: FloatArray, ids: IdArray, recipe: IndexRecipe, recall_target: float, seed: int
) -> tuple[IndexRecipe, dict[str, Any]]:
    """Find a cheap ``(nprobe, k_factor)`` whose recall@10 on probe queries meets ``recall_target``.

    ``nprobe`` doubles from ``recipe.nprobe`` up to ``nlist``. With refinement, the exact re-ranking
    only sees ``k * k_factor`` PQ candidates, which often caps recall whatever ``nprobe`` is; so when a
    doubling of ``nprobe`` gains (almost) nothing, ``k_factor`` doubles instead (up to
    ``MAX_K_FACTOR``). Once the target is met, ``nprobe`` is halved back while recall holds, but never
    below ``recipe.nprobe``.
    If the target is never met, ``nprobe = nlist`` (and the largest ``k_factor`` tried) is used and
    ``target_met`` is False.

    Probes are vectors of the collection; their own id is left out of both the exact and the
    approximate lists, so recall measures the neighbours, not finding the probe itself.
    """
    n = x.shape[0]
    nq = min(PROBE_QUERIES, n)
    rows = np.sort(np.random.default_rng(seed + 1).choice(n, size=nq, replace=False))
    probes = np.ascontiguousarray(x[rows])
    kk = min(RECALL_K + 1, n)
    _, truth_pos = faiss.knn(probes, x, kk, metric=faiss.METRIC_INNER_PRODUCT)
    truth = ids[truth_pos]
    own = ids[rows]

    trials: list[dict[str, Any]] = []
    measured: dict[tuple[int, int], dict[str, Any]] = {}

    def measure(nprobe: int, k_factor: int) -> dict[str, Any]:
        key = (nprobe, k_factor)
        if key not in measured:
            trial = dataclasses.replace(recipe, nprobe=nprobe, k_factor=k_factor)
            _, found = search(index, probes, kk, trial)
            r1, r10 = _recall(found, truth, own, RECALL_K)
            measured[key] = {"nprobe": nprobe, "k_factor": k_factor, "recall@1": r1, "recall@10": r10}
            trials.append(measured[key])
            logger.debug("nprobe=%d k_factor=%d recall@1=%.3f recall@10=%.3f", nprobe, k_factor, r1, r10)
        return measured[key]

    max_k_factor = max(MAX_K_FACTOR, recipe.k_factor) if recipe.refine else recipe.k_factor
    nprobe, k_factor = min(recipe.nprobe, recipe.nlist), recipe.k_factor
    current = measure(nprobe, k_factor)
    nprobe_gain: float | None = None  # recall@10 gained by the last doubling of nprobe
    while current["recall@10"] < recall_target:
        previous = current
        can_probe = nprobe < recipe.nlist
        can_refine = k_factor < max_k_factor
        if can_probe and (nprobe_gain is None or nprobe_gain >= PLATEAU_GAIN or not can_refine):
            nprobe = min(2 * nprobe, recipe.nlist)
            current = measure(nprobe, k_factor)
            nprobe_gain = current["recall@10"] - previous["recall@10"]
        elif can_refine:
            k_factor = min(2 * k_factor, max_k_factor)
            current = measure(nprobe, k_factor)
            if current["recall@10"] - previous["recall@10"] < PLATEAU_GAIN:
                nprobe_gain = None  # candidates are not the limit: look at nprobe again
        else:
            break

    target_met = current["recall@10"] >= recall_target
    if target_met:
        floor = min(recipe.nprobe, recipe.nlist)  # the recipe's nprobe is a floor: real queries
        while nprobe > floor:  # (other modality) sit farther from the lists than these probes
            smaller = measure(max(floor, nprobe // 2), k_factor)
            if smaller["recall@10"] < recall_target:
                break
            nprobe, current = smaller["nprobe"], smaller
    else:
        logger.warning(
            "recall@10 target %.3f not met even at nprobe=nlist=%d, k_factor=%d (got %.3f)",
            recall_target,
            recipe.nlist,
            k_factor,
            current["recall@10"],
        )
    tuned = dataclasses.replace(recipe, nprobe=nprobe, k_factor=k_factor)
    stats = {
        "recall@1": current["recall@1"],
        "recall@10": current["recall@10"],
        "probe_queries": nq,
        "nprobe": tuned.nprobe,
        "k_factor": tuned.k_factor,
        "target_met": target_met,
        "tuning": trials,
    }
    return tuned, stats


def _bytes_per_vector(recipe: IndexRecipe, dim: int) -> int:
    """Rough RAM per vector: codes + stored ids (+ exact copy when refining)."""
    if recipe.kind == "flat":
        return 4 * dim + 8
    code = (recipe.m * recipe.nbits + 7) // 8
    return code + 8 + 8 + (4 * dim if recipe.refine else 0)


# --------------------------------------------------------------------------- entry point


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    recipe: IndexRecipe,
    *,
    recall_target: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> BuiltIndex:
    """Build the index ``recipe`` describes over ``vectors`` (one per id), tuned to ``recall_target``.

    Raises ``ValueError`` for bad input (shape, NaN/inf, duplicate or negative ids, empty input).
    """
    recipe_kind(recipe.kind)
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    t0 = time.perf_counter()
    x, id64 = _validate(vectors, ids)
    n, dim = x.shape
    index, info = _BUILDERS[recipe.kind](x, id64, recipe, seed, progress)

    stats: dict[str, Any] = {"n": n, "dim": dim, **info}
    if recipe.kind == "flat":
        stats.update({"recall@1": 1.0, "recall@10": 1.0, "probe_queries": 0, "target_met": True})
    else:
        recipe, tuning = _tune(index, x, id64, recipe, recall_target, seed)
        set_search_params(index, recipe.nprobe, recipe.k_factor)
        stats.update(tuning)
    stats["recall_target"] = recall_target
    stats["bytes_per_vector"] = _bytes_per_vector(recipe, dim)
    stats["build_s"] = round(time.perf_counter() - t0, 3)
    logger.info(
        "built %s over %d x %d in %.1fs (recall@10=%.3f, %s)",
        recipe.describe(),
        n,
        dim,
        stats["build_s"],
        stats["recall@10"],
        stats["device"],
    )
    return BuiltIndex(index=index, recipe=recipe, stats=stats)
