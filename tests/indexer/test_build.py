"""Building, tuning, growing and searching FAISS index parts on seeded synthetic embeddings."""

from __future__ import annotations

import dataclasses
from typing import Any

import faiss
import numpy as np
import pytest

from xmodal.indexer import build as build_mod
from xmodal.indexer.build import BuiltIndex, build_index, exact_knn, opq_rotation
from xmodal.indexer.recipe import IndexRecipe, choose_recipe
from xmodal.storage.ann import IdSet, RerankStore, ivf_of

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


def decaying(n: int, *, dim: int = DIM, centers: int = 50, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors whose variance decays along the axes (like a real embedding's
    spectrum, left unrotated): PQ's sub-spaces get very unequal shares of it."""
    rng = np.random.default_rng(seed)
    scale = ((np.arange(dim) + 1.0) ** -1.0).astype(np.float32)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = (c[rng.integers(0, centers, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(np.intersect1d(f[:k], t[:k])) / k for f, t in zip(found, truth, strict=True)]))


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
    ivf = ivf_of(built.index)
    assert isinstance(ivf, faiss.IndexIVFPQ), "ids live in the inverted lists: no id map, no in-RAM copy"
    assert built.index.ntotal == x.shape[0]
    assert isinstance(built.part.store, RerankStore)
    assert np.array_equal(built.part.store.ids, np.sort(ids))
    _, found = built.part.search(x[:50], 1)
    assert set(found[:, 0].tolist()) <= set(ids.tolist())
    # re-ranked with exact vectors, a stored vector finds itself
    assert (found[:, 0] == ids[:50]).mean() >= 0.98
    assert np.array_equal(built.part.vector(int(ids[7])), x[7])
    assert built.part.vector(-5) is None


def test_ivfpq_agrees_with_exact_on_heldout_queries(
    built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, ids = data
    q = noisy_copies(x, 300)
    truth = exact_ids(x, ids, q, 1)[:, 0]
    scores, found = built.part.search(q, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert scores.shape == found.shape == (300, 10)
    assert (found[:, 0] == truth).mean() >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores sorted descending"
    # re-ranked scores are the exact inner products
    rows = {int(i): r for r, i in enumerate(ids)}
    exact = np.asarray([float(q[j] @ x[rows[int(found[j, 0])]]) for j in range(300)], dtype=np.float32)
    np.testing.assert_allclose(scores[:, 0], exact, rtol=1e-5, atol=1e-6)


def test_reranking_lifts_recall_at_1(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    q = noisy_copies(x, 300, seed=9)
    truth = exact_ids(x, ids, q, 1)[:, 0]
    base = IndexRecipe(kind="ivfpq", nlist=32, m=8, nbits=8, nprobe=8, opq=False)
    codes_only = build_index(x, ids, dataclasses.replace(base, rerank="none"), recall_target=0.5)
    reranked = build_index(x, ids, base, recall_target=0.5)
    r1_codes = float((codes_only.part.search(q, 1, nprobe=32)[1][:, 0] == truth).mean())
    r1_rerank = float((reranked.part.search(q, 1, nprobe=32, k_factor=16)[1][:, 0] == truth).mean())
    assert r1_rerank >= 0.97 > r1_codes, (r1_rerank, r1_codes)
    assert codes_only.part.store is None and codes_only.stats["store_bytes_per_vector"] == 0


def test_tuning_meets_target_and_reports(built: BuiltIndex) -> None:
    s = built.stats
    assert s["target_met"] is True
    assert s["recall@10"] >= 0.95
    assert 0.0 <= s["recall@1"] <= 1.0
    assert s["probe_queries"] == 200
    assert s["n"] == 4000 and s["dim"] == DIM
    assert s["device"] == "cpu" and s["truth_device"] == "cpu"
    assert s["nprobe"] == built.recipe.nprobe
    assert s["build_s"] >= 0 and s["latency_ms"] > 0
    assert s["k_factor"] == built.recipe.k_factor >= 4
    # bytes per vector: codes (m bytes) + 8-byte ids + shared centroids; the store is memory-mapped
    assert built.recipe.rerank == "mmap"
    assert built.recipe.m + 8 <= s["bytes_per_vector"] < built.recipe.m + 8 + 40
    assert s["store_bytes_per_vector"] == 4 * DIM + 8
    chosen = [t for t in s["points"] if (t["nprobe"], t["k_factor"]) == (s["nprobe"], s["k_factor"])]
    assert len(chosen) == 1 and chosen[0]["recall@10"] == s["recall@10"]
    assert built.part.points == s["points"]
    # the chosen point is the cheapest measured nprobe at this k_factor that meets the target
    same_k = [p for p in s["points"] if p["k_factor"] == s["k_factor"] and p["recall@10"] >= 0.95]
    assert min(p["nprobe"] for p in same_k) == s["nprobe"] or s["nprobe"] == choose_recipe(
        4000, DIM, exact_threshold=1000).nprobe
    assert built.recipe.nprobe >= choose_recipe(4000, DIM, exact_threshold=1000).nprobe


def test_tuned_point_meets_target_on_held_out_queries(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Tuned on probes drawn from the collection, the point holds for queries it never saw."""
    x, ids = data
    for target in (0.8, 0.95):
        b = build_index(x, ids, choose_recipe(x.shape[0], DIM, exact_threshold=1000), recall_target=target)
        q = noisy_copies(x, 400, seed=17)
        truth = exact_ids(x, ids, q, 10)
        assert recall_at(b.part.search(q, 10)[1], truth) >= target - 0.03, target


def test_request_recall_picks_a_measured_point(built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    part = built.part
    low, high = part.point_for(0.5), part.point_for(0.999)
    assert low is not None and high is not None
    assert low["recall@10"] >= 0.5 and low["nprobe"] * low["k_factor"] <= built.recipe.nprobe * built.recipe.k_factor
    assert high["recall@10"] >= built.stats["recall@10"]
    q = noisy_copies(x, 300, seed=5)
    truth = exact_ids(x, ids, q, 10)
    fast = recall_at(part.search(q, 10, recall=0.5)[1], truth)
    accurate = recall_at(part.search(q, 10, recall=0.999)[1], truth)
    assert accurate >= fast and accurate >= 0.95
    # an unreachable request gets the most accurate point measured
    assert part.point_for(1.5) == max(part.points, key=lambda p: (p["recall@10"], -p["nprobe"] * p["k_factor"]))


def test_unreachable_target_uses_nlist(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    # no re-ranking and 4-bit codes with 2 sub-quantizers: recall@10 can't reach 1.0
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=2, nbits=4, rerank="none", nprobe=1)
    b = build_index(x, ids, recipe, recall_target=1.0)
    assert b.stats["target_met"] is False
    assert b.recipe.nprobe == 16


def test_excluded_ids_never_come_back_and_k_still_filled(built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    q = x[:20]
    _, before = built.part.search(q, 10)
    gone = np.unique(before[:, :5].ravel())
    _, after = built.part.search(q, 10, exclude=gone)
    assert not np.isin(after, gone).any()
    assert (after >= 0).all(), "the selector filters inside FAISS: k live results still come back"


def test_opq_where_it_pays() -> None:
    skewed = decaying(6000)
    iso = np.random.default_rng(4).standard_normal((6000, DIM)).astype(np.float32)  # no axis carries more
    iso /= np.linalg.norm(iso, axis=1, keepdims=True)
    ids = np.arange(6000, dtype=np.int64)
    recipe = IndexRecipe(kind="ivfpq", nlist=32, m=8, nbits=8, nprobe=4)
    with_opq = build_index(skewed, ids, recipe, recall_target=0.9)
    assert with_opq.recipe.opq is True and with_opq.stats["opq_measured_gain"] >= 0.05
    assert isinstance(faiss.downcast_index(with_opq.index), faiss.IndexPreTransform)
    without = build_index(iso, ids, recipe, recall_target=0.9)
    assert without.recipe.opq is False and not isinstance(faiss.downcast_index(without.index), faiss.IndexPreTransform)
    off = build_index(skewed, ids, dataclasses.replace(recipe, opq=False), recall_target=0.9)
    assert off.recipe.opq is False and off.stats["opq"] is False
    # OPQ lowers the error of the codes: fewer candidates reach the same recall@1 without re-ranking
    q = noisy_copies(skewed, 200, seed=3)
    truth = exact_ids(skewed, ids, q, 1)[:, 0]
    plain = build_index(skewed, ids, dataclasses.replace(recipe, opq=False, rerank="none"), recall_target=0.5)
    rotated = build_index(skewed, ids, dataclasses.replace(recipe, opq=True, rerank="none"), recall_target=0.5)
    r_plain = float((plain.part.search(q, 1, nprobe=32)[1][:, 0] == truth).mean())
    r_rot = float((rotated.part.search(q, 1, nprobe=32)[1][:, 0] == truth).mean())
    assert r_rot > r_plain, (r_rot, r_plain)


def test_opq_rotation_is_orthonormal_and_balances() -> None:
    x = decaying(4000)
    rotation, gain = opq_rotation(x, 8)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(DIM), atol=1e-4)
    assert gain > 0.2
    y = x @ rotation.T
    energy = (y.reshape(-1, 8, DIM // 8) ** 2).sum(axis=(0, 2))
    before = (x.reshape(-1, 8, DIM // 8) ** 2).sum(axis=(0, 2))
    assert energy.max() / energy.min() < before.max() / before.min()


def test_store_memory_mapped_from_store_dir(tmp_path: Any, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=2)
    b = build_index(x[:2000], ids[:2000], recipe, store_dir=tmp_path / "store")
    assert b.part.store is not None and b.part.store.mapped
    assert (tmp_path / "store" / "vectors.npy").stat().st_size >= 2000 * DIM * 4
    ram = build_index(x[:2000], ids[:2000], dataclasses.replace(recipe, rerank="ram"))
    assert ram.part.resident_bytes() - b.part.resident_bytes() == pytest.approx(2000 * (DIM * 4 + 8), rel=0.05)
    assert np.array_equal(b.part.search(x[:30], 5)[1], ram.part.search(x[:30], 5)[1])


def test_growth_adds_without_retraining_and_keeps_ids(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=2)
    first = build_index(x[:3000], ids[:3000], recipe, recall_target=0.9)
    centroids = faiss.vector_to_array(ivf_of(first.index).quantizer.get_xb()) if hasattr(
        ivf_of(first.index).quantizer, "get_xb") else ivf_of(first.index).quantizer.reconstruct_n(0, 16)
    # 200 removed, 1000 added, one kept id with a new vector
    keep = np.arange(200, 3000)
    new_x = np.concatenate([x[keep], x[3000:4000]])
    new_ids = np.concatenate([ids[keep], ids[3000:4000]])
    new_x[0] = x[3999]  # ids[200] now holds another vector
    grown = build_index(new_x, new_ids, recipe, recall_target=0.9, previous=first.part)
    s = grown.stats
    assert s["retrained"] is False and s["train_points"] == 0
    assert (s["removed"], s["changed"], s["appended"]) == (200, 1, 1001)
    assert s["trained_n"] == 3000 and grown.part.trained_n == 3000
    assert grown.index.ntotal == new_ids.shape[0]
    after = ivf_of(grown.index).quantizer.reconstruct_n(0, 16)
    np.testing.assert_array_equal(np.asarray(centroids).reshape(after.shape), after)  # not retrained
    _, found = grown.part.search(x[3000:3050], 1)
    assert (found[:, 0] == ids[3000:3050]).mean() >= 0.98, "appended vectors are found under their ids"
    _, found = grown.part.search(x[:200], 10)
    assert not np.isin(found, ids[:200]).any(), "removed ids are gone"
    assert np.array_equal(grown.part.vector(int(ids[200])), x[3999])
    # the previous part is untouched (it may still be serving)
    assert first.index.ntotal == 3000


def test_growth_retrains_when_recall_at_the_tuned_point_drops(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=1, k_factor=4)
    first = build_index(x[:2000], ids[:2000], recipe, recall_target=0.9)
    # four times as much data from elsewhere: the trained lists no longer fit it
    other = mixture(8000, centers=400, spread=1.5, seed=11)
    more_ids = np.arange(10**13, 10**13 + 8000, dtype=np.int64)
    grown = build_index(np.concatenate([x[:2000], other]), np.concatenate([ids[:2000], more_ids]), recipe,
                        recall_target=0.9, previous=first.part)
    assert grown.stats["retrained"] is True
    assert "probe recall@10" in grown.stats["retrain_reason"]
    assert grown.stats["trained_n"] == 10_000 and grown.stats["train_points"] > 0


def test_growth_needs_the_same_shape(data: tuple[np.ndarray, np.ndarray]) -> None:
    """A previous part trained with another nlist (N outgrew it) is not grown: the build retrains."""
    x, ids = data
    first = build_index(x[:2000], ids[:2000], IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=2))
    b = build_index(x, ids, IndexRecipe(kind="ivfpq", nlist=32, m=8, nbits=6, nprobe=2), previous=first.part)
    assert b.stats["retrained"] is True and b.stats["train_points"] > 0 and b.recipe.nlist == 32


def test_exact_truth_gpu_branch_with_cpu_stand_in(monkeypatch: pytest.MonkeyPatch,
                                                  data: tuple[np.ndarray, np.ndarray]) -> None:
    """Bulk exact search (tuning's ground truth) goes to the GPU when there is one; a CPU stand-in
    exercises that branch, and a failing GPU falls back to the CPU."""
    x, _ = data
    calls: list[int] = []

    def fake(q: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(k)
        return faiss.knn(q, xb, k, metric=faiss.METRIC_INNER_PRODUCT)

    monkeypatch.setattr(build_mod, "_gpu_available", lambda: True)
    monkeypatch.setattr(build_mod, "_gpu_knn", fake)
    rows, device = exact_knn(x[:10], x, 3)
    assert device == "gpu" and calls == [3] and rows[:, 0].tolist() == list(range(10))

    def broken(q: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("no CUDA")

    monkeypatch.setattr(build_mod, "_gpu_knn", broken)
    rows, device = exact_knn(x[:10], x, 3)
    assert device == "cpu" and rows[:, 0].tolist() == list(range(10))


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    x, ids = x[:800], ids[:800]
    b = build_index(x, ids, IndexRecipe(kind="flat"))
    assert b.stats["recall@10"] == 1.0 and b.stats["recall@1"] == 1.0
    assert b.stats["device"] == "cpu"
    q = noisy_copies(x, 50)
    scores, found = b.part.search(q, 10)
    truth = exact_ids(x, ids, q, 10)
    assert np.array_equal(found, truth)
    exp = np.sort(q @ x.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, exp, rtol=1e-5, atol=1e-5)


def test_k_larger_than_ntotal_pads(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, ids = data
    b = build_index(x[:5], ids[:5], IndexRecipe(kind="flat"))
    scores, found = b.part.search(x[0], 8)
    assert found.shape == (1, 8) and scores.shape == (1, 8)
    assert set(found[0, :5].tolist()) == set(ids[:5].tolist())
    assert (found[0, 5:] == -1).all()
    assert np.isneginf(scores[0, 5:]).all()
    assert found[0, 0] == ids[0]


def test_k_larger_than_ntotal_ivfpq(built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    _, found = built.part.search(x[:2], 5000)
    assert found.shape == (2, 5000)
    assert (found[:, 4000:] == -1).all()


def test_search_rejects_bad_k_and_dim(built: BuiltIndex) -> None:
    q = np.zeros((1, DIM), dtype=np.float32)
    with pytest.raises(ValueError):
        built.part.search(q, 0)
    with pytest.raises(ValueError):
        built.part.search(np.zeros((1, DIM + 1), dtype=np.float32), 3)


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
    _, found = b.part.search(x[:3].astype(np.float64), 1)
    assert found[:, 0].tolist() == ids[:3].tolist()
    # ids of a narrower integer type are widened
    small = np.arange(200, dtype=np.int32)
    b = build_index(x[:200], small, IndexRecipe(kind="flat"))
    _, found = b.part.search(x[:3], 1)
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
    _, found = b.part.search(x[:10], 1)
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
    assert np.array_equal(a.part.search(q, 5)[1], b.part.search(q, 5)[1])


def test_probes_of_another_modality_join_the_tuning(data: tuple[np.ndarray, np.ndarray]) -> None:
    """Queries of the space's other modality (text against image lists) make up half the probes."""
    x, ids = data
    other = noisy_copies(x, 300, noise=0.6, seed=13)
    b = build_index(x[:2000], ids[:2000], IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=2),
                    recall_target=0.9, probes=other)
    assert b.stats["probe_queries"] == 200 and b.stats["probe_queries_other_modality"] == 100


def test_probe_sample_reads_rows_from_each_part_without_copying_them_whole(tmp_path: Any) -> None:
    from xmodal.indexer.publish import _probe_sample

    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=(3000, 4))
    a[:] = 1.0
    b = np.full((500, 4), 2.0, dtype=np.float32)
    sample = _probe_sample([a, b], size=1000, seed=0)
    assert sample.shape == (1000, 4)
    share_b = float((sample[:, 0] == 2.0).mean())
    assert 0.08 < share_b < 0.22  # uniform over the rows taken together: 500 of 3500
    assert np.array_equal(_probe_sample([b[:10], b[:5]], size=1000), np.concatenate([b[:10], b[:5]]))


@pytest.mark.parametrize("opq", [False, True])
@pytest.mark.parametrize("ondisk", [False, True])
def test_gpu_add_branch_gives_the_same_index_as_the_cpu_add(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray], tmp_path: Any, opq: bool, ondisk: bool
) -> None:
    """Adds with the coarse assignment done by a separate assigner (a GPU copy of the centroids; here
    a CPU stand-in, counted) write exactly the index the CPU add writes, OPQ and on-disk lists too."""
    x, ids = decaying(3000), make_ids(3000)
    recipe = IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=4, opq=opq, ondisk=ondisk)
    assigned: list[int] = []

    class Counting:
        def __init__(self, quantizer: faiss.Index) -> None:
            self.inner = faiss.clone_index(quantizer)

        def search(self, xs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            assigned.append(xs.shape[0])
            return self.inner.search(xs, k)

    def fake_assigner(quantizer: faiss.Index) -> tuple[Any, object]:
        return Counting(quantizer), object()

    monkeypatch.setattr(build_mod, "_gpu_available", lambda: False)
    cpu = build_index(x, ids, recipe, seed=5, lists_dir=tmp_path / "cpu")
    monkeypatch.setattr(build_mod, "_gpu_available", lambda: True)
    monkeypatch.setattr(build_mod, "_gpu_clustering_index", lambda dim: (faiss.IndexFlatIP(dim), object()))
    monkeypatch.setattr(build_mod, "_gpu_assigner", fake_assigner)
    gpu = build_index(x, ids, recipe, seed=5, lists_dir=tmp_path / "gpu")
    assert (cpu.stats["add_device"], gpu.stats["add_device"]) == ("cpu", "gpu")
    assert sum(assigned) == 3000  # every vector assigned by the stand-in
    assert gpu.stats["opq"] is opq and gpu.index.ntotal == cpu.index.ntotal == 3000
    a, b = ivf_of(cpu.index), ivf_of(gpu.index)
    for lst in range(recipe.nlist):
        assert a.invlists.list_size(lst) == b.invlists.list_size(lst)
        na = a.invlists.list_size(lst)
        ids_a = faiss.rev_swig_ptr(a.invlists.get_ids(lst), na).copy()
        ids_b = faiss.rev_swig_ptr(b.invlists.get_ids(lst), na).copy()
        codes_a = faiss.rev_swig_ptr(a.invlists.get_codes(lst), na * a.code_size).copy()
        codes_b = faiss.rev_swig_ptr(b.invlists.get_codes(lst), na * b.code_size).copy()
        assert np.array_equal(ids_a, ids_b) and np.array_equal(codes_a, codes_b)
    q = noisy_copies(x, 50)
    assert np.array_equal(cpu.part.search(q, 10)[1], gpu.part.search(q, 10)[1])


def test_gpu_add_setup_failure_falls_back_to_cpu(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, ids = data

    def broken(quantizer: faiss.Index) -> tuple[Any, object]:
        raise RuntimeError("no CUDA")

    monkeypatch.setattr(build_mod, "_gpu_available", lambda: True)
    monkeypatch.setattr(build_mod, "_gpu_clustering_index", lambda dim: (faiss.IndexFlatIP(dim), object()))
    monkeypatch.setattr(build_mod, "_gpu_assigner", broken)
    b = build_index(x[:2000], ids[:2000], IndexRecipe(kind="ivfpq", nlist=16, m=8, nbits=6, nprobe=1))
    assert b.stats["add_device"] == "cpu" and b.index.ntotal == 2000


def test_search_among_an_id_set_is_exact_and_restricted_search_keeps_to_it(
        built: BuiltIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    """A filter's matches (search.plans): exact scores over just them, or the ANN search with them as the
    selector; sparse ids here (a hashed batch), dense ones below (a bitmap), flat and IVF-PQ parts."""
    x, ids = data
    q = noisy_copies(x, 5, seed=3)
    rng = np.random.default_rng(4)
    rows = rng.choice(x.shape[0], 300, replace=False)
    among = IdSet.of(np.append(ids[rows], ids.max() + 1000))  # and one added after the build: no row
    left_out = ids[rows[:3]]
    truth = exact_ids(x[rows[3:]], ids[rows[3:]], q, 10)
    _, found = built.part.search_among(q, 10, among, exclude=left_out)
    assert np.array_equal(found, truth)
    # the matches' rows are found once per store (a filter repeats): again, with and without ids left out
    _, whole = built.part.search_among(q, 10, among)
    assert np.array_equal(whole, exact_ids(x[rows], ids[rows], q, 10))
    assert np.array_equal(built.part.search_among(q, 10, among, exclude=left_out)[1], truth)
    ivf = ivf_of(built.part.index)
    _, restricted = built.part.search(q, 10, nprobe=ivf.nlist, among=among, exclude=left_out)
    assert np.isin(restricted, ids[rows[3:]]).all()
    assert recall_at(restricted, truth) >= 0.9
    flat = build_index(x[:800], np.arange(800, dtype=np.int64) * 3, IndexRecipe(kind="flat")).part
    dense = IdSet.of(np.arange(0, 3000, 7))  # the part holds ids 3 * row: a third of these, the rest unknown to it
    held = dense.ids[np.isin(dense.ids, np.arange(800) * 3)]
    _, exact = flat.search_among(q, 10, dense)
    _, scanned = flat.search(q, 10, among=dense)
    expect = exact_ids(x[held // 3], held, q, 10)
    assert np.array_equal(exact, expect) and np.array_equal(scanned, expect)
    assert dense._bitmap is not None  # dense ids: a bitmap selector
