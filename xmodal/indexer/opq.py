"""OPQ where it pays: the parametric rotation of Ge et al. (CVPR 2013), in closed form, kept for an IVF-PQ
part when it measurably lowers the PQ reconstruction error (FAISS's iterative ``OPQMatrix.train`` gives
the same gain on our data and costs minutes at 512-d)."""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from xmodal.indexer.recipe import IndexRecipe

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
OPQ_SAMPLE = 10_000  # rows used to decide whether OPQ pays
OPQ_GAIN = 0.05  # OPQ is kept when it lowers the PQ reconstruction error by at least this fraction


def _pq_error(train: FloatArray, held: FloatArray, m: int, nbits: int, seed: int) -> float:
    pq: Any = faiss.ProductQuantizer(train.shape[1], m, nbits)
    pq.cp.seed = seed
    pq.cp.min_points_per_centroid = 1  # small samples: no FAISS warning per sub-quantizer
    pq.train(train)
    decoded = pq.decode(pq.compute_codes(held))
    return float(((held - decoded) ** 2).sum(axis=1).mean())


def _logdet(cov: npt.NDArray[np.float64]) -> float:
    sign, value = np.linalg.slogdet(cov)
    return float(value) if sign > 0 else -np.inf


def opq_rotation(sample: FloatArray, m: int) -> tuple[npt.NDArray[np.float32], float]:
    """Parametric OPQ (Ge et al., CVPR 2013): rotate onto the principal axes and deal them out to
    the ``m`` sub-spaces so that each holds the same product of variances (eigenvalue allocation).

    Returns the rotation (rows: output axes) and the distortion it saves under the paper's Gaussian
    model, ``1 - D_opq / D_pq`` with ``D = sum over sub-spaces of det(cov)^(1/dsub)``.
    """
    dim = sample.shape[1]
    dsub = dim // m
    cov = np.cov(np.asarray(sample, dtype=np.float64), rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    floor = max(float(values.max()), 1e-30) * 1e-9
    logs = np.log(np.maximum(values[order], floor))
    logs -= logs.mean()  # centred: the greedy compares sums of different lengths
    buckets: list[list[int]] = [[] for _ in range(m)]
    sums = np.zeros(m)
    for pos in range(dim):  # largest first, into the open bucket with the smallest log-product
        open_ = [j for j in range(m) if len(buckets[j]) < dsub]
        j = min(open_, key=lambda b: sums[b])
        buckets[j].append(int(order[pos]))
        sums[j] += logs[pos]
    rotation = np.concatenate([vectors[:, b].T for b in buckets]).astype(np.float32)
    blocks = [cov[j * dsub:(j + 1) * dsub, j * dsub:(j + 1) * dsub] for j in range(m)]
    d_pq = float(sum(np.exp(_logdet(b) / dsub) for b in blocks))
    d_opq = float(np.exp((sums + dsub * np.log(np.maximum(values[order], floor)).mean()) / dsub).sum())
    gain = 1.0 - d_opq / d_pq if d_pq > 0 and np.isfinite(d_pq) else 0.0
    return rotation, gain


def decide_opq(sample: FloatArray, recipe: IndexRecipe, seed: int) -> tuple[Any, dict[str, Any]]:
    """OPQ where it pays: the parametric rotation when the Gaussian model predicts that it saves at
    least ``OPQ_GAIN`` of the PQ distortion and a PQ trained on part of ``sample`` confirms it on
    the rest. Returns a FAISS ``OPQMatrix`` holding that rotation (or None) and what was measured."""
    n, dim = sample.shape
    if recipe.opq is False or recipe.m >= dim:
        return None, {"opq": False, "opq_reason": "off" if recipe.opq is False else "m == dim"}
    t0 = time.perf_counter()
    rows = np.random.default_rng(seed + 2).permutation(n)[: min(n, OPQ_SAMPLE)]
    part = np.ascontiguousarray(sample[rows])
    rotation, predicted = opq_rotation(part, recipe.m)
    info: dict[str, Any] = {"opq_predicted_gain": round(predicted, 4)}
    gain = predicted
    if predicted >= OPQ_GAIN or recipe.opq is True:
        cut = max(1, int(part.shape[0] * 0.8))
        train, held = part[:cut], (part[cut:] if cut < part.shape[0] else part)
        plain = _pq_error(train, held, recipe.m, recipe.nbits, seed)
        rotated = _pq_error(np.ascontiguousarray(train @ rotation.T), np.ascontiguousarray(held @ rotation.T),
                            recipe.m, recipe.nbits, seed)
        gain = 1.0 - rotated / plain if plain > 0 else 0.0
        info["opq_measured_gain"] = round(gain, 4)
    keep = recipe.opq is True or (predicted >= OPQ_GAIN and gain >= OPQ_GAIN)
    info.update({"opq": keep, "opq_s": round(time.perf_counter() - t0, 3)})
    logger.info("OPQ: predicted gain %.1f%%, measured %s: %s", 100 * predicted,
                f"{100 * gain:.1f}%" if "opq_measured_gain" in info else "-", "kept" if keep else "not used")
    if not keep:
        return None, info
    opq = faiss.OPQMatrix(dim, recipe.m)
    faiss.copy_array_to_vector(rotation.ravel(), opq.A)
    opq.is_orthonormal = True
    opq.is_trained = True
    return opq, info
