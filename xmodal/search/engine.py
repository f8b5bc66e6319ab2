"""Query a collection: encode the query, search the published index version, hydrate from SQL.

The searcher loads the collection's recorded model (no model flags needed) and its published index
version; ``refresh()`` swaps in a newer published version. Deleted or failed items are dropped at
hydration, so a deletion is visible at once, before the next build removes the vector.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.config import Settings
from xmodal.encoders import Encoder, load_encoder, resolve_model
from xmodal.errors import MediaError, UserError
from xmodal.media.image import decode_image_with_info
from xmodal.media.read import read_file
from xmodal.media.types import MediaLimits
from xmodal.storage.ann import IndexRecipe
from xmodal.storage.ann import search as ann_search
from xmodal.storage.catalog import STATUS_OK, Catalog, Space, check_same_model
from xmodal.storage.indexfiles import read_index_dir
from xmodal.storage.layout import Layout
from xmodal.storage.shards import read_shard

log = logging.getLogger(__name__)

TARGETS = ("any", "image", "text")
MAX_K = 1000
MAX_QUERY_CHARS = 10_000


@dataclass
class SearchResult:
    id: int
    uri: str
    modality: str
    score: float
    metadata: dict[str, Any]
    space: str
    method: str  # how the score was produced: "ip" (inner product within one space)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "uri": self.uri, "modality": self.modality, "score": round(self.score, 6),
                "metadata": self.metadata, "space": self.space, "method": self.method}


class QueryMediaError(UserError):
    """An uploaded or named query file that is not a usable image (the API answers 415/422)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Loaded:
    version: int
    manifest: dict[str, Any]
    parts: dict[str, Any]
    recipes: dict[str, IndexRecipe] = field(default_factory=dict)


@dataclass
class Timings:
    encode_ms: float = 0.0
    ann_ms: float = 0.0
    sql_ms: float = 0.0


@dataclass
class SearchOutcome:
    results: list[SearchResult]
    timings: Timings
    version: int  # the index version that answered


class Searcher:
    """Searches one collection. Not thread-safe; one per worker."""

    SPACE = "clip"

    def __init__(self, settings: Settings, collection: str, *, catalog: Catalog | None = None,
                 model: tuple[str | None, str | None] | None = None) -> None:
        """``model``: (model, pretrained) to load instead of the recorded paths, e.g. after the checkpoint
        moved; it must be the same model (same identity), else ``ModelMismatchError``."""
        self.settings = settings
        self.collection = collection
        self.catalog = catalog or Catalog(settings.resolved_database_url, create=False)
        self.layout = Layout(settings.home)
        self.collection_id = self.catalog.collection_id(collection)
        spaces = {s.name: s for s in self.catalog.spaces(self.collection_id)}
        if self.SPACE not in spaces:
            raise UserError(f"collection {collection!r} has nothing embedded yet: run `xmodal index` first")
        self.space: Space = spaces[self.SPACE]
        self._record = dict(self.space.model)
        if model is not None and any(model):
            self._record = self._same_model(*model)
        self.limits = MediaLimits.from_settings(settings)
        self._encoder: Encoder | None = None
        self._loaded: _Loaded | None = None

    # loading ---------------------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.space.family, self._record, self.settings.device)
        return self._encoder

    def _same_model(self, model: str | None, pretrained: str | None) -> dict[str, Any]:
        recorded = self.space.model
        record = resolve_model(self.space.family, model or recorded["model"], pretrained or recorded.get("pretrained"))
        check_same_model(recorded, record, collection=self.collection)
        return record

    def refresh(self) -> bool:
        """Load the published index version if it is not the one loaded. True when it changed."""
        published = self.catalog.published_index(self.collection_id, self.SPACE)
        if published is None:
            raise UserError(f"collection {self.collection!r} has no published index: run `xmodal index` first")
        if self._loaded is not None and self._loaded.version == published.version:
            return False
        expect = {"space": self.SPACE, "identity": self.space.model.get("identity"), "dim": self.space.dim}
        manifest, parts = read_index_dir(self.layout.absolute(published.path), expect=expect)
        recipes = {name: IndexRecipe.from_dict(info["recipe"]) for name, info in manifest["parts"].items()}
        self._loaded = _Loaded(published.version, manifest, parts, recipes)
        return True

    @property
    def loaded(self) -> _Loaded:
        if self._loaded is None:
            self.refresh()
        assert self._loaded is not None
        return self._loaded

    def warm_up(self) -> None:
        """Load the model and the index now rather than on the first query."""
        _ = self.encoder
        _ = self.loaded

    # query vectors ---------------------------------------------------------------------------

    def text_vector(self, text: str) -> np.ndarray:
        text = text.strip()
        if not text:
            raise UserError("empty text query")
        if len(text) > MAX_QUERY_CHARS:
            raise UserError(f"text query too long: {len(text)} characters, at most {MAX_QUERY_CHARS}")
        return self._text_vector(text)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one searcher per collection for the process's life
    def _text_vector(self, text: str) -> np.ndarray:
        vec = self.encoder.embed_texts([text])[0]
        vec.setflags(write=False)  # shared by every request that repeats the query
        return vec

    def image_vector(self, path: Path) -> np.ndarray:
        try:
            data = read_file(str(path), self.limits)
        except MediaError as exc:
            raise UserError(f"cannot use {path} as an image query: {exc.reason}") from exc
        return self.image_bytes_vector(data, name=str(path))

    def image_bytes_vector(self, data: bytes, *, name: str = "the upload") -> np.ndarray:
        try:
            info = decode_image_with_info(data, self.limits, min_side=self.encoder.image_min_side())
        except MediaError as exc:
            raise QueryMediaError(f"cannot use {name} as an image query: {exc.reason}", exc.reason) from exc
        pixels = self.encoder.image_transform()(info.image)
        return self.encoder.embed_images(pixels[None])[0]

    def item_vector(self, item_id: int) -> np.ndarray:
        """The item's vector as the served version holds it (exact: flat and refine-flat keep the
        vectors; a lookup in memory, not a shard read per request), else from its Parquet shard."""
        item = self.catalog.item_by_id(self.collection_id, item_id)
        if item.status != STATUS_OK:
            raise UserError(f"item {item_id} has no vector (status {item.status}: {item.reason or 'not embedded'})")
        part = self.loaded.parts.get(item.modality)
        if part is not None:
            try:
                return np.asarray(part.reconstruct(int(item_id)), dtype=np.float32)
            except RuntimeError:  # not in this version (embedded after it), or an index without the vectors
                pass
        where = self.catalog.vector_location(item_id, self.SPACE)
        if where is None:
            raise UserError(f"item {item_id} has no vector in space {self.SPACE!r}")
        path, row = where
        ids, vectors, _ = read_shard(self.layout.absolute(path))
        if int(ids[row]) != item_id:
            raise RuntimeError(f"shard {path} row {row} holds item {ids[row]}, not {item_id}")
        return vectors[row]

    # search ----------------------------------------------------------------------------------

    def query_vector(self, *, text: str | None = None, image: Path | None = None, image_bytes: bytes | None = None,
                     item: int | None = None) -> np.ndarray:
        """The query's vector in this space, from exactly one of text, an image file or bytes, an item."""
        given = [x is not None for x in (text, image, image_bytes, item)]
        if sum(given) != 1:
            raise UserError("give exactly one query: text, image or item")
        if text is not None:
            return self.text_vector(text)
        if image is not None:
            return self.image_vector(Path(image))
        if image_bytes is not None:
            return self.image_bytes_vector(image_bytes)
        assert item is not None
        return self.item_vector(int(item))

    def search(self, *, text: str | None = None, image: Path | None = None, item: int | None = None,
               target: str = "any", k: int = 10) -> list[SearchResult]:
        return self.run(text=text, image=image, item=item, target=target, k=k).results

    def run(self, *, text: str | None = None, image: Path | None = None, image_bytes: bytes | None = None,
            item: int | None = None, target: str = "any", k: int = 10, offset: int = 0,
            where: Any = None) -> SearchOutcome:
        """Encode the query and search: results ``offset`` to ``offset + k`` and where the time went.
        ``where`` is a SQLAlchemy condition on catalog items (structured filters), applied at hydration."""
        t0 = time.perf_counter()
        vec = self.query_vector(text=text, image=image, image_bytes=image_bytes, item=item)
        encode_ms = (time.perf_counter() - t0) * 1000
        outcome = self.search_vector(vec, target=target, k=k, offset=offset, where=where,
                                     exclude={int(item)} if item is not None else set())
        outcome.timings.encode_ms = encode_ms
        return outcome

    def search_vector(self, vec: np.ndarray, *, target: str = "any", k: int = 10, offset: int = 0,
                      exclude: set[int] | None = None, where: Any = None) -> SearchOutcome:
        if target not in TARGETS:
            raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if not 1 <= k + offset <= MAX_K or k < 1 or offset < 0:
            raise UserError(f"k must be at least 1 and k + offset at most {MAX_K}, not k={k}, offset={offset}")
        exclude = exclude or set()
        want = k + offset
        loaded = self.loaded  # one version for the whole request, even if a newer one is swapped in meanwhile
        part_names = sorted(loaded.parts) if target == "any" else [target] if target in loaded.parts else []
        total = sum(int(loaded.parts[p].ntotal) for p in part_names)
        query = np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1)
        fetch = min(total, want + len(exclude) + 16)
        timings = Timings()
        results: list[SearchResult] = []
        while fetch > 0:
            t0 = time.perf_counter()
            candidates: list[tuple[float, int]] = []
            for name in part_names:
                scores, ids = ann_search(loaded.parts[name], query, fetch, loaded.recipes.get(name))
                candidates += [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
            candidates.sort(key=lambda c: -c[0])
            t1 = time.perf_counter()
            timings.ann_ms += (t1 - t0) * 1000
            items = self.catalog.items([i for _, i in candidates if i not in exclude], where=where)
            timings.sql_ms += (time.perf_counter() - t1) * 1000
            results = []
            for score, item_id in candidates:
                it = items.get(item_id)
                if it is None or item_id in exclude or it.status != STATUS_OK:
                    continue
                results.append(SearchResult(item_id, it.uri, it.modality, score, it.meta or {}, self.SPACE, "ip"))
                if len(results) == want:
                    break
            if len(results) >= want or fetch >= total:
                break
            fetch = min(total, fetch * 4)  # many hidden (deleted or filtered out) items: look further
        return SearchOutcome(results[offset:], timings, loaded.version)

    def close(self) -> None:
        self.catalog.close()
