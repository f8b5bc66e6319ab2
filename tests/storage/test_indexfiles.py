"""Index version folders: atomic write, checksummed read, manifest expectations."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from xmodal.errors import UserError
from xmodal.indexer.build import BuiltIndex, build_index
from xmodal.indexer.recipe import IndexRecipe
from xmodal.storage.indexfiles import (
    MANIFEST_NAME,
    IndexFileError,
    read_index_dir,
    read_manifest,
    write_index_dir,
)

DIM = 32


def unit(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((20, DIM)).astype(np.float32)
    x = c[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def parts() -> dict[str, BuiltIndex]:
    img = unit(1500, 0)
    txt = unit(300, 1)
    return {
        "image": build_index(
            img,
            np.arange(1500, dtype=np.int64) * 3 + 1,
            IndexRecipe(kind="ivfpq", nlist=16, m=4, nbits=6, nprobe=2),
        ),
        "text": build_index(txt, np.arange(300, dtype=np.int64) + 10_000, IndexRecipe(kind="flat")),
    }


def base_manifest(parts: dict[str, BuiltIndex]) -> dict:
    return {
        "space": "clip",
        "dim": DIM,
        "modalities": ["image", "text"],
        "model": {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
        "parts": {k: {"recipe": b.recipe.to_dict(), "stats": b.stats} for k, b in parts.items()},
    }


def write(tmp_path: Path, parts: dict[str, BuiltIndex], name: str = "v1") -> tuple[Path, dict]:
    final = tmp_path / "indexes" / name
    manifest = write_index_dir(final, {k: b.part for k, b in parts.items()}, base_manifest(parts))
    return final, manifest


def test_round_trip_same_results(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, written = write(tmp_path, parts)
    assert sorted(p.name for p in final.iterdir()) == [
        "image.faiss", "image.ids.npy", "image.vectors.npy", MANIFEST_NAME, "text.faiss"]
    assert written["format_version"] == 2 and written["created_at"]
    assert set(written["files"]) == {"image", "text"}
    for name, entry in written["files"].items():
        assert entry["file"] == f"{name}.faiss"
        assert len(entry["sha256"]) == 64
        assert entry["bytes"] == (final / entry["file"]).stat().st_size
        assert entry["ntotal"] == parts[name].index.ntotal
        assert entry["recipe"] == parts[name].recipe.to_dict()
        assert entry["points"] == parts[name].part.points
    store = written["files"]["image"]["store"]
    assert store["vectors"]["shape"] == [1500, DIM] and store["ids"]["dtype"] == "int64"
    assert "store" not in written["files"]["text"]
    assert read_manifest(final) == written

    q = unit(40, 7)
    for mmap in (False, True):
        manifest, loaded = read_index_dir(final, expect={"space": "clip", "dim": DIM}, mmap=mmap)
        assert manifest == written
        for name, b in parts.items():
            assert loaded[name].recipe == b.recipe  # the tuned point travels with the part
            assert loaded[name].points == b.part.points and loaded[name].trained_n == b.part.trained_n
            s0, i0 = b.part.search(q, 10)
            s1, i1 = loaded[name].search(q, 10)
            assert np.array_equal(i0, i1)
            np.testing.assert_allclose(s0, s1, rtol=1e-6)
            low = loaded[name].search(q, 10, recall=0.5)[1]
            assert np.array_equal(low, b.part.search(q, 10, recall=0.5)[1])
        # the re-rank store is memory-mapped, as the recipe says
        store_part = loaded["image"].store
        assert store_part is not None and store_part.mapped
        assert np.array_equal(np.asarray(store_part.ids), np.sort(np.arange(1500) * 3 + 1))


def test_store_held_in_ram_when_the_recipe_says(tmp_path: Path) -> None:
    x = unit(1200, 3)
    b = build_index(x, np.arange(1200), IndexRecipe(kind="ivfpq", nlist=16, m=4, nbits=6, nprobe=2, rerank="ram"))
    write_index_dir(tmp_path / "v", {"image": b.part}, {})
    _, loaded = read_index_dir(tmp_path / "v")
    store = loaded["image"].store
    assert store is not None and not store.mapped
    assert loaded["image"].resident_bytes() > 1200 * DIM * 4


@pytest.mark.parametrize("damage", ["truncate", "missing", "shape", "unsorted"])
def test_damaged_store_refused(tmp_path: Path, parts: dict[str, BuiltIndex], damage: str) -> None:
    final, written = write(tmp_path, parts)
    vectors = final / "image.vectors.npy"
    if damage == "truncate":
        vectors.write_bytes(vectors.read_bytes()[:-64])
    elif damage == "missing":
        vectors.unlink()
    elif damage == "shape":
        np.save(final / "image.ids.npy", np.arange(1499, dtype=np.int64))
        written["files"]["image"]["store"]["ids"]["bytes"] = (final / "image.ids.npy").stat().st_size
        (final / MANIFEST_NAME).write_text(json.dumps(written))
    else:
        ids = np.load(final / "image.ids.npy")
        np.save(final / "image.ids.npy", ids[::-1].copy())
    with pytest.raises(IndexFileError, match="store"):
        read_index_dir(final)


def test_older_format_says_rebuild(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, written = write(tmp_path, parts)
    written["format_version"] = 1
    (final / MANIFEST_NAME).write_text(json.dumps(written))
    with pytest.raises(IndexFileError, match="xmodal index"):
        read_index_dir(final)


def test_caller_manifest_not_modified(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    m = base_manifest(parts)
    before = json.dumps(m, sort_keys=True)
    write_index_dir(tmp_path / "v", {"text": parts["text"].part}, m)
    assert json.dumps(m, sort_keys=True) == before


def test_no_temp_dirs_left(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    write(tmp_path, parts)
    assert [p.name for p in (tmp_path / "indexes").iterdir()] == ["v1"]


def test_existing_final_dir_raises(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    with pytest.raises(FileExistsError):
        write_index_dir(final, {"text": parts["text"].part}, {})
    empty = tmp_path / "indexes" / "empty"
    empty.mkdir()
    with pytest.raises(FileExistsError):
        write_index_dir(empty, {"text": parts["text"].part}, {})
    assert sorted(p.name for p in (tmp_path / "indexes").iterdir()) == ["empty", "v1"]


@pytest.mark.parametrize("bad", ["Image", "1text", "", "a" * 33, "te-xt", "../x", "text\n"])
def test_bad_part_names(tmp_path: Path, parts: dict[str, BuiltIndex], bad: str) -> None:
    with pytest.raises(ValueError, match="part name"):
        write_index_dir(tmp_path / "v", {bad: parts["text"].part}, {})
    assert not (tmp_path / "v").exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_cleans_temp_dir(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    with pytest.raises(TypeError):
        write_index_dir(tmp_path / "v", {"text": parts["text"].part}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_tampered_file_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    path = final / "image.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="sha256"):
        read_index_dir(final)


def test_truncated_file_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    path = final / "text.faiss"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(IndexFileError, match="bytes"):
        read_index_dir(final)


def test_missing_file_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    (final / "text.faiss").unlink()
    with pytest.raises(IndexFileError, match="missing"):
        read_index_dir(final)


def test_missing_or_broken_manifest_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    (final / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(IndexFileError, match="JSON"):
        read_index_dir(final)
    (final / MANIFEST_NAME).unlink()
    with pytest.raises(IndexFileError, match="manifest.json"):
        read_index_dir(final)
    with pytest.raises(IndexFileError):
        read_manifest(tmp_path / "nowhere")


def test_manifest_without_checksum_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, written = write(tmp_path, parts)
    del written["files"]["image"]["sha256"]
    (final / MANIFEST_NAME).write_text(json.dumps(written))
    with pytest.raises(IndexFileError, match="checksum"):
        read_index_dir(final)


def test_manifest_path_traversal_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, written = write(tmp_path, parts)
    written["files"]["image"]["file"] = "../image.faiss"
    (final / MANIFEST_NAME).write_text(json.dumps(written))
    with pytest.raises(IndexFileError, match="bad file entry"):
        read_index_dir(final)


def test_unlisted_files_ignored(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    (final / "evil.faiss").write_bytes(b"not an index")
    _, loaded = read_index_dir(final)
    assert set(loaded) == {"image", "text"}


def test_expect_mismatch_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    with pytest.raises(IndexFileError, match="dim"):
        read_index_dir(final, expect={"dim": 512})
    with pytest.raises(IndexFileError, match="model"):
        read_index_dir(final, expect={"model": {"name": "ViT-L-14", "pretrained": "laion2b_s34b_b79k"}})
    with pytest.raises(IndexFileError, match="space"):
        read_index_dir(final, expect={"space": "clap"})
    with pytest.raises(IndexFileError, match="no 'modality'"):
        read_index_dir(final, expect={"modality": "image"})
    assert issubclass(IndexFileError, UserError)
    # matching expectations (tuples compare like JSON lists) pass
    model = {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    read_index_dir(final, expect={"model": model, "dim": DIM, "modalities": ("image", "text")})


def test_ntotal_mismatch_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, written = write(tmp_path, parts)
    written["files"]["text"]["ntotal"] = 1
    (final / MANIFEST_NAME).write_text(json.dumps(written))
    with pytest.raises(IndexFileError, match="vectors"):
        read_index_dir(final)


def test_unknown_format_version_refused(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, written = write(tmp_path, parts)
    written["format_version"] = 99
    (final / MANIFEST_NAME).write_text(json.dumps(written))
    with pytest.raises(IndexFileError, match="format_version"):
        read_index_dir(final)


def test_an_empty_version_round_trips(tmp_path: Path) -> None:
    """Every item deleted: the published version must hold nothing, not the previous vectors."""
    written = write_index_dir(tmp_path / "v", {}, {"space": "clip"})
    assert written["files"] == {}
    manifest, loaded = read_index_dir(tmp_path / "v", expect={"space": "clip"})
    assert loaded == {} and manifest["space"] == "clip"


def test_loaded_index_is_faiss_index(tmp_path: Path, parts: dict[str, BuiltIndex]) -> None:
    final, _ = write(tmp_path, parts)
    _, loaded = read_index_dir(final, mmap=True)
    assert isinstance(loaded["image"].index, faiss.Index)
    assert isinstance(faiss.downcast_index(loaded["image"].index), faiss.IndexIVFPQ | faiss.IndexPreTransform)
    assert loaded["image"].ntotal == 1500
