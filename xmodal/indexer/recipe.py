"""Index recipes: which FAISS index to build for a given data size, and with which parameters.

Every size-dependent parameter (exact vs approximate, ``nlist``, ``m``, ``nbits``, initial ``nprobe``)
is derived in :func:`choose_recipe` and nowhere else. ``build_index`` may raise ``nprobe`` after
measuring recall, and records the tuned value in the recipe it returns.
"""

from __future__ import annotations

import logging
import math

from xmodal.storage.ann import RECIPE_KINDS, IndexRecipe, RecipeKind, recipe_kind

__all__ = ["RECIPE_KINDS", "IndexRecipe", "RecipeKind", "choose_m", "choose_nbits", "choose_nlist", "choose_recipe", "recipe_kind"]

logger = logging.getLogger(__name__)

#: IVF k-means wants at least this many training points per list (FAISS warns below it).
MIN_POINTS_PER_CENTROID = 39
#: Upper bound on the number of inverted lists.
MAX_NLIST = 1 << 18
#: Smallest PQ code width we go down to for small collections.
MIN_NBITS = 4
MAX_NBITS = 8


def _pow2_floor(x: int) -> int:
    return 1 << (x.bit_length() - 1) if x >= 1 else 0


def _pow2_nearest(x: float) -> int:
    return 1 << max(0, round(math.log2(x))) if x >= 1 else 1


def choose_nlist(n: int) -> int:
    """About ``4*sqrt(n)`` rounded to a power of two, such that ``n >= 39*nlist``; 0 if impossible."""
    cap = _pow2_floor(min(n // MIN_POINTS_PER_CENTROID, MAX_NLIST))
    if cap < 1:
        return 0
    return min(_pow2_nearest(4.0 * math.sqrt(n)), cap)


def choose_nbits(n: int) -> int:
    """8 bits per PQ code when there is enough data to train 256 centroids well, else fewer (>= 4)."""
    if n >= (1 << MAX_NBITS) * MIN_POINTS_PER_CENTROID:
        return MAX_NBITS
    fit = int(math.floor(math.log2(max(n, 1) / MIN_POINTS_PER_CENTROID))) if n > 0 else 0
    return max(MIN_NBITS, min(MAX_NBITS, fit))


def choose_m(dim: int) -> int:
    """The divisor of ``dim`` closest (in ratio) to ``dim/8``: about ``dim/8`` bytes per vector at 8 bits."""
    target = max(1.0, dim / 8)
    divisors = [k for k in range(1, dim + 1) if dim % k == 0]
    # closest in log-ratio; on a tie prefer more sub-quantizers (finer codes)
    return min(divisors, key=lambda k: (abs(math.log(k / target)), -k))


def choose_recipe(n: int, dim: int, *, exact_threshold: int) -> IndexRecipe:
    """Pick the index recipe for ``n`` vectors of dimension ``dim``.

    Exact (flat) below ``exact_threshold`` or when there is too little data to train IVF-PQ;
    otherwise IVF-PQ with exact re-ranking.
    """
    if n < 0 or dim < 1 or exact_threshold < 0:
        raise ValueError(f"invalid sizes: n={n}, dim={dim}, exact_threshold={exact_threshold}")
    if n < exact_threshold:
        return IndexRecipe(kind="flat")
    nlist = choose_nlist(n)
    nbits = choose_nbits(n)
    if nlist < 1 or n < (1 << nbits):
        logger.info("%d vectors are too few to train IVF-PQ; using exact search", n)
        return IndexRecipe(kind="flat")
    m = choose_m(dim)
    nprobe = max(1, nlist // 16)
    return IndexRecipe(kind="ivfpq", nlist=nlist, m=m, nbits=nbits, refine=True, nprobe=nprobe)
