"""Parquet shards: one file per flush per space, an int64 ``item_id`` column, a fixed-size-list
float32 ``vector`` column and the ``content_hash`` each vector embeds.

The schema metadata records what produced the vectors (space, model record, dimension,
normalisation); reading with ``expect`` refuses a shard from another model. A shard is written to a
temporary name, fsynced and renamed; only then may the catalog record it.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xmodal.errors import UserError
from xmodal.storage.layout import file_sha256, fsync_dir, fsync_file

META_KEY = b"xmodal"
ROW_GROUP = 4096  # rows per Parquet row group: a window lookup reads one group, not the shard


class ShardError(UserError):
    """A shard is unreadable or was produced by something other than what the reader expects."""


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    rows: int
    sha256: str
    bytes: int


def write_shard(
    path: Path, ids: np.ndarray, vectors: np.ndarray, content_hashes: list[str], meta: dict[str, Any],
    windows: list[Windows | None] | None = None,
) -> ShardInfo:
    """Write a shard atomically at ``path`` (temp file, fsync, rename, fsync dir).

    ``windows``: per row, the window vectors and (start, end) seconds an audio item's vector pools,
    or None; stored in ``window_vectors`` / ``window_spans`` list columns (null for other rows).
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors) or len(content_hashes) != len(ids):
        raise ValueError(f"shard shapes disagree: ids {ids.shape}, vectors {vectors.shape}, "
                         f"hashes {len(content_hashes)}")
    if not np.isfinite(vectors).all():
        raise ValueError("refusing to write non-finite vectors to a shard")
    dim = vectors.shape[1]
    vector_col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim)
    columns: dict[str, Any] = {"item_id": pa.array(ids), "vector": vector_col, "content_hash": pa.array(content_hashes)}
    if windows is not None and any(w is not None for w in windows):
        if len(windows) != len(ids):
            raise ValueError(f"shard shapes disagree: ids {ids.shape}, windows {len(windows)}")
        columns.update(_window_columns(windows, dim))
    table = pa.table(columns)
    full_meta = {**meta, "dim": dim}
    table = table.replace_schema_metadata({META_KEY: json.dumps(full_meta, sort_keys=True).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP)
        fsync_file(tmp)
        digest = file_sha256(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return ShardInfo(path=path, rows=len(ids), sha256=digest, bytes=size)


@dataclass(frozen=True)
class Windows:
    """The window vectors (n, dim) of one audio item and the (start, end) seconds of each window."""

    vectors: np.ndarray
    spans: np.ndarray  # (n, 2) float32


def _window_columns(windows: list[Windows | None], dim: int) -> dict[str, pa.Array]:
    """Two list columns built from flat arrays (no per-float Python objects); null where a row has none."""
    for w in windows:
        if w is not None and (w.vectors.shape[1:] != (dim,) or len(w.spans) != len(w.vectors)
                              or not np.isfinite(w.vectors).all()):
            raise ValueError("window vectors must be finite, (n, dim), one span each")
    present = [w for w in windows if w is not None]
    counts = np.asarray([0 if w is None else len(w.vectors) for w in windows], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    mask = pa.array([w is None for w in windows])
    flat_vecs = np.concatenate([np.asarray(w.vectors, dtype=np.float32).reshape(-1) for w in present])
    flat_spans = np.concatenate([np.asarray(w.spans, dtype=np.float32).reshape(-1) for w in present])
    vecs = pa.FixedSizeListArray.from_arrays(pa.array(flat_vecs, type=pa.float32()), dim)
    spans = pa.FixedSizeListArray.from_arrays(pa.array(flat_spans, type=pa.float32()), 2)
    return {"window_vectors": pa.ListArray.from_arrays(offsets, vecs, mask=mask),
            "window_spans": pa.ListArray.from_arrays(offsets, spans, mask=mask)}


def read_windows(path: Path, rows: list[int]) -> dict[int, Windows]:
    """The windows of the given rows (those that have any); other rows are left out. Reads only the
    row groups that hold them."""
    pf = pq.ParquetFile(path)
    if "window_vectors" not in pf.schema_arrow.names:
        return {}
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    out: dict[int, Windows] = {}
    for group in sorted({int(np.searchsorted(starts, r, side="right")) - 1 for r in rows}):
        table = pf.read_row_group(group, columns=["window_vectors", "window_spans"])
        vec_col = table.column("window_vectors").combine_chunks()
        span_col = table.column("window_spans").combine_chunks()
        for row in rows:
            local = row - int(starts[group])
            if not 0 <= local < table.num_rows or not vec_col[local].is_valid:
                continue
            vecs = vec_col[local].values.flatten().to_numpy(zero_copy_only=False)
            spans = span_col[local].values.flatten().to_numpy(zero_copy_only=False)
            out[row] = Windows(np.asarray(vecs, dtype=np.float32).reshape(-1, vec_col.type.value_type.list_size),
                               np.asarray(spans, dtype=np.float32).reshape(-1, 2))
    return out


def shard_meta(path: Path) -> dict[str, Any]:
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise ShardError(f"cannot read shard {path}: {exc}") from exc
    if META_KEY not in raw:
        raise ShardError(f"{path} is not an xmodal shard (no xmodal schema metadata)")
    return dict(json.loads(raw[META_KEY]))


def read_shard(path: Path, *, expect: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(ids, vectors, meta) of a shard, after checking ``expect`` against its metadata."""
    meta = shard_meta(path)
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise ShardError(f"shard {path} has {key}={meta.get(key)!r}, expected {want!r}")
    table = pq.read_table(path, columns=["item_id", "vector"])
    ids = table.column("item_id").to_numpy()
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), int(meta["dim"]))
    return ids, vectors, meta
