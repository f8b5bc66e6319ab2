"""Index recipes: which FAISS index to build for a given size, memory budget and recall target.

Every size- and budget-dependent parameter (exact vs approximate, ``nlist``, ``m``, ``nbits``, the
``nprobe`` floor, where the re-rank vectors live) is derived in :func:`choose_recipe` and nowhere
else. The build then measures: it decides OPQ (kept where it lowers the PQ error enough to pay),
and tunes ``nprobe`` and the re-rank depth ``k_factor`` against exact search on held-out probes.

Memory model (:func:`estimate_bytes`, resident RAM of one index part):

* flat:  ``n * (4*dim + 8 + 40)``: vectors, ids and the id map's hash table;
* ivfpq: ``n * (code + 8)`` codes and list ids, ``+ nlist*dim*4`` coarse centroids,
  ``+ 2**nbits * dim * 4`` PQ centroids, ``+ dim*dim*4`` OPQ rotation, ``+ n*4*dim`` when the
  re-rank vectors are held in RAM (``rerank="ram"``; ``"mmap"`` leaves them to the page cache).
"""

from __future__ import annotations

import logging
import math

from xmodal.errors import UserError
from xmodal.storage.ann import RECIPE_KINDS, IndexRecipe, RecipeKind, recipe_kind

__all__ = [
    "RECIPE_KINDS", "IndexRecipe", "RecipeKind", "choose_m", "choose_nbits", "choose_nlist", "choose_recipe",
    "estimate_bytes", "recipe_kind", "retrain_reason", "shape_changes",
]

logger = logging.getLogger(__name__)

#: IVF k-means wants at least this many training points per list (FAISS warns below it).
MIN_POINTS_PER_CENTROID = 39
#: Upper bound on the number of inverted lists.
MAX_NLIST = 1 << 18
#: Smallest PQ code width we go down to for small collections.
MIN_NBITS = 4
MAX_NBITS = 8
#: Sub-vector widths: codes no finer than 4 dimensions per byte, no coarser than 64.
FINEST_SUBDIM = 4
COARSEST_SUBDIM = 64
#: Above this recall target, finer codes (dim/4 bytes) are chosen when the budget allows.
HIGH_RECALL = 0.97
FLAT_OVERHEAD = 8 + 40  # id + IndexIDMap2's reverse map entry
ID_BYTES = 8


def _pow2_floor(x: int) -> int:
    return 1 << (x.bit_length() - 1) if x >= 1 else 0


def choose_nlist(n: int) -> int:
    """``4*sqrt(n)`` rounded down to a power of two, such that ``n >= 39*nlist``; 0 if impossible.

    Rounding down keeps the coarse centroids (``nlist*dim*4`` bytes) near ``8*dim/sqrt(n)`` bytes
    per vector at most: 4 bytes per 512-d vector at a million."""
    cap = _pow2_floor(min(n // MIN_POINTS_PER_CENTROID, MAX_NLIST))
    if cap < 1:
        return 0
    return min(_pow2_floor(int(4.0 * math.sqrt(n))), cap)


def choose_nbits(n: int) -> int:
    """8 bits per PQ code when there is enough data to train 256 centroids well, else fewer (>= 4)."""
    if n >= (1 << MAX_NBITS) * MIN_POINTS_PER_CENTROID:
        return MAX_NBITS
    fit = int(math.floor(math.log2(max(n, 1) / MIN_POINTS_PER_CENTROID))) if n > 0 else 0
    return max(MIN_NBITS, min(MAX_NBITS, fit))


def _divisors(dim: int) -> list[int]:
    return [k for k in range(1, dim + 1) if dim % k == 0]


def choose_m(dim: int, per: int = 8) -> int:
    """The divisor of ``dim`` closest (in ratio) to ``dim/per``: about ``dim/8`` bytes per vector at 8 bits."""
    target = max(1.0, dim / per)
    # closest in log-ratio; on a tie prefer more sub-quantizers (finer codes)
    return min(_divisors(dim), key=lambda k: (abs(math.log(k / target)), -k))


def _m_range(dim: int) -> tuple[int, int]:
    """Smallest and largest sensible ``m`` for ``dim``: sub-vectors of 64 down to 4 dimensions."""
    divisors = _divisors(dim)
    lo = min((k for k in divisors if dim // k <= COARSEST_SUBDIM), default=dim)
    hi = max((k for k in divisors if dim // k >= FINEST_SUBDIM), default=lo)
    return lo, max(lo, hi)


def estimate_bytes(recipe: IndexRecipe, n: int, dim: int) -> int:
    """Resident RAM of an index part built from ``recipe`` over ``n`` vectors (see the module doc)."""
    if recipe.kind == "flat":
        return n * (4 * dim + FLAT_OVERHEAD)
    code = 0 if recipe.ondisk else (recipe.m * recipe.nbits + 7) // 8 + ID_BYTES
    fixed = recipe.nlist * dim * 4 + (1 << recipe.nbits) * dim * 4 + (dim * dim * 4 if recipe.opq is not False else 0)
    store = n * 4 * dim if recipe.rerank == "ram" else 0
    lists = recipe.nlist * 48 if recipe.ondisk else 0  # the on-disk lists' directory
    return n * code + fixed + store + lists


def choose_recipe(n: int, dim: int, *, exact_threshold: int, recall_target: float = 0.95,
                  max_memory: int | None = None) -> IndexRecipe:
    """Pick the index recipe for ``n`` vectors of dimension ``dim``.

    * Exact (flat) below ``exact_threshold`` when it fits ``max_memory``, or when there is too little
      data to train IVF-PQ.
    * Otherwise IVF-PQ: ``nlist`` up to ``4*sqrt(n)`` (a power of two); ``m`` (code bytes at 8 bits) about ``dim/8`` by
      default, ``dim/4`` for recall targets above 0.97, and with a budget the largest that fits it
      (between ``dim/64`` and ``dim/4``), or on-disk lists (codes memory-mapped) when no code fits;
      OPQ decided at build time; the exact re-rank vectors in RAM
      when the budget holds them too, else memory-mapped.

    Raises ``UserError`` when ``max_memory`` cannot hold even the coarsest codes.
    """
    if n < 0 or dim < 1 or exact_threshold < 0:
        raise ValueError(f"invalid sizes: n={n}, dim={dim}, exact_threshold={exact_threshold}")
    if not 0.0 < recall_target <= 1.0:
        raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
    if max_memory is not None and max_memory <= 0:
        raise ValueError(f"max_memory must be > 0 bytes, got {max_memory}")
    flat = IndexRecipe(kind="flat")
    flat_fits = max_memory is None or estimate_bytes(flat, n, dim) <= max_memory
    if n < exact_threshold and flat_fits:
        return flat
    nlist = choose_nlist(n)
    nbits = choose_nbits(n)
    if nlist < 1 or n < (1 << nbits):
        logger.info("%d vectors are too few to train IVF-PQ; using exact search", n)
        return flat
    lo, hi = _m_range(dim)
    preferred = choose_m(dim, 4 if recall_target > HIGH_RECALL else 8)
    preferred = min(max(preferred, lo), hi)
    nprobe = max(1, nlist // 64)

    def recipe(m: int, rerank: str, ondisk: bool = False) -> IndexRecipe:
        return IndexRecipe(kind="ivfpq", nlist=nlist, m=m, nbits=nbits, rerank=rerank,  # type: ignore[arg-type]
                           nprobe=nprobe, ondisk=ondisk)

    if max_memory is None:
        return recipe(preferred, "mmap")
    fitting = [m for m in _divisors(dim) if lo <= m <= hi and estimate_bytes(recipe(m, "mmap"), n, dim) <= max_memory]
    if not fitting:  # the codes don't fit in RAM: they go to on-disk lists, memory-mapped
        ondisk = recipe(preferred, "mmap", ondisk=True)
        if estimate_bytes(ondisk, n, dim) <= max_memory:
            return ondisk
        raise UserError(
            f"--max-index-memory {_human(max_memory)} cannot hold an index of {n:,} vectors of dim {dim}: "
            f"even with its lists on disk, the centroids need about {_human(estimate_bytes(ondisk, n, dim))}; "
            "raise the budget")
    m = max(m for m in fitting if m <= max(preferred, min(fitting)))  # the budget caps the codes
    rerank = "ram" if estimate_bytes(recipe(m, "ram"), n, dim) <= max_memory else "mmap"
    return recipe(m, rerank)


def retrain_reason(trained: IndexRecipe, n: int, dim: int, *, exact_threshold: int, recall_target: float,
                   max_memory: int | None) -> str | None:
    """Why an index trained as ``trained`` no longer suits ``n`` vectors (None when it still does):
    the chooser now picks another kind, ``nlist``, ``m`` or ``nbits``."""
    try:
        now = choose_recipe(n, dim, exact_threshold=exact_threshold, recall_target=recall_target,
                            max_memory=max_memory)
    except UserError as exc:
        return str(exc)
    if now.kind != trained.kind:
        return f"{n:,} vectors now call for a {now.kind} index, not {trained.kind}"
    changed = shape_changes(trained, now)
    return f"{n:,} vectors call for {', '.join(changed)}" if changed else None


def shape_changes(trained: IndexRecipe, now: IndexRecipe) -> list[str]:
    """What differs between a trained recipe and the one the chooser picks now, in the fields that need
    a retrain (kind, nlist, m, nbits); empty when the trained index can keep growing."""
    if now.kind != trained.kind:
        return [f"kind {trained.kind} -> {now.kind}"]
    if now.kind == "flat":
        return []
    return [f"{key} {getattr(trained, key)} -> {getattr(now, key)}" for key in ("nlist", "m", "nbits")
            if getattr(now, key) != getattr(trained, key)]


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} B"
