"""Build FAISS index parts from (vector, id) arrays, tune them by measurement, grow them.

Vectors are L2-normalised float32 embeddings; similarity is the inner product. Every part keeps the
caller's int64 ids, so search returns ids, never row numbers. Layouts: see :mod:`xmodal.storage.ann`.

An IVF-PQ build:

1. trains on a seeded sample (coarse k-means on the GPU when faiss-gpu sees one), behind an OPQ
   rotation where it pays: the parametric OPQ rotation (closed form: principal axes dealt out to
   the sub-spaces), kept when it lowers the PQ reconstruction error of a held-out slice of the
   sample by at least ``OPQ_GAIN`` (FAISS's iterative ``OPQMatrix.train`` costs minutes at 512-d);
2. adds the vectors in chunks, ids kept in the inverted lists; the coarse assignment (the bulk of
   an add) runs on the GPU when there is one, the codes are written on the CPU (see ``_Adder``);
3. keeps the exact vectors, sorted by id, as the re-rank store;
4. tunes: probe queries (sampled from the collection, plus any the caller gives, e.g. vectors of
   the space's other modality) get exact top-10 lists (on the GPU when there is one); ``nprobe``
   and the re-rank depth ``k_factor`` go up until recall@10 meets the target, then ``nprobe`` comes
   back down while it holds. Every measured point is kept (recall@1, recall@10, ms per query), so a
   request can ask for another recall/speed point.

Growth: given the previous part (trained, with its store), the build removes the ids that are gone
or whose vector changed and adds the new ones, without retraining, then re-measures on fresh probes.
It retrains when the recall@10 at the previous tuned point falls below the target by more than
``RETRAIN_SLACK`` (less than that is probe noise: re-tuning absorbs it) or when no point meets the
target; the caller passes no previous part when the recipe no longer suits the size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from xmodal.indexer.opq import decide_opq, opq_rotation  # noqa: F401 - opq_rotation re-exported
from xmodal.indexer.recipe import IndexRecipe, recipe_kind, shape_changes
from xmodal.storage.ann import AnnPart, RerankStore, as_vectors, ivf_of

logger = logging.getLogger(__name__)

ADD_CHUNK = 100_000
TRAIN_CAP = 200_000
TRAIN_PER_LIST = 40  # k-means points per inverted list: FAISS asks for 39 to 256; training dominates builds
PROBE_QUERIES = 200
RECALL_K = 10
MAX_K_FACTOR = 64
PLATEAU_GAIN = 0.01  # recall@10 gained by doubling nprobe below which k_factor is raised instead
LATENCY_QUERIES = 50
RETRAIN_SLACK = 0.02  # a grown index whose recall at its tuned point falls further below the target retrains

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


@dataclass
class BuiltIndex:
    """A built part (FAISS index, recipe with the tuned point, re-rank store) and build statistics."""

    part: AnnPart
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> faiss.Index:
        return self.part.index

    @property
    def recipe(self) -> IndexRecipe:
        return self.part.recipe


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


def _gpu_assigner(quantizer: faiss.Index) -> tuple[faiss.Index, Any]:
    """A GPU copy of an IVF quantizer (the centroids) for coarse assignment, and its GPU resources."""
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, 0, quantizer), res


def _gpu_knn(queries: FloatArray, x: FloatArray, k: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Exact inner-product top-``k`` on the GPU (brute force, the data streamed from RAM)."""
    res = faiss.StandardGpuResources()
    return faiss.knn_gpu(res, queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)


def exact_knn(queries: FloatArray, x: FloatArray, k: int) -> tuple[npt.NDArray[np.int64], str]:
    """Row numbers of the exact top-``k`` of each query in ``x``, and the device that computed them."""
    if _gpu_available():
        try:
            return _gpu_knn(queries, x, k)[1], "gpu"
        except Exception as exc:  # GPU present but unusable: fall back, say so
            logger.warning("GPU exact search unavailable (%s); searching on CPU", exc)
    return faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1], "cpu"


# --------------------------------------------------------------------------- builders


def _chunked(x: FloatArray, ids: IdArray, progress: bool, desc: str) -> Iterator[tuple[FloatArray, IdArray]]:
    """``(vectors, ids)`` in contiguous chunks of ``ADD_CHUNK`` rows, with a progress bar."""
    n = x.shape[0]
    with tqdm(total=n, disable=not progress or n == 0, unit="vec", desc=desc) as bar:
        for start in range(0, n, ADD_CHUNK):
            stop = min(n, start + ADD_CHUNK)
            yield np.ascontiguousarray(x[start:stop]), np.ascontiguousarray(ids[start:stop])
            bar.update(stop - start)


class _Adder:
    """Adds vectors to an IVF index with the coarse assignment (each vector's nearest centroid: the
    bulk of an IVF-PQ add, n x nlist x dim) done by ``assigner``: a GPU copy of the centroids when
    faiss-gpu sees a GPU, else the index's own CPU quantizer. The codes are then written on the CPU
    (``add_core``), into RAM or on-disk lists alike, so the index is the same either way."""

    def __init__(self, index: faiss.Index) -> None:
        self.ivf = ivf_of(index)
        self.device = "cpu"
        self.assigner: Any = None
        self._keep: tuple[Any, ...] = ()
        if self.ivf is None:
            return
        self.assigner = self.ivf.quantizer
        if _gpu_available():
            try:
                self._keep = _gpu_assigner(self.ivf.quantizer)
                self.assigner = self._keep[0]
                self.device = "gpu"
            except Exception as exc:  # GPU present but unusable: fall back, say so
                logger.warning("GPU add unavailable (%s); assigning on CPU", exc)

    def add(self, index: faiss.Index, xs: FloatArray, ids: IdArray) -> None:
        """Add to ``index`` (this adder's index or a clone of it: same centroids)."""
        ivf = ivf_of(index)
        if ivf is None or self.assigner is None:
            index.add_with_ids(xs, ids)
            return
        outer = faiss.downcast_index(index)
        if isinstance(outer, faiss.IndexPreTransform):  # OPQ: rotate first, as the index's own add would
            chain: Any = outer.chain
            for i in range(chain.size()):
                xs = np.ascontiguousarray(faiss.downcast_VectorTransform(chain.at(i)).apply(xs), dtype=np.float32)
        _, assign = self.assigner.search(xs, 1)
        assign = np.ascontiguousarray(assign.ravel(), dtype=np.int64)
        ivf.add_core(xs.shape[0], faiss.swig_ptr(xs), faiss.swig_ptr(ids), faiss.swig_ptr(assign))
        index.ntotal = ivf.ntotal

    def close(self) -> None:
        self.assigner = None
        self._keep = ()


def _add_chunks(index: faiss.Index, x: FloatArray, ids: IdArray, progress: bool, desc: str = "adding vectors",
                adder: _Adder | None = None) -> str:
    """Add in chunks; returns the device that assigned them."""
    own = adder is None
    adder = adder or _Adder(index)
    try:
        for xs, chunk_ids in _chunked(x, ids, progress, desc):
            adder.add(index, xs, chunk_ids)
        return adder.device
    finally:
        if own:
            adder.close()


def _add_ondisk(index: faiss.Index, x: FloatArray, ids: IdArray, folder: Path, progress: bool) -> str:
    """Fill a trained, empty IVF index chunk by chunk into on-disk inverted lists (``lists.ivfdata`` in
    ``folder``): each chunk goes into a copy of the empty index written to disk, and FAISS's
    ``merge_ondisk`` merges them, so that neither the vectors nor the codes are ever all in RAM."""
    from faiss.contrib.ondisk import merge_ondisk

    folder.mkdir(parents=True, exist_ok=True)
    chunks: list[str] = []
    adder = _Adder(index)
    try:
        for xs, chunk_ids in _chunked(x, ids, progress, "adding vectors (on disk)"):
            piece = faiss.clone_index(index)
            adder.add(piece, xs, chunk_ids)
            chunk = folder / f"chunk-{len(chunks):05d}.index"
            faiss.write_index(piece, str(chunk))
            chunks.append(str(chunk))
            del piece
    finally:
        adder.close()
    merge_ondisk(index, chunks, str(folder / "lists.ivfdata"))
    for name in chunks:
        Path(name).unlink()
    return adder.device


def _build_flat(x: FloatArray, ids: IdArray, progress: bool) -> tuple[AnnPart, dict[str, Any]]:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    _add_chunks(index, x, ids, progress)
    return AnnPart(index, IndexRecipe(kind="flat")), {"device": "cpu", "train_points": 0}


def _train_sample(x: FloatArray, nlist: int, seed: int) -> FloatArray:
    n = x.shape[0]
    want = max(256 * 39, TRAIN_PER_LIST * nlist)
    size = min(n, max(min(want, TRAIN_CAP), 39 * nlist))
    if size >= n:
        return np.ascontiguousarray(x)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(x[rows])


def _train_ivfpq(x: FloatArray, recipe: IndexRecipe, seed: int) -> tuple[faiss.Index, IndexRecipe, dict[str, Any]]:
    """An empty trained IVF-PQ index (behind OPQ when it pays) and the recipe with ``opq`` decided."""
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
    sample = _train_sample(x, recipe.nlist, seed)
    opq, info = decide_opq(sample, recipe, seed)

    quantizer = faiss.IndexFlatIP(dim)
    ivf: Any = faiss.IndexIVFPQ(quantizer, dim, recipe.nlist, recipe.m, recipe.nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    if small:  # said once above; keep FAISS from printing the same warning to stderr per sub-quantizer
        ivf.cp.min_points_per_centroid = 1
        ivf.pq.cp.min_points_per_centroid = 1
    index: Any = ivf
    if opq is not None:
        index = faiss.IndexPreTransform(opq, ivf)
        index.own_fields = True
        ivf.this.disown()  # owned by the pre-transform now
        opq.this.disown()
        sample = opq.apply(sample)

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
        ivf.train(sample)  # OPQ is trained already; the sample is rotated
    finally:
        if device == "gpu":
            ivf.clustering_index = None
        del gpu_keep
    index.is_trained = True  # a pre-transform only learns this from its own train(); its parts are trained
    decided = dataclasses.replace(recipe, opq=opq is not None)
    logger.info("trained %s on %d points (%s) in %.1fs", decided.describe(), sample.shape[0], device,
                time.perf_counter() - t0)
    return index, decided, {**info, "device": device, "train_points": int(sample.shape[0])}


def _store(x: FloatArray, ids: IdArray, recipe: IndexRecipe, store_dir: Path | None) -> RerankStore | None:
    """The exact vectors by id, in RAM, or written under ``store_dir`` and memory-mapped from there."""
    if not recipe.reranked:
        return None
    store = RerankStore.from_unsorted(ids, x)
    if store_dir is None:
        return store
    store_dir.mkdir(parents=True, exist_ok=True)
    np.save(store_dir / "ids.npy", store.ids)
    np.save(store_dir / "vectors.npy", store.vectors)
    return RerankStore(store.ids, np.load(store_dir / "vectors.npy", mmap_mode="r"))


def _changed_rows(previous: RerankStore, x: FloatArray, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True where the previous store holds the id (``rows`` >= 0, from ``previous.rows``) with a
    different vector (content changed)."""
    changed = np.zeros(rows.shape[0], dtype=bool)
    for start in range(0, rows.shape[0], ADD_CHUNK):
        r = rows[start : start + ADD_CHUNK]
        held = r >= 0
        if held.any():
            old = np.asarray(previous.vectors[r[held]], dtype=np.float32)
            diff = np.abs(old - x[start : start + ADD_CHUNK][held]).max(axis=1) > 1e-6
            sub = np.zeros(r.shape[0], dtype=bool)
            sub[np.flatnonzero(held)[diff]] = True
            changed[start : start + ADD_CHUNK] = sub
    return changed


def _grow(previous: AnnPart, x: FloatArray, ids: IdArray, progress: bool) -> tuple[faiss.Index, dict[str, Any]]:
    """The previous trained index with the gone and changed ids removed and the new ones added."""
    assert previous.store is not None
    index = faiss.clone_index(previous.index)
    gone = np.setdiff1d(previous.store.ids, ids, assume_unique=True)
    rows = previous.store.rows(ids)
    changed = _changed_rows(previous.store, x, rows)
    new = (rows < 0) | changed
    drop = np.concatenate([gone, ids[changed]]).astype(np.int64)
    if drop.shape[0]:
        index.remove_ids(faiss.IDSelectorBatch(drop.shape[0], faiss.swig_ptr(drop)))
    device = _add_chunks(index, x[new], ids[new], progress, desc="adding new vectors")
    info = {"removed": int(gone.shape[0]), "changed": int(changed.sum()), "appended": int(new.sum()),
            "retrained": False, "add_device": device}
    logger.info("grew the trained index: %d removed, %d changed, %d added", gone.shape[0], changed.sum(),
                new.sum() - changed.sum())
    return index, info


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


def _probes(x: FloatArray, ids: IdArray, extra: FloatArray | None, seed: int) -> tuple[FloatArray, IdArray]:
    """Probe queries: vectors sampled from the collection (their own id is left out of the lists) and,
    when given, up to half from ``extra`` (queries of another modality: own id -1)."""
    n = x.shape[0]
    rng = np.random.default_rng(seed + 1)
    n_extra = 0 if extra is None else min(extra.shape[0], PROBE_QUERIES // 2)
    nq = min(PROBE_QUERIES - n_extra, n)
    rows = np.sort(rng.choice(n, size=nq, replace=False))
    probes = [x[rows]]
    own = [ids[rows]]
    if extra is not None and n_extra:
        pick = np.sort(rng.choice(extra.shape[0], size=n_extra, replace=False))
        probes.append(as_vectors(extra, name="probe queries")[pick])
        own.append(np.full(n_extra, -1, dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(probes), dtype=np.float32), np.concatenate(own)


def _tune(part: AnnPart, x: FloatArray, ids: IdArray, recall_target: float, seed: int,
          extra: FloatArray | None, floor: int) -> tuple[IndexRecipe, dict[str, Any]]:
    """Find a cheap ``(nprobe, k_factor)`` whose recall@10 on probe queries meets ``recall_target``.

    ``nprobe`` doubles from ``floor`` up to ``nlist``. With re-ranking, only ``k * k_factor`` PQ
    candidates reach the exact scores, which often caps recall whatever ``nprobe`` is; so when a
    doubling of ``nprobe`` gains (almost) nothing, ``k_factor`` doubles instead (up to
    ``MAX_K_FACTOR``). Once the target is met, ``nprobe`` is halved back while recall holds, but never
    below ``floor``. If the target is never met, ``nprobe = nlist`` (and the largest ``k_factor``
    tried) is used and ``target_met`` is False. A few points around the chosen one are measured too,
    for requests that ask for more speed or more recall.
    """
    recipe = part.recipe
    probes, own = _probes(x, ids, extra, seed)
    kk = min(RECALL_K + 1, x.shape[0])
    truth_pos, truth_device = exact_knn(probes, x, kk)
    truth = np.where(truth_pos >= 0, ids[np.maximum(truth_pos, 0)], -1)

    measured: dict[tuple[int, int], dict[str, Any]] = {}

    def measure(nprobe: int, k_factor: int) -> dict[str, Any]:
        key = (nprobe, k_factor)
        if key not in measured:
            times = []
            for _ in range(2):  # the faster of two: the first may pay for cold pages of the re-rank store
                t0 = time.perf_counter()
                _, found = part.search(probes, kk, nprobe=nprobe, k_factor=k_factor)
                times.append(time.perf_counter() - t0)
            ms = min(times) * 1000 / probes.shape[0]
            r1, r10 = _recall(found, truth, own, RECALL_K)
            measured[key] = {"nprobe": nprobe, "k_factor": k_factor, "recall@1": round(r1, 4),
                             "recall@10": round(r10, 4), "ms": round(ms, 4)}
            logger.debug("nprobe=%d k_factor=%d recall@1=%.3f recall@10=%.3f", nprobe, k_factor, r1, r10)
        return measured[key]

    max_k_factor = max(MAX_K_FACTOR, recipe.k_factor) if recipe.reranked else recipe.k_factor
    floor = min(max(1, floor), recipe.nlist)
    nprobe, k_factor = max(floor, min(recipe.nprobe, recipe.nlist)), recipe.k_factor
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
        while nprobe > floor:
            smaller = measure(max(floor, nprobe // 2), k_factor)
            if smaller["recall@10"] < recall_target:
                break
            nprobe, current = smaller["nprobe"], smaller
    else:
        logger.warning("recall@10 target %.3f not met even at nprobe=nlist=%d, k_factor=%d (got %.3f)",
                       recall_target, recipe.nlist, k_factor, current["recall@10"])
    # neighbours of the chosen point, for per-request recall/speed choices
    for np_, kf in ((nprobe // 4, k_factor), (nprobe // 2, k_factor), (2 * nprobe, k_factor),
                    (4 * nprobe, min(2 * k_factor, max_k_factor))):
        if 1 <= np_ <= recipe.nlist:
            measure(np_, kf)
    tuned = dataclasses.replace(recipe, nprobe=nprobe, k_factor=k_factor)
    stats = {
        "recall@1": current["recall@1"],
        "recall@10": current["recall@10"],
        "probe_queries": int(probes.shape[0]),
        "probe_queries_other_modality": int((own == -1).sum()),
        "nprobe": tuned.nprobe,
        "k_factor": tuned.k_factor,
        "target_met": target_met,
        "truth_device": truth_device,
        "points": sorted(measured.values(), key=lambda p: (p["nprobe"], p["k_factor"])),
    }
    return tuned, stats


def _latency_ms(part: AnnPart, x: FloatArray, seed: int) -> float:
    """Median wall time of single-vector searches (k=10) at the part's tuned point, in ms."""
    rows = np.random.default_rng(seed + 3).choice(x.shape[0], size=min(LATENCY_QUERIES, x.shape[0]), replace=False)
    times = []
    for row in rows:
        q = np.ascontiguousarray(x[row : row + 1])
        t0 = time.perf_counter()
        part.search(q, RECALL_K)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 4)


# --------------------------------------------------------------------------- entry point


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    recipe: IndexRecipe,
    *,
    recall_target: float = 0.95,
    seed: int = 0,
    progress: bool = False,
    store_dir: Path | None = None,
    probes: np.ndarray | None = None,
    previous: AnnPart | None = None,
    lists_dir: Path | None = None,
) -> BuiltIndex:
    """Build the index part ``recipe`` describes over ``vectors`` (one per id), tuned to ``recall_target``.

    ``store_dir``: write the re-rank store there and memory-map it (else it stays in RAM); on-disk
    inverted lists (``recipe.ondisk``) go to ``lists_dir`` (else ``store_dir``), as ``lists.ivfdata``.
    ``probes``: extra tuning queries (another modality's vectors of the same space).
    ``previous``: a trained part of the same kind, grown instead of retrained when it still meets the
    target (the caller decides whether its recipe still suits the size: pass None to retrain).
    Raises ``ValueError`` for bad input (shape, NaN/inf, duplicate or negative ids, empty input).
    """
    recipe_kind(recipe.kind)
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    t0 = time.perf_counter()
    x, id64 = _validate(vectors, ids)
    n, dim = x.shape
    stats: dict[str, Any] = {"n": n, "dim": dim}
    if recipe.kind == "flat":
        part, info = _build_flat(x, id64, progress)
        stats.update(info)
        stats.update({"recall@1": 1.0, "recall@10": 1.0, "probe_queries": 0, "target_met": True, "points": []})
    else:
        grown = None
        if previous is not None and _can_grow(previous, recipe, dim):
            index, info = _grow(previous, x, id64, progress)
            trained = dataclasses.replace(previous.recipe, rerank=recipe.rerank)
            grown = AnnPart(index, trained, _store(x, id64, trained, store_dir))
            tuned, tuning = _tune(grown, x, id64, recall_target, seed, probes, recipe.nprobe)
            old = (max(min(recipe.nprobe, trained.nlist), trained.nprobe), trained.k_factor)
            at_old = next(p["recall@10"] for p in tuning["points"] if (p["nprobe"], p["k_factor"]) == old)
            if tuning["target_met"] and at_old >= recall_target - RETRAIN_SLACK:
                stats.update({**info, **tuning, "device": "cpu", "train_points": 0,
                              "trained_n": previous.trained_n or previous.ntotal,
                              "opq": bool(trained.opq)})
                grown.recipe = tuned
            else:
                logger.info("after growing, probe recall@10 at the tuned point is %.3f (target %.3f): retraining",
                            at_old, recall_target)
                stats["retrain_reason"] = (f"probe recall@10 {at_old} at the tuned point (nprobe {old[0]}, "
                                           f"k_factor {old[1]}) < target {recall_target} after adding without "
                                           "retraining")
                grown = None
        if grown is None:
            index, trained, info = _train_ivfpq(x, recipe, seed)
            if recipe.ondisk:
                folder = lists_dir or store_dir
                if folder is None:
                    raise ValueError("a recipe with on-disk lists needs lists_dir (where the lists go)")
                info["add_device"] = _add_ondisk(index, x, id64, folder, progress)
            else:
                info["add_device"] = _add_chunks(index, x, id64, progress)
            part = AnnPart(index, trained, _store(x, id64, trained, store_dir))
            tuned, tuning = _tune(part, x, id64, recall_target, seed, probes, recipe.nprobe)
            part.recipe = tuned
            stats.update({**info, **tuning, "trained_n": n, "retrained": previous is not None})
        else:
            part = grown
        part.points = stats["points"]
        part.trained_n = int(stats["trained_n"])
        stats["latency_ms"] = _latency_ms(part, x, seed)
    stats["recall_target"] = recall_target
    stats["bytes_per_vector"] = round(part.resident_bytes() / n, 2)
    stats["store_bytes_per_vector"] = round(part.store_bytes() / n, 2)
    stats["build_s"] = round(time.perf_counter() - t0, 3)
    logger.info("built %s over %d x %d in %.1fs (recall@10=%.3f, %s)", part.recipe.describe(), n, dim,
                stats["build_s"], stats["recall@10"], stats["device"])
    return BuiltIndex(part=part, stats=stats)


def _can_grow(previous: AnnPart, recipe: IndexRecipe, dim: int) -> bool:
    """A previous part can take new vectors when it is a trained IVF-PQ part of the same shape, with
    its exact vectors (to see which ids changed)."""
    p = previous.recipe
    return (p.kind == "ivfpq" and previous.store is not None and previous.d == dim and ivf_of(previous.index) is not None
            and not shape_changes(p, recipe)  # the same test `xmodal stats` uses to say a retrain is due
            and not p.ondisk and not recipe.ondisk)  # on-disk lists are rebuilt, not grown in place
