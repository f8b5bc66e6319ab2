"""The clap -> clip alignment: the fit, its held-out measure, the shipped bank, catalog storage."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.encoders import align
from xmodal.storage.catalog import Catalog


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_fit_recovers_a_linear_map_and_measures_it_on_held_out_rows():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((1000, 24)))
    a = rng.standard_normal((24, 40))
    y = _unit(x @ a + 0.01 * rng.standard_normal((1000, 40)))
    fitted = align.fit(x, y)
    m = fitted.metrics
    assert m["bank"] == 1000 and m["held_out"] == 200 and m["train"] == 800
    assert m["held_out_cosine_mean"] > 0.98 and m["held_out_recall@1"] > 0.9
    assert fitted.matrix.shape == (24, 40)
    mapped = align.apply(fitted.matrix, x[:5])
    assert np.allclose(np.linalg.norm(mapped, axis=1), 1, atol=1e-5)
    assert np.all(np.sum(mapped * y[:5], axis=1) > 0.98)


def test_unrelated_pairs_measure_as_chance():
    rng = np.random.default_rng(1)
    x, y = _unit(rng.standard_normal((1000, 24))), _unit(rng.standard_normal((1000, 40)))
    m = align.fit(x, y).metrics
    assert m["held_out_recall@1"] < 0.03 and m["held_out_cosine_mean"] < 0.3


def test_the_shipped_bank_is_large_distinct_and_keyed():
    bank = align.bank_texts()
    assert len(bank) >= 2000 and len(set(bank)) == len(bank)
    assert any("sound" in t for t in bank) and any("photo" in t for t in bank)
    assert align.alignment_key("a", "b") != align.alignment_key("a", "c") != align.alignment_key("x", "b")
    assert align.alignment_key("a", "b") == align.alignment_key("a", "b")


@pytest.mark.backends  # the catalog's SQL matters here
def test_an_alignment_round_trips_through_the_catalog(database_url):
    catalog = Catalog(database_url)
    try:
        cid = catalog.collection_id("c", create=True)
        assert catalog.alignment(cid, "clap", "clip") is None
        m = np.random.default_rng(2).standard_normal((48, 64)).astype(np.float32)
        catalog.save_alignment(cid, "clap", "clip", "k1", m, {"held_out_cosine_mean": 0.5})
        catalog.save_alignment(cid, "clap", "clip", "k2", m * 2, {"held_out_cosine_mean": 0.7})  # replaces
        loaded = align.from_row(catalog.alignment(cid, "clap", "clip"))
        assert loaded.key == "k2" and loaded.metrics == {"held_out_cosine_mean": 0.7}
        assert np.array_equal(loaded.matrix, m * 2) and loaded.source == "clap" and loaded.target == "clip"
    finally:
        catalog.close()


@pytest.mark.parametrize("n", [5, 9])
def test_too_few_rows_is_an_error(n):
    with pytest.raises(ValueError, match="at least 10"):
        align.fit(np.ones((n, 3)), np.ones((n, 3)))
