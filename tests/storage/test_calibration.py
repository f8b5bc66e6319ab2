"""Relevance in small parts (``storage.calibration``): a query's own centre with the pair's within-query
spread, and each item's bias taken off, so that a hub of a collection's few sounds does not stand out for
every query while a near-copy among look-alike sounds does. Synthetic vectors: what is measured here is
the arithmetic of the background, on shapes that random-weight models give (one part tightly clustered,
one item leaning towards every query).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from xmodal.storage.calibration import MIN_REFERENCE, PRIOR_REFERENCE, Calibration, Relevance, measure

DIM = 64


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _queries(rng: np.random.Generator, lean: np.ndarray, n: int) -> np.ndarray:
    """Query-like vectors that share a direction (one modality's vectors, all alike in part)."""
    return _unit(rng.standard_normal((n, DIM)) + 8.0 * lean)


def test_a_hub_of_a_small_part_does_not_stand_out_for_every_query() -> None:
    rng = np.random.default_rng(0)
    lean = _unit(rng.standard_normal(DIM))
    sounds = _unit(rng.standard_normal((25, DIM)))
    sounds[13] = _unit(rng.standard_normal(DIM) + 8.0 * lean)  # leans towards every query: a hub
    ids = np.arange(100, 125, dtype=np.int64)
    cal = measure(_queries(rng, lean, 200), sounds, n_targets=25, query_ids=np.arange(200), target_ids=ids)
    assert cal is not None and cal.query_std > 0 and set(cal.bias) == set(ids.tolist())
    assert cal.bias[113] == max(cal.bias.values()) and cal.bias[113] > 3 * cal.query_std  # the hub's lean, found
    unbiased = replace(cal, bias={})

    hub_rel, hub_rel_unbiased, hub_first = [], [], 0
    for q in _queries(rng, lean, 60):  # new queries, none of them among the measured ones
        scores = sounds @ q
        top = np.argsort(-scores)[: 2]
        hub_first += int(top[0] == 13)
        with_bias = Relevance.of(cal.for_query(scores, ids), scores, ids, 25)
        without = Relevance.of(unbiased.for_query(scores, ids), scores, ids, 25)
        hub_rel.append(with_bias(float(scores[13]), 113))
        hub_rel_unbiased.append(without(float(scores[13]), 113))
    assert hub_first > 50  # it tops nearly every list by raw score
    assert np.median(hub_rel_unbiased) > 3  # read as it is, a "find" for every query
    assert np.median(hub_rel) < 1  # less its lean: what chance gives the best of 25


def test_a_near_copy_among_look_alike_sounds_stands_out_and_the_others_do_not() -> None:
    """Random audio weights score every sound about 0.99 against every other: the pair's pooled spread
    (between queries as much as within) hides a near-copy; the query's own centre finds it."""
    rng = np.random.default_rng(1)
    centre = _unit(rng.standard_normal(DIM))
    sounds = _unit(centre + 0.12 * rng.standard_normal((24, DIM)) * rng.uniform(0.5, 1.5, (24, 1)))
    ids = np.arange(24, dtype=np.int64)
    cal = measure(sounds, sounds, n_targets=24, query_ids=ids, target_ids=ids)
    assert cal is not None and 0 < cal.query_std < cal.std
    firsts, copy_rel, others = 0, [], []
    for j in range(24):
        query = _unit(sounds[j] + 0.01 * rng.standard_normal(DIM))  # an altered copy of sound j
        scores = sounds @ query
        rel = Relevance.of(cal.for_query(scores, ids), scores, ids, 24)
        ranked = sorted(range(24), key=lambda i: -rel(float(scores[i]), i))
        firsts += int(ranked[0] == j)
        copy_rel.append(rel(float(scores[j]), j))
        others.append(rel(float(scores[ranked[1]]), ranked[1]))
        assert cal.relevance(float(scores[j]), j) < copy_rel[-1]  # the pooled calibration alone: less of a find
    assert firsts == 24
    assert np.median(copy_rel) > 3 and np.median(others) < 1.5


def test_a_query_spread_from_a_small_reference_leans_on_the_pair() -> None:
    cal = Calibration(mean=0.0, std=0.1, pairs=1000, targets=30, queries="items", query_std=0.1)
    rng = np.random.default_rng(2)
    narrow = np.tanh(0.3 + 0.01 * rng.standard_normal(20)).astype(np.float32)  # 20 scores, spread 0.01
    got = cal.for_query(narrow)
    assert got.mean == pytest.approx(0.3, abs=0.01)  # the query's own centre
    own = 0.01
    mixed = np.sqrt((20 * own**2 + PRIOR_REFERENCE * 0.1**2) / (20 + PRIOR_REFERENCE))
    assert got.std == pytest.approx(mixed, rel=0.2) and got.std > 5 * own  # mostly the pair's, from 20 scores
    wide = cal.for_query(np.tanh(0.3 + 0.01 * rng.standard_normal(5000)).astype(np.float32))
    assert wide.std < 0.02  # thousands of the query's own scores: its own spread, nearly
    older = Calibration(mean=0.0, std=0.5, pairs=1000, targets=30, queries="items")  # a version before query_std
    assert older.for_query(narrow) is older and older.for_query(narrow[:3]) is older
    assert len(narrow) < MIN_REFERENCE and cal.for_query(narrow[:3]) is cal  # too few for a centre


def test_the_bias_is_kept_with_the_calibration_as_json_keeps_it() -> None:
    cal = Calibration(mean=0.1, std=0.2, pairs=10, targets=3, queries="items", query_std=0.05,
                      bias={7: 0.02, 9: -0.01})
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal and dict(back.bias) == {7: 0.02, 9: -0.01} and back.query_std == 0.05
    assert back.relevance(0.5, 7) < back.relevance(0.5, 9) < back.relevance(0.5, 8) + 1  # a leaning item gains less
    assert back.relevance(0.5, 8) == back.relevance(0.5)  # an item without a bias: the score as it is
    assert "bias" not in Calibration(0.0, 1.0, 1, 1, "prior").to_dict()
