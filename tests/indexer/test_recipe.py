"""Recipe choice: flat vs IVF-PQ and parameters valid for FAISS across sizes and dimensions."""

from __future__ import annotations

import faiss
import pytest

from xmodal.errors import UserError
from xmodal.indexer.recipe import RECIPE_KINDS, IndexRecipe, choose_m, choose_recipe, recipe_kind

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
    assert r.nprobe == max(1, r.nlist // 16)
    assert r.refine
    if n >= 256 * 39:
        assert r.nbits == 8
    # FAISS accepts the combination (constructing validates m | d and nbits)
    faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, r.nlist, r.m, r.nbits, faiss.METRIC_INNER_PRODUCT)


def test_nlist_grows_with_sqrt_n() -> None:
    r = choose_recipe(10**6, 512, exact_threshold=THRESHOLD)
    assert 2048 <= r.nlist <= 8192  # 4*sqrt(1e6) = 4000
    r = choose_recipe(10**8, 512, exact_threshold=THRESHOLD)
    assert 16384 <= r.nlist <= 65536  # 4*sqrt(1e8) = 40000
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
