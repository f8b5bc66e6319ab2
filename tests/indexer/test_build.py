"""Building, tuning and searching FAISS indexes on seeded synthetic embeddings."""

from __future__ import annotations

import dataclasses
from typing import Any

import faiss
import numpy as np
import pytest

from xmodal.indexer import build as build_mod
from xmodal.indexer.build import BuiltIndex, build_index, search, set_search_params
from xmodal.indexer.recipe import IndexRecipe, choose_recipe

DIM = 64


def mixture(n: int, *, dim: int = DIM, centers: int = 50, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``centers`` random directions: clustered, like real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(
        dim
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def noisy_copies(x: np.ndarray, nq: int, *, noise: float = 0.15, seed: int = 1) -> np.ndarray:
    """Queries near data points but not equal to them."""
    rng = np.random.default_rng(seed)
    q = x[rng.choice(x.shape[0], nq, replace=False)]
    q = q + noise * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(x.shape[1])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


def make_ids(n: int, seed: int = 2) -> np.ndarray:
    """Sparse, shuffled, non-contiguous ids, so row numbers can't pass for ids."""
    rng = np.random.default_rng(seed)
    return rng.choice(10**12, size=n, replace=False).astype(np.int64)


def inner(index: Any) -> Any:
    """The index wrapped by an IndexIDMap2, downcast to its concrete class."""
    return faiss.downcast_index(index.index)


def exact_ids(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    _, pos = faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids[pos]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = mixture(4000)
    return x, make_ids(x.shape[0])


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray]) -> BuiltIndex:
    x, ids = data
    recipe = choose_recipe(x.shape[0], DIM, exact_threshold=1000)
    assert recipe.kind == "ivfpq"
    return build_index(x, ids, recipe, recall_target=0.95, seed=0)


def test_ivfpq_layout_and_ids(built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    assert isinstance(built.index, faiss.IndexIDMap2)
    assert built.index.ntotal == x.shape[0]
    assert isinstance(inner(built.index), faiss.IndexRefineFlat)
    _, found = search(built.index, x[:50], 1, built.recipe)
    assert set(found[:, 0].tolist()) <= set(ids.tolist())
    # with refine, a stored vector finds itself
    assert (found[:, 0] == ids[:50]).mean() >= 0.98


def test_ivfpq_agrees_with_exact_on_heldout_queries(
    built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, ids = data
    q = noisy_copies(x, 300)
    truth = exact_ids(x, ids, q, 1)[:, 0]
    scores, found = search(built.index, q, 10, built.recipe)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert scores.shape == found.shape == (300, 10)
    assert (found[:, 0] == truth).mean() >= 0.90
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores sorted descending"


def test_tuning_meets_target_and_reports(built: BuiltIndex) -> None:
    s = built.stats
    assert s["target_met"] is True
    assert s["recall@10"] >= 0.95
    assert 0.0 <= s["recall@1"] <= 1.0
    assert s["probe_queries"] == 200
    assert s["n"] == 4000 and s["dim"] == DIM
    assert s["device"] == "cpu"
    assert s["nprobe"] == built.recipe.nprobe
    assert s["build_s"] >= 0 and s["bytes_per_vector"] > 0
    assert s["k_factor"] == built.recipe.k_factor >= 4
    chosen = [t for t in s["tuning"] if (t["nprobe"], t["k_factor"]) == (s["nprobe"], s["k_factor"])]
    assert len(chosen) == 1 and chosen[0]["recall@10"] == s["recall@10"]
    assert built.recipe.nprobe >= choose_recipe(4000, DIM, exact_threshold=1000).nprobe
    # tuned value is stored on the index too (persists through write_index)
    assert faiss.extract_index_ivf(built.index).nprobe == built.recipe.nprobe
    assert inner(built.index).k_factor == built.recipe.k_factor


def test_unreachable_target_uses_nlist(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    # no refine and 4-bit codes with 2 sub-quantizers: recall@10 can't reach 1.0
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=2, nbits=4, refine=False, nprobe=1)
    b = build_index(x, ids, recipe, recall_target=1.0)
    assert b.stats["target_met"] is False
    assert b.recipe.nprobe == 16
    assert isinstance(inner(b.index), faiss.IndexIVFPQ)


def test_search_params_from_recipe(built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    q = noisy_copies(x, 200, seed=5)
    truth = exact_ids(x, ids, q, 10)

    def recall(recipe: IndexRecipe | None) -> float:
        _, found = search(built.index, q, 10, recipe)
        return float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)]))

    stored = faiss.extract_index_ivf(built.index).nprobe
    cheap = recall(dataclasses.replace(built.recipe, nprobe=1, k_factor=1))
    full = recall(dataclasses.replace(built.recipe, nprobe=built.recipe.nlist, k_factor=64))
    assert full > cheap
    assert full >= 0.95
    # per-call params leave the index's stored values alone
    assert faiss.extract_index_ivf(built.index).nprobe == stored
    # set_search_params changes the stored values, which search() without a recipe then uses
    set_search_params(built.index, 1, 1)
    try:
        assert faiss.extract_index_ivf(built.index).nprobe == 1
        assert recall(None) == cheap
    finally:
        set_search_params(built.index, built.recipe.nprobe, built.recipe.k_factor)


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    x, ids = x[:800], ids[:800]
    b = build_index(x, ids, IndexRecipe(kind="flat"))
    assert b.stats["recall@10"] == 1.0 and b.stats["recall@1"] == 1.0
    assert b.stats["device"] == "cpu"
    q = noisy_copies(x, 50)
    scores, found = search(b.index, q, 10)
    truth = exact_ids(x, ids, q, 10)
    assert np.array_equal(found, truth)
    exp = np.sort(q @ x.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, exp, rtol=1e-5, atol=1e-5)


def test_k_larger_than_ntotal_pads(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    b = build_index(x[:5], ids[:5], IndexRecipe(kind="flat"))
    scores, found = search(b.index, x[0], 8)
    assert found.shape == (1, 8) and scores.shape == (1, 8)
    assert set(found[0, :5].tolist()) == set(ids[:5].tolist())
    assert (found[0, 5:] == -1).all()
    assert np.isneginf(scores[0, 5:]).all()
    assert found[0, 0] == ids[0]


def test_k_larger_than_ntotal_ivfpq(built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    _, found = search(built.index, x[:2], 5000, built.recipe)
    assert found.shape == (2, 5000)
    assert (found[:, 4000:] == -1).all()


def test_search_rejects_bad_k_and_dim(built: BuiltIndex) -> None:
    q = np.zeros((1, DIM), dtype=np.float32)
    with pytest.raises(ValueError):
        search(built.index, q, 0)
    with pytest.raises(ValueError):
        search(built.index, np.zeros((1, DIM + 1), dtype=np.float32), 3)


def test_validation_errors(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    x, ids = x[:100], ids[:100]
    flat = IndexRecipe(kind="flat")
    dup = ids.copy()
    dup[7] = dup[3]
    with pytest.raises(ValueError, match=str(int(ids[3]))):
        build_index(x, dup, flat)
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_index(bad, ids, flat)
    bad[5, 2] = np.inf
    with pytest.raises(ValueError, match="inf"):
        build_index(bad, ids, flat)
    with pytest.raises(ValueError, match="2-D"):
        build_index(x[0], ids[:1], flat)
    with pytest.raises(ValueError, match="one id per vector"):
        build_index(x, ids[:-1], flat)
    with pytest.raises(ValueError, match="one id per vector"):
        build_index(x, ids.reshape(10, 10), flat)
    with pytest.raises(ValueError, match="0 vectors"):
        build_index(x[:0], ids[:0], flat)
    with pytest.raises(ValueError, match="integers"):
        build_index(x, ids.astype(np.float64), flat)
    neg = ids.copy()
    neg[0] = -1
    with pytest.raises(ValueError, match=">= 0"):
        build_index(x, neg, flat)
    with pytest.raises(ValueError, match="divide"):
        build_index(x, ids, IndexRecipe(kind="ivfpq", nlist=2, m=5, nbits=4))


def test_dtype_and_layout_converted(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    x64 = np.asfortranarray(x[:200].astype(np.float64))
    b = build_index(x64, ids[:200], IndexRecipe(kind="flat"))
    _, found = search(b.index, x[:3].astype(np.float64), 1)
    assert found[:, 0].tolist() == ids[:3].tolist()
    # ids of a narrower integer type are widened
    small = np.arange(200, dtype=np.int32)
    b = build_index(x[:200], small, IndexRecipe(kind="flat"))
    _, found = search(b.index, x[:3], 1)
    assert found.dtype == np.int64 and found[:, 0].tolist() == [0, 1, 2]


def test_gpu_forced_off_records_cpu(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, ids = data
    monkeypatch.setattr(build_mod, "_gpu_available", lambda: False)
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=1)
    b = build_index(x[:2000], ids[:2000], recipe)
    assert b.stats["device"] == "cpu"


def test_gpu_branch_plumbing_with_cpu_stand_in(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """The GPU branch hands k-means a clustering index; a CPU stand-in exercises that path here."""
    x, ids = data
    calls: list[int] = []

    def fake(dim: int) -> tuple[faiss.Index, object]:
        calls.append(dim)
        return faiss.IndexFlatIP(dim), object()

    monkeypatch.setattr(build_mod, "_gpu_available", lambda: True)
    monkeypatch.setattr(build_mod, "_gpu_clustering_index", fake)
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=1)
    b = build_index(x[:2000], ids[:2000], recipe)
    assert calls == [DIM]
    assert b.stats["device"] == "gpu"
    assert b.stats["target_met"]
    _, found = search(b.index, x[:10], 1, b.recipe)
    assert found[:, 0].tolist() == ids[:10].tolist()


def test_gpu_setup_failure_falls_back(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, ids = data

    def broken(dim: int) -> tuple[faiss.Index, object]:
        raise RuntimeError("no CUDA")

    monkeypatch.setattr(build_mod, "_gpu_available", lambda: True)
    monkeypatch.setattr(build_mod, "_gpu_clustering_index", broken)
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=1)
    b = build_index(x[:2000], ids[:2000], recipe)
    assert b.stats["device"] == "cpu"


def test_small_threshold_recipe_builds(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Recipes chosen for small collections (thresholds of a few hundred) are trainable."""
    x, ids = data
    n = 300
    recipe = choose_recipe(n, DIM, exact_threshold=200)
    assert recipe.kind == "ivfpq"
    b = build_index(x[:n], ids[:n], recipe, recall_target=0.9)
    assert b.index.ntotal == n
    assert b.stats["probe_queries"] == 200


def test_seeded_build_is_deterministic(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=1)
    a = build_index(x[:1500], ids[:1500], recipe, seed=3)
    b = build_index(x[:1500], ids[:1500], recipe, seed=3)
    assert a.recipe == b.recipe
    q = noisy_copies(x[:1500], 20)
    assert np.array_equal(search(a.index, q, 5, a.recipe)[1], search(b.index, q, 5, b.recipe)[1])
