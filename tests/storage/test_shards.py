"""Parquet shards: exact round trip, producer metadata, refusals, atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xmodal.errors import UserError
from xmodal.storage import shards
from xmodal.storage.shards import ShardError, read_shard, shard_meta, write_shard

META = {"space": "clip", "family": "open_clip", "identity": "ViT-B-32|sha256:abc", "normalized": True}


def vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hashes(n: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_is_exact(tmp_path: Path) -> None:
    ids = np.array([7, 3, 2**40, 1, 2**62], dtype=np.int64)  # any order, int64 range
    vecs = vectors(5)
    vecs[0, 0] = np.float32(1e-38)  # tiny and odd values survive bit for bit
    vecs[1, 1] = np.nextafter(np.float32(0.5), np.float32(1))
    path = tmp_path / "shards" / "clip" / "shard-1.parquet"
    info = write_shard(path, ids, vecs, hashes(5), META)
    assert (info.path, info.rows) == (path, 5)
    got_ids, got_vecs, meta = read_shard(path)
    assert got_ids.dtype == np.int64 and got_vecs.dtype == np.float32
    assert np.array_equal(got_ids, ids)
    assert got_vecs.shape == (5, 16)
    assert got_vecs.tobytes() == vecs.tobytes()
    assert meta == {**META, "dim": 16}
    table = pq.read_table(path)
    assert table.column("content_hash").to_pylist() == hashes(5)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 16)


def test_inputs_are_converted_to_int64_and_float32(tmp_path: Path) -> None:
    ids = [1, 2, 3]
    vecs = vectors(3, 8).astype(np.float64)
    write_shard(tmp_path / "s.parquet", np.asarray(ids, dtype=np.int32), vecs, hashes(3), META)
    got_ids, got_vecs, _ = read_shard(tmp_path / "s.parquet")
    assert got_ids.dtype == np.int64 and got_ids.tolist() == ids
    assert np.array_equal(got_vecs, vecs.astype(np.float32))


def test_empty_shard_round_trips(tmp_path: Path) -> None:
    info = write_shard(tmp_path / "s.parquet", np.zeros(0, np.int64), np.zeros((0, 32), np.float32), [], META)
    assert info.rows == 0
    ids, vecs, meta = read_shard(tmp_path / "s.parquet")
    assert ids.shape == (0,) and vecs.shape == (0, 32) and meta["dim"] == 32


def test_shard_of_many_row_groups_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "ROW_GROUP", 700)
    n = 5000
    ids = np.arange(n, dtype=np.int64) * 3
    vecs = vectors(n, 64, seed=3)
    path = tmp_path / "s.parquet"
    write_shard(path, ids, vecs, hashes(n), META)
    assert pq.ParquetFile(path).num_row_groups == 8  # the columns read back in several chunks
    got_ids, got_vecs, _ = read_shard(path)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_vecs, vecs)


def test_metadata_and_expect(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    write_shard(path, np.arange(2), vectors(2, 8), hashes(2), META)
    assert shard_meta(path) == {**META, "dim": 8}
    raw = pq.read_schema(path).metadata
    assert raw is not None and b"xmodal" in raw  # in the Arrow schema itself
    read_shard(path, expect={"space": "clip", "identity": META["identity"], "dim": 8})
    with pytest.raises(ShardError, match="identity"):
        read_shard(path, expect={"identity": "ViT-L-14|sha256:def"})
    with pytest.raises(ShardError, match="space"):
        read_shard(path, expect={"space": "clap"})
    with pytest.raises(ShardError, match="dim"):
        read_shard(path, expect={"dim": 512})
    with pytest.raises(ShardError, match="absent"):
        read_shard(path, expect={"absent": "x"})
    assert issubclass(ShardError, UserError)


def test_returned_sha256_and_size_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    info = write_shard(path, np.arange(10), vectors(10), hashes(10), META)
    data = path.read_bytes()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.bytes == len(data) == path.stat().st_size


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused(tmp_path: Path, bad: float) -> None:
    vecs = vectors(4)
    vecs[2, 5] = bad
    with pytest.raises(ValueError, match="non-finite"):
        write_shard(tmp_path / "s.parquet", np.arange(4), vecs, hashes(4), META)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(("ids", "vecs", "n_hashes"), [
    (np.arange(3), vectors(4), 4),  # fewer ids than vectors
    (np.arange(4), vectors(4), 3),  # fewer hashes
    (np.arange(4), vectors(4).reshape(-1), 4),  # 1-d vectors
    (np.arange(4), vectors(4).reshape(4, 4, 4), 4),  # 3-d vectors
])
def test_mismatched_shapes_are_refused(tmp_path: Path, ids: np.ndarray, vecs: np.ndarray, n_hashes: int) -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        write_shard(tmp_path / "s.parquet", ids, vecs, hashes(n_hashes), META)
    assert listing(tmp_path) == []


def test_no_temp_files_after_success(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    for i in range(3):
        write_shard(folder / f"shard-{i}.parquet", np.arange(3), vectors(3, seed=i), hashes(3), META)
    assert listing(folder) == ["shard-0.parquet", "shard-1.parquet", "shard-2.parquet"]


def test_failed_rename_leaves_no_temp_file_and_keeps_the_old_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.parquet"
    write_shard(path, np.arange(2), vectors(2, seed=1), hashes(2), META)
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_shard(path, np.arange(5), vectors(5, seed=2), hashes(5), META)
    assert listing(tmp_path) == ["s.parquet"]
    assert path.read_bytes() == before


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = pq.write_table

    def half_write(table: pa.Table, where: object, **kwargs: object) -> None:
        real_write(table.slice(0, 1), where, **kwargs)  # a partial file exists, then the write fails
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shards.pq, "write_table", half_write)
    with pytest.raises(OSError, match="Input/output"):
        write_shard(tmp_path / "clip" / "s.parquet", np.arange(3), vectors(3), hashes(3), META)
    assert listing(tmp_path / "clip") == []


def test_non_xmodal_parquet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"item_id": [1, 2], "vector": [[0.0, 1.0], [1.0, 0.0]]}), path)
    with pytest.raises(ShardError, match="not an xmodal shard"):
        shard_meta(path)
    with pytest.raises(ShardError, match="not an xmodal shard"):
        read_shard(path)


@pytest.mark.parametrize("content", [b"", b"not parquet at all", b"PAR1" + b"\0" * 100 + b"PAR1"])
def test_garbage_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.parquet"
    path.write_bytes(content)
    with pytest.raises(ShardError, match="cannot read shard"):
        read_shard(path)


def test_truncated_shard_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    write_shard(path, np.arange(50), vectors(50), hashes(50), META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError):
        read_shard(path)


def test_missing_shard_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="cannot read shard"):
        read_shard(tmp_path / "nope.parquet")
    assert not os.path.exists(tmp_path / "nope.parquet")


def test_window_columns_round_trip_across_row_groups(tmp_path: Path) -> None:
    from xmodal.storage.shards import ROW_GROUP, Windows, read_windows

    n = ROW_GROUP + 10
    rng = np.random.default_rng(0)
    windows: list[Windows | None] = [None] * n
    for row, k in ((3, 3), (ROW_GROUP + 5, 2)):  # one in each row group
        windows[row] = Windows(rng.random((k, 4), dtype=np.float32),
                               np.asarray([[i * 5.0, i * 5.0 + 10] for i in range(k)], dtype=np.float32))
    path = tmp_path / "w.parquet"
    write_shard(path, np.arange(n), rng.random((n, 4), dtype=np.float32), ["h"] * n, {"space": "clap"},
                windows=windows)
    got = read_windows(path, [3, 4, ROW_GROUP + 5])
    assert sorted(got) == [3, ROW_GROUP + 5]  # row 4 has none
    for row, w in got.items():
        expected = windows[row]
        assert expected is not None
        assert np.array_equal(w.vectors, expected.vectors) and np.array_equal(w.spans, expected.spans)
    with pytest.raises(ValueError, match="finite"):
        bad = Windows(np.full((2, 4), np.nan, dtype=np.float32), np.zeros((2, 2), dtype=np.float32))
        write_shard(tmp_path / "bad.parquet", np.arange(1), np.ones((1, 4), dtype=np.float32), ["h"], {}, windows=[bad])
