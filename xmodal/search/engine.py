"""Query a collection: encode the query, search the published index version, hydrate from SQL.

The searcher loads the collection's recorded model (no model flags needed) and its published index
version; ``refresh()`` swaps in a newer published version. Deleted or failed items are dropped at
hydration, so a deletion is visible at once, before the next build removes the vector.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.config import Settings
from xmodal.encoders import Encoder, load_encoder, resolve_model
from xmodal.errors import MediaError, ModelMismatchError, UserError
from xmodal.media.image import decode_image_with_info
from xmodal.media.read import read_file
from xmodal.media.types import MediaLimits
from xmodal.storage.ann import IndexRecipe
from xmodal.storage.ann import search as ann_search
from xmodal.storage.catalog import STATUS_OK, Catalog, Space, describe_model
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
        self.last = Timings()

    # loading ---------------------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.space.family, self._record, self.settings.device)
        return self._encoder

    def _same_model(self, model: str | None, pretrained: str | None) -> dict[str, Any]:
        recorded = self.space.model
        record = resolve_model(self.space.family, model or recorded["model"], pretrained or recorded.get("pretrained"))
        if record.get("identity") != recorded.get("identity"):
            raise ModelMismatchError(
                f"collection {self.collection!r} was indexed with {describe_model(recorded)}, not "
                f"{describe_model(record)}: search it with the same model"
            )
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
        return self.encoder.embed_texts([text])[0]

    def image_vector(self, path: Path) -> np.ndarray:
        try:
            data = read_file(str(path), self.limits)
            info = decode_image_with_info(data, self.limits, min_side=self.encoder.image_min_side())
        except MediaError as exc:
            raise UserError(f"cannot use {path} as an image query: {exc.reason}") from exc
        pixels = self.encoder.image_transform()(info.image)
        return self.encoder.embed_images(pixels[None])[0]

    def item_vector(self, item_id: int) -> np.ndarray:
        item = self.catalog.item_by_id(self.collection_id, item_id)
        if item.status != STATUS_OK:
            raise UserError(f"item {item_id} has no vector (status {item.status}: {item.reason or 'not embedded'})")
        where = self.catalog.vector_location(item_id, self.SPACE)
        if where is None:
            raise UserError(f"item {item_id} has no vector in space {self.SPACE!r}")
        path, row = where
        ids, vectors, _ = read_shard(self.layout.absolute(path))
        if int(ids[row]) != item_id:
            raise RuntimeError(f"shard {path} row {row} holds item {ids[row]}, not {item_id}")
        return vectors[row]

    # search ----------------------------------------------------------------------------------

    def search(self, *, text: str | None = None, image: Path | None = None, item: int | None = None,
               target: str = "any", k: int = 10) -> list[SearchResult]:
        given = [x is not None for x in (text, image, item)]
        if sum(given) != 1:
            raise UserError("give exactly one query: text, image or item")
        t0 = time.perf_counter()
        if text is not None:
            vec = self.text_vector(text)
        elif image is not None:
            vec = self.image_vector(Path(image))
        else:
            assert item is not None
            vec = self.item_vector(int(item))
        encode_ms = (time.perf_counter() - t0) * 1000
        results = self.search_vector(vec, target=target, k=k, exclude={int(item)} if item is not None else set())
        self.last.encode_ms = encode_ms
        return results

    def search_vector(self, vec: np.ndarray, *, target: str = "any", k: int = 10,
                      exclude: set[int] | None = None) -> list[SearchResult]:
        if target not in TARGETS:
            raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if not 1 <= k <= MAX_K:
            raise UserError(f"k must be between 1 and {MAX_K}, not {k}")
        exclude = exclude or set()
        loaded = self.loaded
        part_names = sorted(loaded.parts) if target == "any" else [target] if target in loaded.parts else []
        total = sum(int(loaded.parts[p].ntotal) for p in part_names)
        query = np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1)
        fetch = min(total, k + len(exclude) + 16)
        ann_ms = sql_ms = 0.0
        results: list[SearchResult] = []
        while fetch > 0:
            t0 = time.perf_counter()
            candidates: list[tuple[float, int]] = []
            for name in part_names:
                scores, ids = ann_search(loaded.parts[name], query, fetch, loaded.recipes.get(name))
                candidates += [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
            candidates.sort(key=lambda c: -c[0])
            t1 = time.perf_counter()
            ann_ms += (t1 - t0) * 1000
            wanted = [i for _, i in candidates if i not in exclude]
            items = self.catalog.items(wanted)
            sql_ms += (time.perf_counter() - t1) * 1000
            results = []
            for score, item_id in candidates:
                it = items.get(item_id)
                if it is None or item_id in exclude or it.status != STATUS_OK:
                    continue
                results.append(SearchResult(item_id, it.uri, it.modality, score, it.meta or {}, self.SPACE, "ip"))
                if len(results) == k:
                    break
            if len(results) >= k or fetch >= total:
                break
            fetch = min(total, fetch * 4)  # many hidden (deleted) items: look further
        self.last = Timings(self.last.encode_ms, ann_ms, sql_ms)
        return results

    def close(self) -> None:
        self.catalog.close()
