"""Index version folders: one FAISS file per part (and its re-rank store) plus ``manifest.json``,
written atomically.

Layout of a version folder::

    <final_dir>/
        manifest.json        # caller's keys + files{part: file, sha256, bytes, ntotal, recipe, points,
                             #   trained_n, store{ids, vectors}}, format_version, created_at
        image.faiss
        image.ids.npy        # re-rank store of an IVF-PQ part: ids sorted ascending (int64)
        image.vectors.npy    # and their exact vectors (float32, n x dim), memory-mapped when the recipe says so
        text.faiss

A folder is written under a hidden temporary sibling and renamed into place, so readers only ever
see complete folders. Index files are loaded only when the manifest names them with a matching
checksum and size: FAISS deserialisation is not meant for untrusted input. Store files are plain
``.npy`` arrays (read with ``allow_pickle=False``); their size, dtype and shape are checked on load and
their sha256 is recorded for ``xmodal verify``-style checks (hashing gigabytes on every load is not).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xmodal.errors import UserError
from xmodal.storage.ann import AnnPart, IndexRecipe, RerankStore, ivf_of
from xmodal.storage.layout import file_sha256, fsync_dir, fsync_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: parts are AnnParts (IVF-PQ ids in the lists, re-rank store beside)
PART_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class IndexFileError(UserError):
    """An index folder is missing, incomplete, altered, or not the one the caller expected."""


def _check_part_name(name: object) -> str:
    if not isinstance(name, str) or not PART_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid index part name {name!r}: must match ^[a-z][a-z0-9_]{{0,31}}$")
    return name


def _npy_file(array: np.ndarray) -> Path | None:
    """The ``.npy`` file whose whole data ``array`` is (a memory-mapped build scratch array), or None."""
    cur: Any = array
    while cur is not None and not isinstance(cur, np.memmap):
        cur = cur.base
    filename = getattr(cur, "filename", None)
    if cur is None or not filename:
        return None
    whole = (cur.shape == array.shape and cur.dtype == array.dtype and array.flags.c_contiguous
             and cur.ctypes.data == array.ctypes.data)
    path = Path(str(filename))
    return path if whole and path.suffix == ".npy" else None


def _save_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Write ``array`` as ``.npy`` at ``path``: a hard link when it already is a whole ``.npy`` file on
    this filesystem (a build's memory-mapped vectors: gigabytes not copied again), else written out."""
    source = _npy_file(array)
    linked = False
    if source is not None:
        try:
            os.link(source, path)  # fsync below writes the mapping's dirty pages too (same file)
            linked = True
        except OSError:  # another filesystem, or links not allowed: copy
            linked = False
    if not linked:
        with path.open("wb") as fh:
            np.save(fh, array, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
    else:
        fsync_file(path)
    return {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "dtype": str(array.dtype), "shape": list(array.shape)}


def write_index_dir(
    final_dir: Path, parts: dict[str, AnnPart], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write ``parts`` (``<part>.faiss``, and ``<part>.ids.npy`` / ``<part>.vectors.npy`` for a re-rank
    store) and the manifest to ``final_dir`` atomically.

    ``final_dir`` must not exist (``FileExistsError``). The caller's ``manifest`` is not modified;
    the returned copy has ``files``, ``format_version`` and ``created_at`` set.
    """
    final_dir = Path(final_dir)
    for name in parts:
        _check_part_name(name)
    if final_dir.exists():
        raise FileExistsError(f"index folder already exists: {final_dir}")
    parent = final_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{final_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        out = copy.deepcopy(manifest)
        files: dict[str, dict[str, Any]] = {}
        for name, part in sorted(parts.items()):
            fname = f"{name}.faiss"
            path = tmp / fname
            lists_file = part.ivfdata()
            ivfdata: dict[str, Any] | None = None
            if lists_file is not None:  # on-disk lists: beside the index, found by name when read back
                dst = tmp / f"{name}.ivfdata"
                shutil.copyfile(lists_file, dst)
                fsync_file(dst)
                lists: Any = faiss.downcast_InvertedLists(ivf_of(part.index).invlists)
                lists.filename = str(dst)
                ivfdata = {"file": dst.name, "bytes": dst.stat().st_size}
            faiss.write_index(part.index, str(path))
            fsync_file(path)
            entry: dict[str, Any] = {
                "file": fname,
                "sha256": file_sha256(path),
                "bytes": path.stat().st_size,
                "ntotal": part.ntotal,
                "recipe": part.recipe.to_dict(),
                "points": part.points,
                "trained_n": part.trained_n,
            }
            if ivfdata is not None:
                entry["ivfdata"] = ivfdata
            if part.store is not None:
                entry["store"] = {"ids": _save_array(tmp / f"{name}.ids.npy", part.store.ids),
                                  "vectors": _save_array(tmp / f"{name}.vectors.npy", part.store.vectors)}
            files[name] = entry
        out["files"] = files
        out["format_version"] = FORMAT_VERSION
        out["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        mpath = tmp / MANIFEST_NAME
        with mpath.open("w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final_dir.exists():  # re-check: os.rename would silently replace an empty directory
            raise FileExistsError(f"index folder already exists: {final_dir}")
        os.rename(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(parent)
    logger.info(
        "wrote index folder %s (%s)", final_dir, ", ".join(f"{k}={v['ntotal']}" for k, v in files.items())
    )
    return out


def read_manifest(dir: Path) -> dict[str, Any]:
    """The manifest of an index folder; ``IndexFileError`` when missing or unreadable."""
    path = Path(dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexFileError(f"no {MANIFEST_NAME} in index folder {dir}") from None
    except OSError as exc:
        raise IndexFileError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndexFileError(f"{path} is not valid JSON ({exc}); the index folder is damaged") from exc
    if not isinstance(data, dict):
        raise IndexFileError(f"{path} must hold a JSON object")
    return data


def _normalise(value: Any) -> Any:
    """JSON round trip, so tuples compare equal to lists and int keys to str keys."""
    return json.loads(json.dumps(value))


def _check_expect(dir: Path, manifest: dict[str, Any], expect: dict[str, Any]) -> None:
    for key, want in expect.items():
        if key not in manifest:
            raise IndexFileError(f"index folder {dir} has no {key!r} in its manifest (expected {want!r})")
        have = manifest[key]
        if _normalise(have) != _normalise(want):
            raise IndexFileError(
                f"index folder {dir} was built with {key}={have!r}, but {key}={want!r} is expected; "
                "rebuild the index"
            )


def _mmap_flags() -> int:
    # IO_FLAG_MMAP_IFC (faiss >= 1.10) maps flat codes and IVF lists; plain IO_FLAG_MMAP maps IVF lists only.
    # Combining them fails ("mmap only supported for File objects").
    return int(getattr(faiss, "IO_FLAG_MMAP_IFC", 0) or getattr(faiss, "IO_FLAG_MMAP", 0))


def _read_one(path: Path, mmap: bool, ondisk: bool = False) -> faiss.Index:
    if ondisk:  # the .ivfdata file is looked up beside the index file, wherever the folder now is
        try:
            return faiss.read_index(str(path), int(faiss.IO_FLAG_ONDISK_SAME_DIR))
        except RuntimeError as exc:
            raise IndexFileError(f"FAISS cannot read {path} with its on-disk lists: {exc}") from exc
    if mmap and _mmap_flags():
        try:
            return faiss.read_index(str(path), _mmap_flags())
        except RuntimeError as exc:
            logger.warning("cannot memory-map %s (%s); reading it into memory", path, exc)
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFileError(f"FAISS cannot read {path}: {exc}") from exc


def _load_store(dir: Path, part: str, entry: dict[str, Any], recipe: IndexRecipe, dim: int, ntotal: int) -> RerankStore:
    spec = entry.get("store")
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), dict) for k in ("ids", "vectors")):
        raise IndexFileError(f"manifest of {dir}: part {part!r} has a bad store entry: {spec!r}")
    arrays: dict[str, np.ndarray] = {}
    for key, dtype, shape in (("ids", "int64", [ntotal]), ("vectors", "float32", [ntotal, dim])):
        info = spec[key]
        path = dir / f"{part}.{key}.npy"
        if info.get("file") != path.name:
            raise IndexFileError(f"manifest of {dir}: part {part!r} store names {info.get('file')!r}, not {path.name}")
        if not path.is_file():
            raise IndexFileError(f"re-rank store {path} is missing; the index folder is incomplete")
        if path.stat().st_size != info.get("bytes"):
            raise IndexFileError(f"re-rank store {path} has {path.stat().st_size} bytes, manifest says "
                                 f"{info.get('bytes')}; refusing it")
        try:
            if key == "vectors" and recipe.rerank == "mmap":
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise IndexFileError(f"cannot read re-rank store {path}: {exc}") from exc
        if str(array.dtype) != dtype or list(array.shape) != shape:
            raise IndexFileError(f"re-rank store {path} holds {array.dtype} {list(array.shape)}, expected "
                                 f"{dtype} {shape}")
        arrays[key] = array
    ids = arrays["ids"]
    if ids.shape[0] > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise IndexFileError(f"re-rank store {dir / (part + '.ids.npy')} is not sorted by id; refusing it")
    return RerankStore(ids, arrays["vectors"])


def read_index_dir(
    dir: Path, *, expect: dict[str, Any] | None = None, mmap: bool = False
) -> tuple[dict[str, Any], dict[str, AnnPart]]:
    """Load an index folder: ``(manifest, {part: AnnPart})``.

    Refuses (``IndexFileError``) when a listed file is missing or its size or sha256 differ (FAISS
    files; store files by size, dtype and shape), when the manifest is malformed, or when a key of
    ``expect`` (e.g. ``{"space": "clip", "dim": 512}``) does not equal the manifest's value. Only files
    the manifest lists are opened. ``mmap`` maps the FAISS files too (a re-rank store is mapped when
    its recipe says ``rerank="mmap"``).
    """
    dir = Path(dir)
    manifest = read_manifest(dir)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFileError(
            f"index folder {dir} has format_version {version!r}; this xmodal reads {FORMAT_VERSION}"
            + (": it was built by an older xmodal, run `xmodal index` to rebuild it"
               if isinstance(version, int) and version < FORMAT_VERSION else "")
        )
    if expect:
        _check_expect(dir, manifest, expect)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IndexFileError(f"manifest of {dir} has no 'files' mapping")

    checked: dict[str, tuple[Path, dict[str, Any], IndexRecipe]] = {}
    for part, entry in files.items():
        try:
            _check_part_name(part)
        except ValueError as exc:
            raise IndexFileError(f"manifest of {dir}: {exc}") from None
        if not isinstance(entry, dict) or entry.get("file") != f"{part}.faiss":
            raise IndexFileError(f"manifest of {dir}: bad file entry for part {part!r}: {entry!r}")
        if not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
            raise IndexFileError(f"manifest of {dir}: part {part!r} has no checksum and size")
        try:
            recipe = IndexRecipe.from_dict(entry.get("recipe"))  # type: ignore[arg-type]
        except UserError as exc:
            raise IndexFileError(f"manifest of {dir}: part {part!r}: {exc}") from None
        path = dir / entry["file"]
        if not path.is_file():
            raise IndexFileError(f"index file {path} is missing; the index folder is incomplete")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IndexFileError(
                f"index file {path} has {size} bytes, manifest says {entry['bytes']}; refusing it"
            )
        if file_sha256(path) != entry["sha256"]:
            raise IndexFileError(f"index file {path} does not match its sha256 in the manifest; refusing it")
        checked[part] = (path, entry, recipe)

    parts: dict[str, AnnPart] = {}
    for part, (path, entry, recipe) in checked.items():
        lists = entry.get("ivfdata")
        if lists is not None:
            lists_path = dir / f"{part}.ivfdata"
            if not isinstance(lists, dict) or lists.get("file") != lists_path.name:
                raise IndexFileError(f"manifest of {dir}: part {part!r} has a bad ivfdata entry: {lists!r}")
            if not lists_path.is_file() or lists_path.stat().st_size != lists.get("bytes"):
                raise IndexFileError(f"inverted lists {lists_path} are missing or not the size the manifest says")
        index = _read_one(path, mmap, ondisk=lists is not None)
        ntotal = entry.get("ntotal")
        if ntotal is not None and int(index.ntotal) != ntotal:
            raise IndexFileError(f"index file {path} holds {index.ntotal} vectors, manifest says {ntotal}")
        store = _load_store(dir, part, entry, recipe, int(index.d), int(index.ntotal)) if "store" in entry else None
        if recipe.reranked and store is None:
            raise IndexFileError(f"manifest of {dir}: part {part!r} re-ranks but lists no store")
        points = entry.get("points") or []
        parts[part] = AnnPart(index, recipe, store, list(points), int(entry.get("trained_n") or 0))
    return manifest, parts
