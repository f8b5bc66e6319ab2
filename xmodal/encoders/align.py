"""The alignment that carries ``clap`` vectors (audio) into the ``clip`` space (images), through text.

No model embeds both images and audio, but both CLIP and CLAP embed text. Every line of a bank of
short descriptions of sounds, scenes and objects (``xmodal/data/align_bank.txt``, 2,400 lines) is
embedded by both text towers, and a linear map ``W`` from CLAP's space to CLIP's is fitted by ridge
least squares: ``W = argmin |X W - Y|^2 + lam |W|^2`` with ``X`` the CLAP and ``Y`` the CLIP text vectors.
An aligned vector is ``normalize(x @ W)``.

Its quality is measured on held-out bank lines (20%, seeded) before the final fit on the whole bank:
the mean cosine between a mapped CLAP vector and the true CLIP vector of the same text, and how often
the mapped vector finds its own text among the held-out CLIP vectors (recall@1 and @10). The map
is stored with the collection (catalog table ``alignments``) under a key of both models' identities
and the bank's hash, and refitted whenever that key changes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from xmodal.spaces import ALIGNMENTS

log = logging.getLogger(__name__)

SOURCE = ALIGNMENTS[0].source  # the one alignment of the spaces table (clap -> clip)
TARGET = ALIGNMENTS[0].target
METHOD = "ridge least squares on a text bank"
HELD_OUT = 0.2
RIDGE = 1e-2  # lam as a fraction of the mean eigenvalue of X^T X: keeps W stable when the bank is small
BATCH = 256


@functools.lru_cache(maxsize=1)
def bank_texts() -> tuple[str, ...]:
    text = resources.files("xmodal").joinpath("data/align_bank.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def bank_sha256() -> str:
    return hashlib.sha256("\n".join(bank_texts()).encode()).hexdigest()


def alignment_key(source_identity: str, target_identity: str) -> str:
    """Changes when either model or the bank changes: the stored map is then refitted."""
    return hashlib.sha256(f"{source_identity}|{target_identity}|{bank_sha256()}|{METHOD}|{RIDGE}".encode()).hexdigest()


def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.asarray(v / np.maximum(norms, 1e-12), dtype=np.float32)


def apply(matrix: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Source-space vectors (n, d_src) -> unit vectors in the target space (n, d_dst)."""
    return normalize(np.asarray(vectors, dtype=np.float32) @ matrix)


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    gram = x64.T @ x64
    lam = RIDGE * float(np.trace(gram)) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), x64.T @ y64)
    return np.asarray(w, dtype=np.float32)


@dataclass(frozen=True)
class Fitted:
    matrix: np.ndarray
    metrics: dict[str, Any]


def fit(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> Fitted:
    """Fit on paired rows (x[i] and y[i] embed the same text); measure on a held-out part first."""
    if len(x) != len(y) or len(x) < 10:
        raise ValueError(f"need at least 10 paired rows, got {len(x)} and {len(y)}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * HELD_OUT)))
    test, train = order[:n_test], order[n_test:]
    w = _ridge(x[train], y[train])
    mapped = apply(w, x[test])
    truth = normalize(y[test])
    cosine = np.sum(mapped * truth, axis=1)
    sims = mapped @ truth.T  # does the mapped text find its own CLIP vector among the held-out ones?
    rank = (sims > sims[np.arange(n_test), np.arange(n_test)][:, None]).sum(axis=1)
    metrics = {
        "method": METHOD, "bank": int(len(x)), "bank_sha256": bank_sha256(), "train": int(len(train)),
        "held_out": int(n_test), "held_out_cosine_mean": round(float(cosine.mean()), 4),
        "held_out_recall@1": round(float((rank < 1).mean()), 4),
        "held_out_recall@10": round(float((rank < 10).mean()), 4),
        "chance_recall@1": round(1.0 / n_test, 4), "source_dim": int(x.shape[1]), "target_dim": int(y.shape[1]),
    }
    return Fitted(_ridge(x, y), metrics)


def embed_bank(embed_texts: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]) -> np.ndarray:
    return np.concatenate([embed_texts(list(texts[i : i + BATCH])) for i in range(0, len(texts), BATCH)])


@dataclass(frozen=True)
class LoadedAlignment:
    key: str
    matrix: np.ndarray
    metrics: dict[str, Any]
    source: str = SOURCE
    target: str = TARGET

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return apply(self.matrix, vectors)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.matrix.tobytes()).hexdigest()


def from_row(row: Any) -> LoadedAlignment:
    matrix = np.frombuffer(row.matrix, dtype=np.float32).reshape(row.rows, row.cols).copy()
    return LoadedAlignment(row.key, matrix, dict(row.metrics or {}), row.source, row.target)
