"""Calibration of an index version, measured while it is built (see ``storage.calibration``).

For every part of the version (a target modality) and every query modality that the spaces table routes
to this space for that target, unrelated-pair scores are measured between query-like vectors and a sample
of the part. The query-like vectors, the first of these that gives ``ENOUGH_PAIRS`` (else the one that
gives most; else a prior):

- for text, texts of the alignment bank embedded by this space's text tower (``text_probes``): short
  captions, as people type queries, where a collection's own texts are documents;
- the query modality's own vectors in this space (its part, native or carried through an alignment);
- ``proxy:<target>``: the target part against itself;
- ``proxy:space``: every vector of the space (all parts) against the part;
- ``prior``: what unrelated random directions give in this dimension (a collection of a vector or two).

Every item is left out of its pairs with itself. Samples are bounded (``QUERIES`` x ``TARGETS``), so the
cost does not grow with the collection.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from xmodal.encoders import Encoder, align
from xmodal.errors import UserError
from xmodal.spaces import MODALITIES, SPACES, route
from xmodal.storage.calibration import QUERIES, Calibration, measure, prior, reference_ids
from xmodal.storage.layout import Layout

PROBE_TEXTS = 256  # bank texts embedded as query-like text vectors per model
ENOUGH_PAIRS = 64  # a source of query-like vectors that gives this many pairs is used as it is
Stacked = dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
Probes = Callable[[], npt.NDArray[np.float32] | None]


def reference(stacked: Stacked, seed: int = 0) -> dict[str, list[int]]:
    """Each part's reference sample (ids), for each query's own background (``storage.calibration``)."""
    return {part: reference_ids(ids, seed) for part, (ids, _) in sorted(stacked.items()) if len(ids)}


def calibrate(space: str, stacked: Stacked, text_probes: Probes, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``"query->target"`` -> calibration (as a dict), for the pairs this space answers."""
    out: dict[str, dict[str, Any]] = {}
    bank: list[npt.NDArray[np.float32] | None] = []  # embedded once, on first need
    for target, (t_ids, _) in sorted(stacked.items()):
        if len(t_ids) == 0:
            continue
        for query in MODALITIES:
            if not (MODALITIES[query].upload_types or query == "text" or query in stacked):
                continue  # asked only by item id (video): never a query in a collection without it
            try:
                if route(query, target).space != space:
                    continue
            except UserError:
                continue
            if query == "text" and not bank:
                bank.append(text_probes())
            found = _best(query, target, stacked, bank[0] if bank else None, seed)
            out[f"{query}->{target}"] = found.to_dict()
    return out


def _best(query: str, target: str, stacked: Stacked, bank: npt.NDArray[np.float32] | None, seed: int) -> Calibration:
    t_ids, t_vecs = stacked[target]
    n = len(t_ids)
    sources: list[tuple[str, Callable[[], tuple[npt.NDArray[np.float32], npt.NDArray[np.int64] | None]]]] = []
    if query == "text" and bank is not None:
        sources.append(("bank", lambda: (bank, None)))
    if query in stacked:
        sources.append(("items", lambda: (stacked[query][1], stacked[query][0])))
    sources.append((f"proxy:{target}", lambda: (t_vecs, t_ids)))
    sources.append(("proxy:space", lambda: _space_sample(stacked, seed)))  # made only when reached
    best: Calibration | None = None
    for name, source in sources:
        vecs, ids = source()
        found = measure(vecs, t_vecs, n_targets=n, query_ids=ids, target_ids=t_ids,
                        source=name, seed=seed)
        if found is not None and found.pairs >= ENOUGH_PAIRS:
            return found
        if found is not None and (best is None or found.pairs > best.pairs):
            best = found
    return best if best is not None else prior(t_vecs.shape[1], n)


def _space_sample(stacked: Stacked, seed: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """At most ``QUERIES`` vectors of the whole space, drawn from every part in proportion to its size."""
    rng = np.random.default_rng(seed)
    total = sum(len(ids) for ids, _ in stacked.values())
    vecs, ids = [], []
    for part_ids, part_vecs in stacked.values():
        take = len(part_ids) if total <= QUERIES else int(round(QUERIES * len(part_ids) / total))
        rows = np.sort(rng.choice(len(part_ids), size=min(take, len(part_ids)), replace=False))
        vecs.append(np.asarray(part_vecs[rows], dtype=np.float32))
        ids.append(np.asarray(part_ids)[rows])
    return np.concatenate(vecs), np.concatenate(ids)


def text_probes(layout: Layout, space: str, record: dict[str, Any] | None,
                encoder: Callable[[], Encoder] | None) -> npt.NDArray[np.float32] | None:
    """``PROBE_TEXTS`` texts of the alignment bank embedded by a space's text tower: query-like text
    vectors. Kept per model (by identity and the bank's hash) under the data dir: stored by the alignment
    fit, which embeds the whole bank anyway (``store_text_probes``), else embedded here once. None for a
    space without text, an unknown model, or nothing stored and no ``encoder`` (a repair loads no model)."""
    cache = _probe_cache(layout, space, record)
    if cache is None:
        return None
    if cache.is_file():
        return np.asarray(np.load(cache), dtype=np.float32)
    if encoder is None:
        return None
    texts = align.bank_texts()
    vectors = np.asarray(encoder().embed_texts([texts[i] for i in _probe_rows(len(texts))]), dtype=np.float32)
    _write(cache, vectors)
    return vectors


def store_text_probes(layout: Layout, space: str, record: dict[str, Any] | None,
                      bank_vectors: npt.NDArray[np.float32]) -> None:
    """Keep the probe rows of the whole bank, as a space's text tower embedded it (for the alignment)."""
    cache = _probe_cache(layout, space, record)
    if cache is not None and not cache.is_file():
        _write(cache, np.ascontiguousarray(bank_vectors[_probe_rows(len(bank_vectors))], dtype=np.float32))


def _probe_rows(n: int) -> list[int]:
    return list(range(0, n, max(1, n // PROBE_TEXTS)))[:PROBE_TEXTS]


def _probe_cache(layout: Layout, space: str, record: dict[str, Any] | None) -> Path | None:
    if record is None or "text" not in SPACES[space].modalities:
        return None
    key = hashlib.sha256(f"{record.get('identity')}|{align.bank_sha256()}".encode()).hexdigest()[:24]
    return layout.home / "cache" / f"text-probes-{space}-{key}.npy"


def _write(path: Path, vectors: npt.NDArray[np.float32]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, vectors)
    os.replace(tmp, path)
