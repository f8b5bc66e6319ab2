"""Recipe choice: flat vs IVF-PQ and parameters valid for FAISS across sizes and dimensions."""

from __future__ import annotations

import dataclasses

import faiss
import pytest

from xmodal.config import parse_bytes
from xmodal.errors import UserError
from xmodal.indexer.recipe import (
    RECIPE_KINDS,
    IndexRecipe,
    choose_m,
    choose_recipe,
    estimate_bytes,
    recipe_kind,
    retrain_reason,
)

THRESHOLD = 1000
SIZES = [THRESHOLD, 1000, 20_000, 10**6, 10**8]
DIMS = [32, 64, 512, 768]


def test_below_threshold_is_flat() -> None:
    assert choose_recipe(0, 512, exact_threshold=THRESHOLD).kind == "flat"
    assert choose_recipe(THRESHOLD - 1, 512, exact_threshold=THRESHOLD).kind == "flat"
    assert choose_recipe(49_999, 512, exact_threshold=50_000).kind == "flat"


def test_at_and_above_threshold_is_ivfpq() -> None:
    assert choose_recipe(THRESHOLD, 512, exact_threshold=THRESHOLD).kind == "ivfpq"
    assert choose_recipe(50_000, 512, exact_threshold=50_000).kind == "ivfpq"


def test_too_small_to_train_falls_back_to_flat() -> None:
    # above a zero threshold, but fewer points than one IVF list needs
    assert choose_recipe(10, 64, exact_threshold=0).kind == "flat"
    assert choose_recipe(38, 64, exact_threshold=0).kind == "flat"


@pytest.mark.parametrize("n", [100, 150, 300])
def test_small_thresholds_give_trainable_ivfpq(n: int) -> None:
    r = choose_recipe(n, 64, exact_threshold=100)
    assert r.kind == "ivfpq"
    assert n >= 39 * r.nlist
    assert n >= 2**r.nbits
    assert 4 <= r.nbits <= 8


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("n", SIZES)
def test_parameters_valid_for_faiss(n: int, dim: int) -> None:
    r = choose_recipe(n, dim, exact_threshold=THRESHOLD)
    assert r.kind == "ivfpq"
    assert r.nlist >= 1 and r.nlist & (r.nlist - 1) == 0, "power of two"
    assert n >= 39 * r.nlist
    assert dim % r.m == 0
    assert dim // r.m <= 16
    assert 4 <= r.nbits <= 8 and n >= 2**r.nbits
    assert 1 <= r.nprobe <= r.nlist
    assert r.nprobe == max(1, r.nlist // 64)
    assert r.rerank == "mmap" and r.opq is None  # no budget: re-rank vectors mapped; OPQ measured at build
    if n >= 256 * 39:
        assert r.nbits == 8
    # FAISS accepts the combination (constructing validates m | d and nbits)
    faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, r.nlist, r.m, r.nbits, faiss.METRIC_INNER_PRODUCT)


def test_nlist_grows_with_sqrt_n() -> None:
    r = choose_recipe(10**6, 512, exact_threshold=THRESHOLD)
    assert r.nlist == 2048  # 4*sqrt(1e6) = 4000, rounded down
    r = choose_recipe(10**8, 512, exact_threshold=THRESHOLD)
    assert r.nlist == 32768  # 4*sqrt(1e8) = 40000, rounded down
    r = choose_recipe(20_000, 512, exact_threshold=THRESHOLD)
    assert r.nlist <= 20_000 // 39


@pytest.mark.parametrize(("dim", "m"), [(512, 64), (768, 96), (64, 8), (32, 4)])
def test_m_about_dim_over_8(dim: int, m: int) -> None:
    assert choose_m(dim) == m


def test_m_divides_awkward_dims() -> None:
    for dim in (1, 3, 7, 97, 100, 384, 1000):
        m = choose_m(dim)
        assert dim % m == 0


def test_recipe_round_trip() -> None:
    r = choose_recipe(20_000, 512, exact_threshold=THRESHOLD)
    assert IndexRecipe.from_dict(r.to_dict()) == r
    flat = IndexRecipe(kind="flat")
    assert IndexRecipe.from_dict(flat.to_dict()) == flat


def test_unknown_kind_lists_valid_names() -> None:
    with pytest.raises(UserError) as info:
        IndexRecipe.from_dict({"kind": "hnsw"})
    for name in RECIPE_KINDS:
        assert name in str(info.value)
    with pytest.raises(UserError):
        recipe_kind("nope")
    with pytest.raises(UserError):
        IndexRecipe(kind="nope")  # type: ignore[arg-type]


def test_from_dict_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(UserError, match="unknown index recipe keys"):
        IndexRecipe.from_dict({"kind": "flat", "colour": "blue"})
    with pytest.raises(UserError, match="invalid ivfpq recipe"):
        IndexRecipe(kind="ivfpq", nlist=0, m=8)
    with pytest.raises(UserError, match="nprobe"):
        IndexRecipe(kind="ivfpq", nlist=4, m=8, nprobe=8)


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError):
        choose_recipe(-1, 64, exact_threshold=10)
    with pytest.raises(ValueError):
        choose_recipe(10, 0, exact_threshold=10)


def test_default_recipe_fits_80_bytes_per_vector_at_a_million() -> None:
    r = choose_recipe(10**6, 512, exact_threshold=50_000)
    assert (r.m, r.nbits, r.rerank) == (64, 8, "mmap")
    assert estimate_bytes(r, 10**6, 512) / 10**6 <= 80


@pytest.mark.parametrize("n", [60_000, 10**6, 10**7])
@pytest.mark.parametrize("budget_per_vector", [20, 40, 80, 200])
def test_budget_sizes_the_codes(n: int, budget_per_vector: int) -> None:
    budget = n * budget_per_vector
    unbudgeted = choose_recipe(n, 512, exact_threshold=50_000)
    coarsest = dataclasses.replace(unbudgeted, m=8)
    if estimate_bytes(coarsest, n, 512) > budget:  # codes can't be in RAM: lists on disk, if even that fits
        ondisk = dataclasses.replace(unbudgeted, ondisk=True)
        if estimate_bytes(ondisk, n, 512) > budget:
            with pytest.raises(UserError, match="raise the budget"):
                choose_recipe(n, 512, exact_threshold=50_000, max_memory=budget)
            return
        r = choose_recipe(n, 512, exact_threshold=50_000, max_memory=budget)
        assert r.ondisk and r.m == 64 and estimate_bytes(r, n, 512) <= budget
        return
    r = choose_recipe(n, 512, exact_threshold=50_000, max_memory=budget)
    assert r.kind == "ivfpq"
    assert estimate_bytes(r, n, 512) <= budget
    assert 512 % r.m == 0 and 8 <= r.m <= 64
    # the largest code within the budget, up to the default dim/8
    for m in (16, 32, 64):
        if m > r.m:
            assert estimate_bytes(dataclasses.replace(r, m=m), n, 512) > budget


def test_budget_holds_rerank_vectors_in_ram_only_when_they_fit() -> None:
    n = 10**6
    roomy = choose_recipe(n, 512, exact_threshold=50_000, max_memory=3 * 2**30)
    assert roomy.rerank == "ram" and estimate_bytes(roomy, n, 512) <= 3 * 2**30
    tight = choose_recipe(n, 512, exact_threshold=50_000, max_memory=2**30)
    assert tight.rerank == "mmap" and tight.m == 64


def test_budget_too_small_says_what_is_needed() -> None:
    with pytest.raises(UserError, match="raise the budget"):
        choose_recipe(10**6, 512, exact_threshold=50_000, max_memory=10**6)
    r = choose_recipe(10**7, 512, exact_threshold=50_000, max_memory=64 * 2**20)  # codes alone: 640 MB
    assert r.ondisk and r.rerank == "mmap"


def test_budget_turns_a_flat_that_does_not_fit_into_ivfpq() -> None:
    n = 40_000  # below the threshold, but flat needs ~ 40k * 2 KiB = 84 MB
    assert choose_recipe(n, 512, exact_threshold=50_000).kind == "flat"
    r = choose_recipe(n, 512, exact_threshold=50_000, max_memory=20 * 10**6)
    assert r.kind == "ivfpq" and estimate_bytes(r, n, 512) <= 20 * 10**6


def test_high_recall_target_gets_finer_codes() -> None:
    default = choose_recipe(10**6, 512, exact_threshold=50_000)
    strict = choose_recipe(10**6, 512, exact_threshold=50_000, recall_target=0.99)
    assert strict.m == 2 * default.m == 128


def test_retrain_reason_when_n_outgrows_the_recipe() -> None:
    trained = choose_recipe(100_000, 512, exact_threshold=50_000)
    assert retrain_reason(trained, 120_000, 512, exact_threshold=50_000, recall_target=0.95, max_memory=None) is None
    reason = retrain_reason(trained, 1_000_000, 512, exact_threshold=50_000, recall_target=0.95, max_memory=None)
    assert reason and "nlist" in reason
    assert "flat" in (retrain_reason(trained, 1000, 512, exact_threshold=50_000, recall_target=0.95,
                                     max_memory=None) or "")


@pytest.mark.parametrize(("text", "value"), [("2GiB", 2 * 2**30), ("512MB", 512 * 10**6), ("1.5G", int(1.5 * 2**30)),
                                             ("1000", 1000), (" 64 KiB ", 64 * 1024), ("", None)])
def test_memory_sizes(text: str, value: int | None) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "2XB", "nan"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes(text)
