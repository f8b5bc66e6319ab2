"""Scores that mean the same across spaces and modality pairs: relevance against unrelated items.

A raw inner product says little by itself: text-text cosines sit far above text-image ones (the
modality gap of CLIP-style models), each space has its own spread, and some queries score high against
everything (hubs). A result's raw score ``s`` becomes its **relevance**:

    relevance = -log10( N * P(an unrelated item of the part scores at least s for this query) )

the (negated, log) expected number of the part's N items that would score as high by chance: an
E-value, as sequence search reports. 0 is what chance gives the best of N unrelated items; 1 is ten
times less likely than that; a near-duplicate scores far above. Relevances are comparable across
spaces, modalities and collection sizes, so lists of different targets merge by relevance, and one
cutoff (``min_relevance``) means the same for all.

The unrelated scores are modelled as a Gaussian on Fisher's scale (``atanh``: cosines are bounded by 1
and pile up below it; on this scale their spread is even, and a near-duplicate's 0.999 stands far from
an unrelated 0.97), so relevance keeps ordering results far beyond what a sample could rank. Its centre
and spread come, per query, from the query's scores against a **reference sample** of the part (``REFERENCE``
items chosen when the version is built): their median and the spread of their upper part (from the
90th percentile: a tail probability depends on the upper side, which skew widens), which the few
related items of the sample do not move. That takes out what a single number per pair cannot: one
query scores higher against everything than another, and a collection's clusters (a product's many
shots, a batch of similar renders) make the part's overall spread far wider than a query's own.

The pair's **calibration**, measured when the version is built (query-like vectors: the query modality's
own, or bank texts embedded by the space's text tower, against a sample of the part; every pair but an
item with itself taken as unrelated), gives what one query's reference cannot:

- the **within-query spread** (``query_std``): the same upper spread, of every sampled query's scores
  less its own median, pooled. A query's own spread read from a small reference is noisy (from 50
  scores, a tenth of them above the 90th percentile), and an underestimate makes chance's best look
  like a find; so a query's spread is the two mixed, the pooled one weighing as ``PRIOR_REFERENCE``
  reference scores (``for_query``). A part smaller than ``MIN_REFERENCE`` (a collection's four sounds)
  takes the pair's mean and spread as they are.
- each item's **bias** (``bias``), for parts the reference holds whole (at most ``REFERENCE`` items): the
  median, over the query-like vectors, of how far the item scores above each query's median. Some items
  score high against every query (*hubs*: a plain render, a silent clip, an outlier that the
  alignment carried towards the other modality); in a small part one of them tops every list and
  would stand out for every query. A score is read less its item's bias, in the background, the local
  tail and the query's reference alike (as querybank normalisation does for cross-modal retrieval).
  Larger parts keep no bias: measuring it for every item would cost a pass over the part per query-like
  vector, and a hub there is one of thousands of candidates.

A result may also stand out from its **nearest neighbours** when it does not from the part as a whole: a
near-copy among a cluster of look-alikes (a product's variants, a series of renders), where half the
part scores almost as high. The query's best ``TAIL`` scores above the next one are, by chance, spaced as
an exponential (the tail of any light-tailed background), whose scale their median spacing gives; a
score far above that spacing is rare by the same E-value measure. A result's relevance is the larger
of the two (``Relevance``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

QUERIES = 256  # query-like vectors per pair
TARGETS = 4096  # target vectors per pair
REFERENCE = 512  # reference items per part, for each query's own background
MIN_REFERENCE = 32  # fewer, and no within-query spread measured (a version built before it): the pair's calibration stands
MIN_CENTRE = 4  # fewer: the pair's calibration stands, whatever was measured
MIN_BIAS_QUERIES = 16  # fewer query-like vectors: no item biases (each would be the median of too few)
PRIOR_REFERENCE = 64  # the pair's within-query spread weighs as this many reference scores in a query's spread
UPPER = 0.9  # the quantile of a query's reference scores that its spread is read from
_Z_UPPER = 1.2815516  # the standard normal's quantile at UPPER
TAIL = 32  # a query's best scores in a part that its local tail is fitted on
MIN_TAIL = 16  # fewer candidates in the part: no local tail
_LOG10 = math.log(10.0)
_EDGE = 1.0 - 1e-6


@dataclass(frozen=True)
class Calibration:
    """Unrelated-pair scores of one (query modality, target part): their mean and spread, how many pairs
    were measured, the part's size N, and where the query vectors came from."""

    mean: float  # of atanh(score)
    std: float  # of atanh(score)
    pairs: int
    targets: int  # N: the part's vectors, the candidates a query meets
    queries: str  # where the query-like vectors came from: "bank", "items", "proxy:<part>", "proxy:space", "prior"
    score_mean: float = 0.0  # the raw scores' mean and spread, for people who set ``min_score``
    score_std: float = 0.0
    query_std: float = 0.0  # the within-query spread, pooled (Fisher's scale); 0: not measured (an older version)
    bias: Mapping[int, float] = field(default_factory=dict, compare=False, repr=False)  # item id -> its bias

    def shift(self, item: int | None) -> float:
        """What ``item`` scores above a query's median by its own lean (its bias); 0 when not measured."""
        return float(self.bias.get(item, 0.0)) if item is not None and self.bias else 0.0

    def relevance(self, score: float, item: int | None = None) -> float:
        """``-log10(N * P(unrelated >= score))`` (see the module docstring), rounded to 3 places; the score
        read less ``item``'s bias."""
        return round(self.at(fisher(float(score)) - self.shift(item)), 3)

    def at(self, z: float) -> float:
        """The relevance of a score already on Fisher's scale (and less its item's bias), unrounded."""
        return -(math.log10(max(1, self.targets)) + _log10_tail((z - self.mean) / self.std))

    def for_query(self, reference_scores: npt.NDArray[np.float32] | None,
                  reference_ids: npt.NDArray[np.int64] | None = None) -> Calibration:
        """This pair's calibration centred and spread on one query's scores against the part's reference
        sample (``reference_ids``: its items, whose biases are taken off): their median, and the spread read
        from the 90th percentile mixed with the pair's within-query spread (``PRIOR_REFERENCE``), on
        Fisher's scale. Itself when the sample is too small (see the module docstring)."""
        n = 0 if reference_scores is None else int(reference_scores.size)
        if reference_scores is None or n < (MIN_CENTRE if self.query_std > 0 else MIN_REFERENCE):
            return self
        z = np.arctanh(np.clip(reference_scores.astype(np.float64), -_EDGE, _EDGE))
        if reference_ids is not None and self.bias:
            z = z - np.fromiter((self.bias.get(int(i), 0.0) for i in reference_ids), np.float64, len(z))
        centre, upper = _quantiles(z, (0.5, UPPER))
        spread = (upper - centre) / _Z_UPPER  # the upper half's spread: what a tail probability depends on
        if self.query_std > 0:
            spread = math.sqrt((n * spread**2 + PRIOR_REFERENCE * self.query_std**2) / (n + PRIOR_REFERENCE))
        return replace(self, mean=centre, std=max(spread, 0.1 * self.std, 1e-4))

    def to_dict(self) -> dict[str, Any]:
        """As stored: the bias (when measured) keyed by item id as a string, as JSON keeps it."""
        out = asdict(self)
        out["bias"] = {str(k): v for k, v in self.bias.items()}
        if not out["bias"]:
            del out["bias"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(float(data["mean"]), float(data["std"]), int(data["pairs"]), int(data["targets"]),
                   str(data["queries"]), float(data.get("score_mean", 0.0)), float(data.get("score_std", 0.0)),
                   float(data.get("query_std", 0.0)), {int(k): float(v) for k, v in (data.get("bias") or {}).items()})


def fisher(score: float) -> float:
    """Fisher's transform of a cosine: ``atanh``, the score kept inside (-1, 1) (quantized scores may
    overshoot)."""
    return math.atanh(min(max(score, -_EDGE), _EDGE))


@dataclass(frozen=True)
class Tail:
    """A query's nearest neighbours in a part: the ``n`` best scores above ``threshold`` (the next best),
    their excesses exponential with scale ``scale`` by chance (Fisher's scale)."""

    threshold: float
    scale: float
    n: int

    def relevance(self, score: float, shift: float = 0.0) -> float:
        return self.at(fisher(float(score)) - shift)

    def at(self, z: float) -> float:
        """The relevance of a score already on Fisher's scale (and less its item's bias)."""
        return -(math.log10(self.n) - (z - self.threshold) / self.scale / _LOG10)


def local_tail(scores: npt.NDArray[np.float32], n_part: int, shifts: npt.NDArray[np.float64] | None = None) -> Tail | None:
    """The local tail of a query's best scores in a part (any order; at least ``MIN_TAIL + 1``), fitted
    on the best ``TAIL + 1``, each less its item's bias (``shifts``, aligned with ``scores``): None when
    the part holds too few."""
    z = np.arctanh(np.clip(np.asarray(scores, dtype=np.float64).ravel(), -_EDGE, _EDGE))
    if shifts is not None:
        z = z - np.asarray(shifts, dtype=np.float64).ravel()
    z = np.sort(z[np.isfinite(z)])[::-1][: min(TAIL, n_part // 4) + 1]  # a tail: a quarter of the part at most
    if len(z) < MIN_TAIL + 1:
        return None
    excess = z[:-1] - z[-1]
    scale = _quantiles(excess, (0.5,))[0] / math.log(2.0)  # robust to the few that stand out
    return Tail(float(z[-1]), max(scale, 1e-4), len(excess))


@dataclass(frozen=True)
class Relevance:
    """A query's relevance in one part: against the part's background, or its own nearest neighbours,
    whichever says the score stands out more (see the module docstring)."""

    background: Calibration
    tail: Tail | None = None

    def __call__(self, score: float, item: int | None = None) -> float:
        z = fisher(float(score)) - self.background.shift(item)  # once: every candidate of every route asks
        value = self.background.at(z)
        return round(value if self.tail is None else max(value, self.tail.at(z)), 3)

    @classmethod
    def of(cls, background: Calibration, scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64],
           n_part: int) -> Relevance:
        """A query's relevance in a part from its background and its best candidates (``scores`` of ``ids``,
        -1 for none: a FAISS answer), their local tail read less each item's bias."""
        keep = np.asarray(ids) >= 0
        found, items = np.asarray(scores)[keep], np.asarray(ids)[keep]
        shifts = np.fromiter((background.shift(int(i)) for i in items), np.float64, len(items)) \
            if background.bias else None
        return cls(background, local_tail(found, n_part, shifts))


def _quantiles(values: npt.NDArray[np.float64], qs: tuple[float, ...]) -> list[float]:
    """``np.quantile(values, qs)`` (linear interpolation) by partial sorting: a tenth of its time on a query's
    512 reference scores, which every route of every query pays."""
    n = len(values)
    at = [q * (n - 1) for q in qs]
    lows = [int(math.floor(a)) for a in at]
    part = np.partition(values, sorted({i for lo in lows for i in (lo, min(lo + 1, n - 1))}))
    return [float(part[lo] + (a - lo) * (part[min(lo + 1, n - 1)] - part[lo])) for a, lo in zip(at, lows, strict=True)]


def _log10_tail(z: float) -> float:
    """log10 of the standard normal's upper tail at z, without underflow far out (an asymptotic form)."""
    if z < 30:
        return math.log10(max(0.5 * math.erfc(z / math.sqrt(2.0)), 1e-300))
    return (-0.5 * z * z - math.log(z * math.sqrt(2.0 * math.pi)) + math.log1p(-1.0 / (z * z))) / _LOG10


def measure(queries: npt.NDArray[np.float32], targets: npt.NDArray[np.float32], *, n_targets: int,
            query_ids: npt.NDArray[np.int64] | None = None, target_ids: npt.NDArray[np.int64] | None = None,
            source: str = "items", seed: int = 0) -> Calibration | None:
    """Measure a (query, target) pair from samples of both (at most ``QUERIES`` x ``TARGETS``); pairs of
    an item with itself (same id) are left out. Also the within-query spread and, for a part of at most
    ``REFERENCE`` items (``target_ids`` given, from ``MIN_BIAS_QUERIES`` query-like vectors), each item's
    bias (see the module docstring). None when there is nothing to pair."""
    rng = np.random.default_rng(seed)
    q_rows = _sample(rng, len(queries), QUERIES)
    t_rows = _sample(rng, len(targets), TARGETS)
    if len(q_rows) == 0 or len(t_rows) == 0:
        return None
    q = np.ascontiguousarray(queries[q_rows], dtype=np.float32)
    t = np.ascontiguousarray(targets[t_rows], dtype=np.float32)
    scores = q @ t.T
    keep = np.ones(scores.shape, dtype=bool)
    if query_ids is not None and target_ids is not None:
        keep = query_ids[q_rows][:, None] != target_ids[t_rows][None, :]
    values = scores[keep]
    if values.size < 2:
        return None
    z = np.where(keep, np.arctanh(np.clip(scores.astype(np.float64), -_EDGE, _EDGE)), np.nan)
    zv = z[keep]  # every pair's, for the pair's mean and spread (Fisher's scale taken once)
    z = z[keep.sum(axis=1) >= 2]  # a query's median needs two of its scores
    residual = z - np.nanmedian(z, axis=1, keepdims=True) if len(z) else np.zeros((0, 0))
    spread = residual[np.isfinite(residual)]
    query_std = (float(np.quantile(spread, UPPER)) - float(np.median(spread))) / _Z_UPPER if spread.size else 0.0
    bias: dict[int, float] = {}
    if target_ids is not None and len(targets) <= REFERENCE and len(z) >= MIN_BIAS_QUERIES:
        lean = np.nanmedian(residual, axis=0)  # each item's, over the queries
        lean = np.where(np.isfinite(lean), lean, 0.0)
        bias = {int(i): round(float(b), 5) for i, b in zip(target_ids[t_rows], lean, strict=True)}
    return Calibration(round(float(zv.mean()), 6), round(max(float(zv.std()), 1e-6), 6), int(values.size),
                       int(n_targets), source, round(float(values.mean()), 6), round(float(values.std()), 6),
                       round(max(query_std, 0.0), 6), bias)


def prior(dim: int, n_targets: int) -> Calibration:
    """Unrelated random directions in ``dim`` dimensions (cosines about N(0, 1/dim)): the calibration of a
    part too small to measure (a vector or two)."""
    std = 1.0 / math.sqrt(max(1, dim))
    return Calibration(0.0, round(std, 6), 0, int(n_targets), "prior", 0.0, round(std, 6))


def reference_ids(ids: npt.NDArray[np.int64], seed: int = 0) -> list[int]:
    """The part's reference sample: at most ``REFERENCE`` of its ids, seeded."""
    rows = _sample(np.random.default_rng(seed), len(ids), REFERENCE)
    return [int(i) for i in np.asarray(ids)[rows]]


def _sample(rng: np.random.Generator, n: int, k: int) -> npt.NDArray[np.int64]:
    if n <= k:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))
