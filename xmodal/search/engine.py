"""Query a collection: encode the query, route it to a space, search the published versions, hydrate.

The searcher loads each space's recorded model (no model flags needed) and its published index
version; ``refresh()`` swaps in newer published versions. A (query modality, target modality) pair
is searched in the space where both are native, else in ``clip`` through the clap -> clip alignment
(:func:`route`); ``any`` searches every target modality and fuses lists of different spaces (or
methods) by reciprocal rank fusion, since their scores are not comparable. Deleted or failed items are dropped at
hydration, so a deletion is visible at once, before the next build removes the vector.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np

from xmodal.config import Settings
from xmodal.encoders import Encoder, align, load_encoder, resolve_model
from xmodal.encoders.align import LoadedAlignment
from xmodal.encoders.base import AudioEncoder, ImageEncoder
from xmodal.errors import Cancelled, MediaError, UserError
from xmodal.media.image import decode_image_with_info
from xmodal.media.read import read_file
from xmodal.media.types import MediaLimits
from xmodal.spaces import (
    ANY,
    MODALITIES,
    PRIMARY,
    SPACES,
    TARGETS,
    Route,
    alignment_into,
    native_spaces,
    route,
)
from xmodal.storage.ann import AnnPart
from xmodal.storage.catalog import STATUS_OK, Catalog, Space, check_same_model
from xmodal.storage.indexfiles import read_index_dir
from xmodal.storage.layout import Layout
from xmodal.storage.shards import Windows, read_shard, read_windows

log = logging.getLogger(__name__)

MAX_K = 1000
RRF_K = 60  # reciprocal rank fusion: score = sum over lists of 1 / (RRF_K + rank)


@dataclass
class SearchResult:
    id: int
    uri: str
    modality: str
    score: float
    metadata: dict[str, Any]
    space: str
    method: str  # how the score was produced: "ip", "aligned-ip", or "rrf" when lists of spaces were fused
    space_score: float | None = None  # with "rrf": the inner product in its own space
    segment: dict[str, float] | None = None  # a long audio clip's best-matching window
    source: dict[str, str] | None = None  # a manifest item: {"id": the source's key, "column": its media column}

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "uri": self.uri, "modality": self.modality, "score": round(self.score, 6),
               "metadata": self.metadata, "space": self.space, "method": self.method}
        if self.space_score is not None:
            out["space_score"] = round(self.space_score, 6)
        if self.segment is not None:
            out["segment"] = self.segment
        if self.source is not None:
            out["source"] = self.source
        return out


class QueryMediaError(UserError):
    """An uploaded or named query file that is not usable media; of the media error's kind (too large,
    unsupported, invalid)."""

    def __init__(self, message: str, cause: MediaError) -> None:
        super().__init__(message, kind=cause.kind)
        self.reason = cause.reason


@dataclass
class _Loaded:
    version: int
    manifest: dict[str, Any]
    parts: dict[str, AnnPart]
    hide_since: datetime | None = None  # items that stopped being servable since then are left out in FAISS


@dataclass
class Timings:
    encode_ms: float = 0.0
    ann_ms: float = 0.0
    sql_ms: float = 0.0


@dataclass
class SearchOutcome:
    results: list[SearchResult]
    timings: Timings
    version: int  # the index version that answered (the primary space's)
    versions: dict[str, int] = field(default_factory=dict)  # every space's served version
    routes: list[dict[str, Any]] = field(default_factory=list)  # how each target modality was searched
    fusion: str | None = None  # how lists of different spaces were merged, when they were
    ann: dict[str, dict[str, Any]] = field(default_factory=dict)  # "space/part" -> the operating point used


@dataclass
class _Query:
    """One query: its modality and, lazily, its vector in each space."""

    modality: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    exclude: set[int] = field(default_factory=set)


class _SpaceState:
    def __init__(self, space: Space, record: dict[str, Any]) -> None:
        self.space = space
        self.record = record
        self.encoder: Any = None
        self.loaded: _Loaded | None = None


class Searcher:
    """Searches one collection across its spaces. Not thread-safe; one per worker."""

    SPACE = PRIMARY  # the primary space: images and text

    def __init__(self, settings: Settings, collection: str, *, catalog: Catalog | None = None,
                 model: tuple[str | None, str | None] | None = None, audio_model: str | None = None) -> None:
        """``model``: (model, pretrained) to load instead of the recorded paths, e.g. after the checkpoint
        moved (``audio_model`` likewise for CLAP); it must be the same model (same identity), else
        ``ModelMismatchError``."""
        self.settings = settings
        self.collection = collection
        self.catalog = catalog or Catalog(settings.resolved_database_url, create=False)
        self.layout = Layout(settings.home)
        self.collection_id = self.catalog.collection_id(collection)
        spaces = {s.name: s for s in self.catalog.spaces(self.collection_id)}
        if not spaces:
            raise UserError(f"collection {collection!r} has nothing embedded yet: run `xmodal index` first")
        self._spaces = {name: _SpaceState(sp, dict(sp.model)) for name, sp in spaces.items()}
        if model is not None and any(model) and "clip" in spaces:
            self._spaces["clip"].record = self._same_model(spaces["clip"], *model)
        if audio_model and "clap" in spaces:
            self._spaces["clap"].record = self._same_model(spaces["clap"], audio_model, None)
        self.primary = self.SPACE if self.SPACE in spaces else sorted(spaces)[0]
        self.space: Space = spaces[self.primary]
        self.limits = MediaLimits.for_queries(settings)  # query media: smaller limits than indexed media
        self._alignment: LoadedAlignment | None = None
        self._windows: dict[tuple[int, str], Windows | None] = {}

    # loading ---------------------------------------------------------------------------------

    def _state(self, space: str, *, purpose: str) -> _SpaceState:
        state = self._spaces.get(space)
        if state is None:
            sp = SPACES[space]
            what = " or ".join(MODALITIES[m].plural for m in sp.own_modalities) or f"{space} vectors"
            raise UserError(f"collection {self.collection!r} has no {what}: {purpose} needs the {space} space "
                            f"({sp.hint})")
        return state

    def encoder_for(self, space: str) -> Any:
        state = self._state(space, purpose=f"a query in the {space} space")
        if state.encoder is None:
            state.encoder = load_encoder(state.space.family, state.record, self.settings.device)
        return state.encoder

    @property
    def encoder(self) -> Encoder:
        return cast(Encoder, self.encoder_for(self.primary))

    def _same_model(self, space: Space, model: str | None, pretrained: str | None) -> dict[str, Any]:
        recorded = space.model
        record = resolve_model(space.family, model or recorded["model"], pretrained or recorded.get("pretrained"))
        check_same_model(recorded, record, collection=self.collection)
        return record

    def refresh(self) -> bool:
        """Load each space's published index version if it is not the one loaded. True when one changed."""
        changed = False
        for name, state in self._spaces.items():
            published = self.catalog.published_index(self.collection_id, name)
            if published is None:
                raise UserError(f"collection {self.collection!r} has no published index: run `xmodal index` first")
            if state.loaded is not None and state.loaded.version == published.version:
                continue
            sp = state.space
            expect = {"space": name, "identity": sp.model.get("identity"), "dim": sp.dim}
            manifest, parts = read_index_dir(self.layout.absolute(published.path), expect=expect)
            # a build reads the catalog before it publishes: hide what changed since it started (and a minute)
            since = published.created_at - timedelta(seconds=float(published.build_s or 0) + 60)
            state.loaded = _Loaded(published.version, manifest, parts, since)
            changed = True
        if changed or self._alignment is None:
            row = self.catalog.alignment(self.collection_id, align.SOURCE, align.TARGET)
            self._alignment = align.from_row(row) if row is not None else None
        return changed

    def _loaded(self, space: str) -> _Loaded:
        state = self._state(space, purpose=f"searching the {space} space")
        if state.loaded is None:
            self.refresh()
        assert state.loaded is not None
        return state.loaded

    @property
    def loaded(self) -> _Loaded:
        return self._loaded(self.primary)

    @property
    def versions(self) -> dict[str, int]:
        return {name: self._loaded(name).version for name in sorted(self._spaces)}

    @property
    def alignment(self) -> LoadedAlignment | None:
        _ = self.loaded
        return self._alignment

    def warm_up(self) -> None:
        """Load the models and the indexes now rather than on the first query."""
        for name in self._spaces:
            self.encoder_for(name)
            self._loaded(name)

    # query vectors ---------------------------------------------------------------------------

    def text_vector(self, text: str, space: str | None = None) -> np.ndarray:
        text = text.strip()
        if not text:
            raise UserError("empty text query")
        if len(text) > self.settings.max_query_chars:
            raise UserError(f"text query too long: {len(text)} characters, at most {self.settings.max_query_chars} "
                            "(XMODAL_MAX_QUERY_CHARS)")
        return self._text_vector(text, space or self.primary)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one searcher per collection for the process's life
    def _text_vector(self, text: str, space: str) -> np.ndarray:
        vec = self.encoder_for(space).embed_texts([text])[0]
        vec.setflags(write=False)  # shared by every request that repeats the query
        return vec

    def _query_file(self, path: Path, kind: str) -> bytes:
        try:
            return read_file(str(path), self.limits)
        except MediaError as exc:
            raise UserError(f"cannot use {path} as an {kind} query: {exc.reason}") from exc

    def image_vector(self, path: Path) -> np.ndarray:
        return self.image_bytes_vector(self._query_file(path, "image"), name=str(path))

    def image_bytes_vector(self, data: bytes, *, name: str = "the upload",
                           stop: Callable[[], bool] | None = None) -> np.ndarray:
        encoder = cast(ImageEncoder, self.encoder_for(native_spaces("image")[0]))
        try:
            info = decode_image_with_info(data, self.limits, min_side=encoder.image_min_side())
        except MediaError as exc:
            raise QueryMediaError(f"cannot use {name} as an image query: {exc.reason}", exc) from exc
        _check_stop(stop)
        pixels = encoder.image_transform()(info.image)
        _check_stop(stop)
        return np.asarray(encoder.embed_images(pixels[None])[0])

    def audio_vector(self, path: Path) -> np.ndarray:
        return self.audio_bytes_vector(self._query_file(path, "audio"), name=str(path))

    def audio_bytes_vector(self, data: bytes, *, name: str = "the upload",
                           stop: Callable[[], bool] | None = None) -> np.ndarray:
        """A sound's vector in the space that embeds audio: windows embedded and pooled as at indexing."""
        import dataclasses

        from xmodal.media.audio import decode_audio

        encoder = cast(AudioEncoder, self.encoder_for(native_spaces("audio")[0]))
        spec = dataclasses.replace(encoder.audio_spec(), max_seconds=self.limits.max_audio_seconds)
        try:
            decoded = decode_audio(data, spec, encoder.audio_transform(), stop=stop)
        except MediaError as exc:
            raise QueryMediaError(f"cannot use {name} as an audio query: {exc.reason}", exc) from exc
        _check_stop(stop)
        return encoder.pool(encoder.embed_windows(decoded.windows, self.settings.batch_size, stop=stop))

    def item_vector(self, item_id: int, space: str | None = None) -> np.ndarray:
        """The item's vector in a space where it is native, as the served version holds it (flat indexes
        and re-rank stores keep the exact vectors: a lookup, not a shard read per request), else from
        its Parquet shard."""
        item = self.catalog.item_by_id(self.collection_id, item_id)
        if item.status != STATUS_OK:
            raise UserError(f"item {item_id} has no vector (status {item.status}: {item.reason or 'not embedded'})")
        space = space or native_spaces(item.modality)[0]
        part = self._loaded(space).parts.get(item.modality)
        held = part.vector(int(item_id)) if part is not None else None
        if held is not None:  # else: not in this version (embedded after it)
            return held
        where = self.catalog.vector_location(item_id, space)
        if where is None:
            raise UserError(f"item {item_id} has no vector in space {space!r}")
        path, row = where
        ids, vectors, _ = read_shard(self.layout.absolute(path))
        if int(ids[row]) != item_id:
            raise RuntimeError(f"shard {path} row {row} holds item {ids[row]}, not {item_id}")
        return vectors[row]

    # search ----------------------------------------------------------------------------------

    #: query media by modality: bytes -> the vector in the modality's native space (see ``media_vector``)
    QUERY_MEDIA: dict[str, str] = {"image": "image_bytes_vector", "audio": "audio_bytes_vector"}

    def media_vector(self, modality: str, data: bytes, *, name: str = "the upload",
                     stop: Callable[[], bool] | None = None) -> np.ndarray:
        """The vector of query media of a modality, in the first space that embeds it natively."""
        method = self.QUERY_MEDIA.get(modality)
        if method is None:
            raise UserError(f"{modality} is not a query modality (queries: text, item, "
                            f"{', '.join(self.QUERY_MEDIA)})")
        return cast(np.ndarray, getattr(self, method)(data, name=name, stop=stop))

    def _query(self, *, text: str | None, media: tuple[str, bytes, str] | None, item: int | None,
               stop: Callable[[], bool] | None = None) -> _Query:
        if sum(x is not None for x in (text, media, item)) != 1:
            raise UserError("give exactly one query: text, media (an image or a sound) or item")
        if text is not None:
            return _Query("text", {})
        if media is not None:
            modality, data, name = media
            return _Query(modality, {native_spaces(modality)[0]: self.media_vector(modality, data, name=name,
                                                                                     stop=stop)})
        assert item is not None
        it = self.catalog.item_by_id(self.collection_id, int(item))
        return _Query(it.modality, {}, {int(item)})

    def _media(self, *, image: Path | None = None, image_bytes: bytes | None = None, audio: Path | None = None,
               audio_bytes: bytes | None = None) -> tuple[str, bytes, str] | None:
        """One (modality, bytes, name) from the media arguments callers name by modality (at most one)."""
        given = [(m, x) for m, x in (("image", image), ("image", image_bytes), ("audio", audio),
                                     ("audio", audio_bytes)) if x is not None]
        if len(given) > 1:
            raise UserError("give exactly one query: text, media (an image or a sound) or item")
        if not given:
            return None
        modality, value = given[0]
        if isinstance(value, bytes):
            return modality, value, "the upload"
        return modality, self._query_file(Path(value), modality), str(value)

    def _vector(self, q: _Query, space: str, *, text: str | None, item: int | None) -> np.ndarray:
        """The query's native vector in ``space``, computed once per request."""
        if space not in q.vectors:
            if text is not None:
                q.vectors[space] = self.text_vector(text, space)
            elif item is not None:
                q.vectors[space] = self.item_vector(int(item), space)
            else:  # pragma: no cover - media queries carry their one native vector
                raise UserError(f"a {q.modality} query has no vector in the {space} space")
        return q.vectors[space]

    def query_vector(self, *, text: str | None = None, image: Path | None = None, image_bytes: bytes | None = None,
                     item: int | None = None) -> np.ndarray:
        """The query's vector in the primary space, from exactly one of text, an image file or bytes, an item."""
        q = self._query(text=text, media=self._media(image=image, image_bytes=image_bytes), item=item)
        return self._vector(q, self.primary, text=text, item=item)

    def search(self, *, text: str | None = None, image: Path | None = None, audio: Path | None = None,
               item: int | None = None, target: str = "any", k: int = 10) -> list[SearchResult]:
        return self.run(text=text, image=image, audio=audio, item=item, target=target, k=k).results

    def routes(self, query: str, target: str) -> list[Route]:
        """The routes a query takes: one per target modality the collection holds (``any``: all)."""
        if target not in TARGETS:
            raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        targets = tuple(MODALITIES) if target == ANY else (target,)
        out = []
        for t in targets:
            r = route(query, t)
            missing = [sp for sp in _spaces_of(r) if sp not in self._spaces]
            if missing:  # a modality this collection has no space for, not even through an alignment
                if target == ANY:
                    continue
                self._state(missing[0], purpose=f"searching {query} -> {t}")  # raises, saying what to do
            if target == ANY and t not in self._loaded(r.space).parts:
                continue  # a modality this collection does not hold
            out.append(r)
        return out

    def run(self, *, text: str | None = None, image: Path | None = None, image_bytes: bytes | None = None,
            audio: Path | None = None, audio_bytes: bytes | None = None, item: int | None = None,
            media: tuple[str, bytes] | None = None, target: str = ANY, k: int = 10, offset: int = 0,
            where: Any = None, recall: float | None = None, stop: Callable[[], bool] | None = None) -> SearchOutcome:
        """Encode the query, search every route and merge: results ``offset`` to ``offset + k`` and where
        the time went. ``where`` is a SQLAlchemy condition on catalog items (structured filters), applied
        at hydration. ``recall``: the recall@10 this request wants from approximate indexes (the
        cheapest operating point measured at build time that reaches it), instead of the tuned one.
        ``media``: (modality, bytes) of any query modality, as an upload gives it. ``stop``: asked while
        query media decodes; True abandons the query (:class:`Cancelled`)."""
        _check_request(target, k, offset, recall)
        t0 = time.perf_counter()
        named = self._media(image=image, image_bytes=image_bytes, audio=audio, audio_bytes=audio_bytes)
        if media is not None and named is not None:
            raise UserError("give exactly one query: text, media (an image or a sound) or item")
        q = self._query(text=text, media=named or ((*media, "the upload") if media is not None else None), item=item,
                        stop=stop)
        routes = self.routes(q.modality, target)
        vectors: list[np.ndarray] = []
        for r in routes:
            aligned = alignment_into(r.space) if r.method == "aligned-ip" else None
            if aligned is not None and self.alignment is None:
                raise UserError(f"collection {self.collection!r} has no {aligned.source} -> {aligned.target} "
                                "alignment yet: run `xmodal index` again to fit it")
            if r.map_query:
                assert self._alignment is not None and aligned is not None
                source = self._vector(q, aligned.source, text=text, item=item)
                vectors.append(self._alignment.apply(source[None])[0])
            else:
                vectors.append(self._vector(q, r.space, text=text, item=item))
        encode_ms = (time.perf_counter() - t0) * 1000
        timings = Timings(encode_ms=encode_ms)
        want = k + offset
        # routes that share a space and a method give comparable scores: one list, merged by score
        groups: dict[tuple[str, str], list[tuple[Route, np.ndarray]]] = {}
        for r, v in zip(routes, vectors, strict=True):
            groups.setdefault((r.space, r.method), []).append((r, v))
        ann: dict[str, dict[str, Any]] = {}
        lists = [self._search_group(members, want, q.exclude, where, timings, recall, ann)
                 for members in groups.values()]
        fusion = None
        if len(lists) <= 1:
            results = lists[0] if lists else []
        else:
            fusion = f"rrf(k={RRF_K})"
            results = _fuse(lists)
        page = results[offset:want]
        self._add_segments(page, q, text=text, item=item)
        return SearchOutcome(page, timings, self._loaded(self.primary).version if self.primary in self._spaces
                             else 0, self.versions,
                             [{"target": r.target, "space": r.space, "method": r.method} for r in routes], fusion,
                             ann)

    def _search_group(self, members: list[tuple[Route, np.ndarray]], want: int, exclude: set[int], where: Any,
                      timings: Timings, recall: float | None = None,
                      ann: dict[str, dict[str, Any]] | None = None) -> list[SearchResult]:
        """Search the parts of one space with their query vectors; hydrate, skipping hidden items, and
        look further when many are hidden. Items deleted (or otherwise hidden) since the version was
        built are left out inside FAISS, so they don't take the places of live results."""
        space, method = members[0][0].space, members[0][0].method
        loaded = self._loaded(space)
        searches = [(r.target, np.ascontiguousarray(v, dtype=np.float32).reshape(1, -1)) for r, v in members
                    if r.target in loaded.parts]
        t0 = time.perf_counter()
        hidden = self.catalog.hidden_since(self.collection_id, loaded.hide_since) if loaded.hide_since else []
        excluded = np.asarray(sorted(exclude.union(hidden)), dtype=np.int64)
        timings.sql_ms += (time.perf_counter() - t0) * 1000
        total = sum(loaded.parts[part].ntotal for part, _ in searches)
        fetch = min(total, want + 16)
        if ann is not None:
            for part, _ in searches:
                ann[f"{space}/{part}"] = _operating_point(loaded.parts[part], recall)
        results: list[SearchResult] = []
        while fetch > 0:
            t0 = time.perf_counter()
            candidates: list[tuple[float, int]] = []
            for part, query in searches:
                scores, ids = loaded.parts[part].search(query, fetch, recall=recall, exclude=excluded)
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
                source = {"id": it.source_id, "column": it.source_column or ""} if it.source_id is not None else None
                results.append(SearchResult(item_id, it.uri, it.modality, score, it.meta or {}, space, method,
                                            source=source))
                if len(results) == want:
                    break
            if len(results) >= want or fetch >= total:
                break
            fetch = min(total, fetch * 4)  # many filtered out (or hidden after the lookup): look further
        return results

    def search_vector(self, vec: np.ndarray, *, target: str = "any", k: int = 10, offset: int = 0,
                      exclude: set[int] | None = None, where: Any = None,
                      recall: float | None = None) -> SearchOutcome:
        """A vector of the primary space against its parts (``any``: all of them, merged by score)."""
        _check_request(target, k, offset, recall)
        loaded = self.loaded
        parts = sorted(loaded.parts) if target == ANY else [target]
        members = [(Route("vector", p, self.primary, "ip"), vec) for p in parts]
        timings = Timings()
        ann: dict[str, dict[str, Any]] = {}
        results = self._search_group(members, k + offset, exclude or set(), where, timings, recall, ann)
        return SearchOutcome(results[offset:], timings, loaded.version, self.versions, ann=ann)

    # windowed items (long audio): the best window -----------------------------------------------

    def _add_segments(self, results: list[SearchResult], q: _Query, *, text: str | None, item: int | None) -> None:
        """For results pooled from several windows: the window that matches the query best, scored in the
        result's space (window vectors are native to the item's modality; carried through the alignment
        when the result came from the space it aligns into)."""
        for r in results:
            if not MODALITIES[r.modality].windowed or int(r.metadata.get("windows", 1) or 1) < 2:
                continue
            native = native_spaces(r.modality)[0]
            win = self._item_windows(r.id, native)
            if win is None:
                continue
            aligned = alignment_into(r.space)
            if r.space == native:
                scores = win.vectors @ self._vector(q, native, text=text, item=item)
            elif aligned is not None and aligned.source == native and self._alignment is not None:
                scores = self._alignment.apply(win.vectors) @ self._vector(q, r.space, text=text, item=item)
            else:
                continue
            best = int(np.argmax(scores))
            r.segment = {"start_s": round(float(win.spans[best][0]), 3), "end_s": round(float(win.spans[best][1]), 3),
                         "score": round(float(scores[best]), 6), "window": best}

    def _item_windows(self, item_id: int, space: str) -> Windows | None:
        where = self.catalog.vector_location(item_id, space)
        if where is None:
            return None
        path, row = where
        key = (item_id, f"{path}:{row}")
        if key not in self._windows:
            if len(self._windows) > 4096:
                self._windows.clear()
            self._windows[key] = read_windows(self.layout.absolute(path), [row]).get(row)
        return self._windows[key]

    def close(self) -> None:
        self.catalog.close()


def _operating_point(part: AnnPart, recall: float | None) -> dict[str, Any]:
    """How a part answers: its kind and, for an approximate one, the point used (the tuned one, or the
    measured one for the requested recall)."""
    if part.recipe.kind == "flat":
        return {"kind": "flat"}
    point = part.point_for(recall) if recall is not None else None
    return {"kind": part.recipe.kind, "nprobe": point["nprobe"] if point else part.recipe.nprobe,
            "k_factor": point["k_factor"] if point else part.recipe.k_factor,
            "probe_recall@10": point["recall@10"] if point else None}


def _spaces_of(r: Route) -> list[str]:
    """The spaces a route needs: its own, and through an alignment, the alignment's source too."""
    aligned = alignment_into(r.space) if r.method == "aligned-ip" else None
    return [r.space] + ([aligned.source] if aligned is not None else [])


def _check_stop(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise Cancelled("stopped: whoever asked for this query has gone")


def _check_request(target: str, k: int, offset: int, recall: float | None = None) -> None:
    if recall is not None and not (isinstance(recall, int | float) and 0.0 < recall <= 1.0):
        raise UserError(f"recall must be a number in (0, 1], not {recall!r}")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if not 1 <= k + offset <= MAX_K or k < 1 or offset < 0:
        raise UserError(f"k must be at least 1 and k + offset at most {MAX_K}, not k={k}, offset={offset}")


def _fuse(lists: list[list[SearchResult]]) -> list[SearchResult]:
    """Reciprocal rank fusion of per-space lists: scores of different spaces are not comparable, ranks are."""
    fused: dict[int, SearchResult] = {}
    for results in lists:
        for rank, r in enumerate(results, 1):
            score = 1.0 / (RRF_K + rank)
            if r.id in fused:
                fused[r.id].score += score
                continue
            fused[r.id] = SearchResult(r.id, r.uri, r.modality, score, r.metadata, r.space, "rrf", r.score,
                                       source=r.source)
    return sorted(fused.values(), key=lambda r: -r.score)
