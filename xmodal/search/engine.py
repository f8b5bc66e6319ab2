"""Query a collection: encode the query, route it to a space, search the published versions, merge, hydrate.

The searcher loads each space's recorded model (no model flags needed) and its published index
version, with the version's calibration; ``refresh()`` swaps in newer published versions. A (query
modality, target modality) pair is searched in the space the spaces table routes it to (``spaces.route``:
where both are native, else through an alignment); ``any`` searches every target modality the collection
holds. Each result gets its calibrated relevance (``storage.calibration``), and the lists merge by it
(``search.results``; RRF on request). Deleted or failed items are left out inside FAISS and dropped at
hydration, so a deletion is visible at once, before the next build removes the vector.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np

from xmodal.config import Settings
from xmodal.encoders import Encoder, align, load_encoder, resolve_model
from xmodal.encoders.align import LoadedAlignment
from xmodal.errors import UserError
from xmodal.media.types import MediaLimits
from xmodal.search import segments as segs
from xmodal.search.filters import Filter
from xmodal.search.lexical import (
    HYBRID_BOUND,
    HYBRID_FUSION,
    choose_mode,
    fuse,
    lexical_fusion,
    lexical_results,
)
from xmodal.search.plans import EMPTY, POST, UNFILTERED, Plan, Planner, Tails, hydrate, operating_point
from xmodal.search.queries import Query, QueryVectors
from xmodal.search.results import (
    FUSIONS,
    HYBRID,
    LEXICAL,
    RRF_K,
    Cutoff,
    SearchOutcome,
    SearchResult,
    Timings,
    by_rank,
    by_relevance,
)
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
from xmodal.storage.calibration import TAIL, Calibration, Relevance
from xmodal.storage.catalog import Catalog, Space, check_same_model
from xmodal.storage.indexfiles import read_index_dir
from xmodal.storage.layout import Layout
from xmodal.storage.shards import Windows, read_windows

log = logging.getLogger(__name__)

MAX_K = 1000
# work beside a query's main search (both release the GIL): a selective filter's local tail (the query's best
# in the whole part) while the filter's matches are searched; a hybrid query's lexical list while its text is
# encoded (a text encoded before: in turn, after the vector search)
_BESIDE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="xmodal-beside")


@dataclass
class _Loaded:
    version: int
    manifest: dict[str, Any]
    parts: dict[str, AnnPart]
    hide_since: datetime | None = None  # items that stopped being servable since then are left out in FAISS
    calibration: dict[str, Calibration] = field(default_factory=dict)  # "query->part" (see storage.calibration)
    reference: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # part -> its reference sample (ids, vectors)


class _SpaceState:
    def __init__(self, space: Space, record: dict[str, Any]) -> None:
        self.space = space
        self.record = record
        self.encoder: Any = None
        self.loaded: _Loaded | None = None


class Searcher(QueryVectors):
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
        self._has_lexical: bool | None = None
        self._lexical_at: datetime | None = None  # the catalog's last item change when it was looked up
        self._planner = Planner(settings.filter_exact_max)  # filtered queries: the column view and plans
        self._tails = Tails()  # queries' local tails, for the same query again with another filter or page
        self._text_vectors = OrderedDict()  # text queries' vectors (search.queries), least recently used first

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
            t0 = time.perf_counter()
            state.encoder = load_encoder(state.space.family, state.record, self.settings.device)
            log.info("loaded the %s model %s in %.2f s", space, state.record.get("model"), time.perf_counter() - t0)
        return state.encoder

    @property
    def encoder(self) -> Encoder:
        return cast(Encoder, self.encoder_for(self.primary))

    def _same_model(self, space: Space, model: str | None, pretrained: str | None) -> dict[str, Any]:
        recorded = space.model
        record = resolve_model(space.family, model or recorded["model"], pretrained or recorded.get("pretrained"))
        check_same_model(recorded, record, collection=self.collection)
        return record

    def refresh(self, spaces: list[str] | None = None) -> bool:
        """Load each space's (or the named ``spaces``') published index version if it is not the one loaded.
        True when one changed. A query loads only the spaces it routes to (``_loaded``)."""
        changed = False
        for name, state in self._spaces.items():
            if spaces is not None and name not in spaces:
                continue
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
            calibration = {k: Calibration.from_dict(v) for k, v in (manifest.get("calibration") or {}).items()}
            state.loaded = _Loaded(published.version, manifest, parts, since, calibration,
                                   _reference(parts, manifest.get("reference") or {}))
            log.info("loaded the %s index version %d", name, published.version)
            changed = True
        if changed:
            self._has_lexical = None  # new items may have brought the collection's first words
        if changed or self._alignment is None:
            row = self.catalog.alignment(self.collection_id, align.SOURCE, align.TARGET)
            self._alignment = align.from_row(row) if row is not None else None
        return changed

    def _loaded(self, space: str) -> _Loaded:
        state = self._state(space, purpose=f"searching the {space} space")
        if state.loaded is None:
            self.refresh([space])
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

    def warm_up(self, *, filters: bool = False) -> None:
        """Load the models and the indexes now rather than on the first query (``filters``: and the column
        view that plans filtered searches, one streamed query over the items)."""
        for name in self._spaces:
            self.encoder_for(name)
            self._loaded(name)
        if filters:
            self._planner.refresh(self.catalog, self.collection_id)

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
            where: Any = None, recall: float | None = None, stop: Callable[[], bool] | None = None,
            fusion: str = "relevance", min_relevance: float | None = None,
            min_score: float | None = None, mode: str | None = None, window: int | None = None,
            arrange: Callable[[list[SearchResult]], list[SearchResult]] | None = None,
            segments: int = 1) -> SearchOutcome:
        """Encode the query, search every route, merge: results ``offset`` to ``offset + k`` and where the
        time went. ``where``: a filter, prepared (``search.filters.prepare_filter``: searched by a plan
        chosen by its selectivity, ``search.plans``) or a bare SQLAlchemy condition on catalog items
        (post-filtered); the condition is applied at hydration either way. ``recall``: the recall@10 this request wants from approximate indexes (the cheapest
        operating point measured at build time that reaches it), instead of the tuned one. ``media``:
        (modality, bytes) of any query modality, as an upload gives it. ``stop``: asked while query media
        decodes; True abandons the query (:class:`Cancelled`). ``fusion``: how the lists of several
        targets merge (``relevance``, or ``rrf``). ``min_relevance`` / ``min_score``: results below are
        dropped; a page left empty says ``no_good_match``. ``mode``: vector, lexical or hybrid (default:
        hybrid for a text on a collection with words in the full-text index, else vector; ``search.lexical``).
        ``window``: search the best ``window`` (at least ``k + offset``) and cut the page from them, after
        ``arrange`` reordered them (a sort: ``search.browse``); the outcome says how many there were.
        ``segments``: how many matching windows a windowed result lists (``search.segments``)."""
        _check_request(target, k, offset, recall, fusion)
        segs.check_segments(segments)
        if window is not None and not k + offset <= window <= MAX_K:
            raise UserError(f"the window must hold the page and at most {MAX_K} results, not {window}")
        flt = where if isinstance(where, Filter) else None  # a prepared filter: planned by its selectivity
        where = flt.condition if flt is not None else where
        t0 = time.perf_counter()
        named = self._media(image=image, image_bytes=image_bytes, audio=audio, audio_bytes=audio_bytes)
        if media is not None and named is not None:
            raise UserError("give exactly one query: text, media (an image or a sound) or item")
        only_text = text is not None and named is None and media is None and item is None
        mode = choose_mode(mode, text=only_text, has_lexical=only_text and self.has_lexical())
        if mode == LEXICAL:
            return self._lexical_run(cast(str, text), target=target, k=k, offset=offset, where=where, window=window,
                                     arrange=arrange)
        want = max(k + offset, window or 0)
        q = self._query(text=text, media=named or ((*media, "the upload") if media is not None else None), item=item,
                        stop=stop)
        routes = self.routes(q.modality, target)
        if target == ANY:  # a silent video asks nothing in the sound space: its other routes still answer
            routes = [r for r in routes if self.asks_in(q, _query_space(r), text=text, item=item)]
        words = None  # a text to encode first: the lexical list is searched beside the encoder (and the vectors)
        if mode == HYBRID and not all(self.text_encoded(cast(str, text), _query_space(r)) for r in routes):
            words = _BESIDE.submit(lexical_results, self.catalog, self.collection_id, cast(str, text), want=want,
                                   where=where, target=target, bound=HYBRID_BOUND)
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
        timings = Timings(encode_ms=(time.perf_counter() - t0) * 1000)
        cutoff = Cutoff(min_relevance, min_score)
        ann: dict[str, dict[str, Any]] = {}
        lists = [self._search_route(r, v, want, q.exclude, where, timings, recall, ann, cutoff, flt, segments)
                 for r, v in zip(routes, vectors, strict=True)]
        calibrated = all(f"{r.query}->{r.target}" in self._loaded(r.space).calibration for r in routes
                         if r.target in self._loaded(r.space).parts)
        if min_relevance is not None and not calibrated:
            raise UserError(f"collection {self.collection!r} has an index built before relevance was calibrated: "
                            "run `xmodal index` on it once (or cut on the raw score with min_score)")
        merged = by_rank(lists) if fusion == "rrf" or not calibrated else lists[0] if len(lists) == 1 \
            else by_relevance(lists)  # one list keeps its order: by raw score
        results = [r for r in merged if cutoff.passes(r)]
        used = None if len(lists) <= 1 else f"rrf(k={RRF_K})" if fusion == "rrf" else (
            "relevance" if calibrated else f"rrf(k={RRF_K}): not calibrated (rebuild with `xmodal index`)")
        if mode == HYBRID:  # a text encoded before: the lexical list after the vector one, for a thread beside
            t1 = time.perf_counter()  # it cost more than it hid (100,000 items: 4.2 ms against 3.2 in turn)
            results = fuse(results[:want], words.result() if words is not None else lexical_results(
                self.catalog, self.collection_id, cast(str, text), want=want, where=where, target=target,
                bound=HYBRID_BOUND))
            timings.sql_ms += (time.perf_counter() - t1) * 1000
            used = HYBRID_FUSION + (f"; target lists merged by {used}" if used else "")
        considered = arrange(results[:want]) if arrange is not None else results[:want]
        page = considered[offset:offset + k]
        self._add_segments(page, q, text=text, item=item, n=segments)
        return SearchOutcome(page, timings, self._loaded(self.primary).version if self.primary in self._spaces
                             else 0, {r.space: self._loaded(r.space).version for r in routes},
                             [{"target": r.target, "space": r.space, "method": r.method} for r in routes], used,
                             ann, {**cutoff.as_dict(), "dropped": sum(not cutoff.passes(r) for r in merged[:want])}
                             if cutoff else None,
                             bool(cutoff) and not results, mode, len(considered), want)

    def has_lexical(self) -> bool:
        """Whether the collection's items have words in the catalog's full-text index. Once they have, that
        stands (a hybrid search with no word matches is the vector search); until then it is looked up
        again whenever an item changed (one index lookup), so a run that brings the first words (a
        metadata-only manifest run publishes no new version) turns hybrid on without a restart."""
        if self._has_lexical:
            return True
        stamp = self.catalog.last_change(self.collection_id)
        if self._has_lexical is None or stamp != self._lexical_at:
            self._has_lexical = self.catalog.has_lexical(self.collection_id)
            self._lexical_at = stamp
        return self._has_lexical

    def _lexical_run(self, text: str, *, target: str, k: int, offset: int, where: Any, window: int | None = None,
                     arrange: Callable[[list[SearchResult]], list[SearchResult]] | None = None) -> SearchOutcome:
        """A lexical-only search: no model, no index version loaded (``search.lexical``)."""
        if not text.strip():
            raise UserError("empty text query")
        if len(text.strip()) > self.settings.max_query_chars:
            raise UserError(f"text query too long: {len(text.strip())} characters, at most "
                            f"{self.settings.max_query_chars} (XMODAL_MAX_QUERY_CHARS)")
        if not self.catalog.lexical:
            raise UserError(f"the catalog of {self.collection!r} has no full-text index yet: run `xmodal index` "
                            "once to build it (or search with mode 'vector')")
        timings = Timings()
        t0 = time.perf_counter()
        want = max(k + offset, window or 0)
        results = lexical_results(self.catalog, self.collection_id, text, want=want, where=where, target=target)
        considered = arrange(results[:want]) if arrange is not None else results[:want]
        timings.sql_ms = (time.perf_counter() - t0) * 1000
        versions = self.versions_loaded()
        return SearchOutcome(considered[offset:k + offset], timings, versions.get(self.primary, 0), versions,
                             [{"target": target, "space": "lexical", "method": "lexical"}],
                             lexical_fusion(self.catalog.backend), mode=LEXICAL, considered=len(considered),
                             window=want)

    def versions_loaded(self) -> dict[str, int]:
        """The index version of each space loaded so far (none loaded: a lexical search or a browse)."""
        return {name: st.loaded.version for name, st in self._spaces.items() if st.loaded is not None}

    def _search_route(self, r: Route, vector: np.ndarray, want: int, exclude: set[int], where: Any, timings: Timings,
                      recall: float | None, ann: dict[str, dict[str, Any]], cutoff: Cutoff,
                      flt: Filter | None = None, segments: int = 1) -> list[SearchResult]:
        """Search one route's part: the best ``want`` live items that match ``where``, each with its calibrated
        relevance. Items deleted (or otherwise hidden) since the version was built are left out inside
        FAISS, so they don't take the places of live results. A filter's plan (``search.plans``) follows
        its selectivity: no search when nothing matches, exact scores of few matches, an ANN search
        restricted to them, or post-filtering that looks further (x4) while too many are filtered out,
        until ``want`` are found, the candidates are exhausted, or what is left falls below the cutoff."""
        loaded = self._loaded(r.space)
        part = loaded.parts.get(r.target)
        if part is None:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        calibration = loaded.calibration.get(f"{r.query}->{r.target}")
        reference = loaded.reference.get(r.target)
        if calibration is not None and reference is not None:  # this query's own background in the part
            calibration = calibration.for_query(reference[1] @ query[0], reference[0])
        relevance: Relevance | None = None
        t0 = time.perf_counter()
        hidden = self.catalog.hidden_since(self.collection_id, loaded.hide_since) if loaded.hide_since else []
        excluded = np.asarray(sorted(exclude.union(hidden)), dtype=np.int64)
        t1 = time.perf_counter()
        timings.sql_ms += (t1 - t0) * 1000
        plan = (self._planner.plan(self.catalog, self.collection_id, part, flt, r.target, recall) if flt is not None
                else Plan(UNFILTERED if where is None else POST))  # a bare SQL condition: post-filtered
        info = ann[f"{r.space}/{r.target}"] = {**operating_point(part, recall), **plan.info(),
                                               "plan_ms": round((time.perf_counter() - t1) * 1000, 3)}
        if plan.name == EMPTY:
            return []
        total = part.ntotal
        tail = None  # the local tail: the query's neighbours in the whole part, searched beside the matches
        fetch = plan.first_fetch(min(total, max(want + 16, TAIL + 1)), total, want)  # the local tail: the best TAIL + 1
        # an unfiltered first round of exactly the tail's depth is the tail search itself: kept for a filter next
        keep = calibration is not None and (plan.selective or (plan.name == UNFILTERED and fetch == min(total,
                                                                                                          TAIL + 1)))
        tail_key = Tails.key(f"{r.query}->{r.target}", loaded.version, recall, query, excluded) if keep else ()
        if plan.selective and calibration is not None:  # kept from the same query before, else searched now
            relevance = self._tails.get(tail_key)
            keep = relevance is None
            tail = _BESIDE.submit(_local_relevance, part, query, calibration, recall, excluded) if keep else None
            info["local_tail"] = "searched" if keep else "kept"
        results: list[SearchResult] = []
        segmented = MODALITIES[r.target].always_segment and r.target in SPACES[r.space].modalities
        while fetch > 0:
            t0 = time.perf_counter()
            scores, ids = plan.search(part, query, fetch, recall=recall, exclude=excluded)
            if tail is not None:
                relevance, tail = tail.result(), None
            candidates = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
            if relevance is None and calibration is not None:
                relevance = Relevance.of(calibration, scores[0], ids[0], total)
            if keep and relevance is not None:
                self._tails.put(tail_key, relevance)
                keep = False
            t1 = time.perf_counter()
            timings.ann_ms += (t1 - t0) * 1000
            results, rejected = hydrate(self.catalog, candidates, exclude, where, r, relevance,
                                        None if segmented else want)  # segmented: every candidate, re-ranked below
            timings.sql_ms += (time.perf_counter() - t1) * 1000
            if plan.selective and plan.exact_count and rejected:  # the view lags the catalog: SQL decides
                plan = Plan(POST, fallback=f"{plan.name}: {rejected} candidates no longer match (the column view "
                                           "lagged the catalog); post-filtered")
                info.update(plan.info())
                fetch = plan.first_fetch(min(total, max(want + 16, TAIL + 1)), total, want)
                continue
            below = bool(cutoff) and bool(candidates) and not cutoff.passes(SearchResult(
                0, "", r.target, candidates[-1][0], {}, r.space, r.method,
                relevance(*candidates[-1]) if relevance else None))
            limit = plan.matches if plan.selective and plan.matches is not None else total
            if len(results) >= want or fetch >= limit or below:
                break
            fetch = min(limit, fetch * 4)  # many filtered out (or hidden after the lookup): look further
        if segmented:
            results = self._by_best_segment(results, query[0], relevance, segments)[:want]
        return results

    def _by_best_segment(self, results: list[SearchResult], query: np.ndarray, relevance: Relevance | None,
                         n: int = 1) -> list[SearchResult]:
        """Candidates made of segments (videos) scored by their best segment rather than by their pool, and
        re-ordered: a still from one shot matches that shot, however many other shots dilute the pool. Each
        names its best ``n`` segments (``search.segments``)."""
        for res in results:
            win = self._item_windows(res.id, res.space)
            if win is None or not len(win.vectors):
                continue
            item_relevance = functools.partial(relevance, item=res.id) if relevance else None  # its bias, where measured
            res.score = segs.attach(res, win.vectors @ query, win.spans, n, item_relevance)
            res.relevance = item_relevance(res.score) if item_relevance else None
        return sorted(results, key=lambda x: -x.score)

    # windowed items (long audio, video): the best window -----------------------------------------------

    def _add_segments(self, results: list[SearchResult], q: Query, *, text: str | None, item: int | None,
                      n: int = 1) -> None:
        """For results pooled from several windows: the ``n`` windows that match the query best, scored in the
        result's space (window vectors are native to the item's modality; carried through the alignment
        when the result came from the space it aligns into)."""
        for r in results:
            kind = MODALITIES[r.modality]
            if r.segment is not None or not kind.windowed or (int(r.metadata.get("windows", 1) or 1) < 2
                                                               and not kind.always_segment):
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
            segs.attach(r, scores, win.spans, n)

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


def _query_space(r: Route) -> str:
    """The space of the query vector a route searches with (an alignment's source, when the query is mapped)."""
    aligned = alignment_into(r.space) if r.map_query else None
    return aligned.source if aligned is not None else r.space


def _spaces_of(r: Route) -> list[str]:
    """The spaces a route needs: its own, and through an alignment, the alignment's source too."""
    aligned = alignment_into(r.space) if r.method == "aligned-ip" else None
    return [r.space] + ([aligned.source] if aligned is not None else [])


def _check_request(target: str, k: int, offset: int, recall: float | None = None, fusion: str = "relevance") -> None:
    if fusion not in FUSIONS:
        raise UserError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    if recall is not None and not (isinstance(recall, int | float) and 0.0 < recall <= 1.0):
        raise UserError(f"recall must be a number in (0, 1], not {recall!r}")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if not 1 <= k + offset <= MAX_K or k < 1 or offset < 0:
        raise UserError(f"k must be at least 1 and k + offset at most {MAX_K}, not k={k}, offset={offset}")


def _reference(parts: dict[str, AnnPart], ids: dict[str, list[int]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each part's reference sample (ids, vectors), as the part holds the vectors (a part without exact
    vectors has none)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, part_ids in ids.items():
        part = parts.get(name)
        found = [(int(i), v) for i, v in ((i, part.vector(int(i))) for i in part_ids) if v is not None] \
            if part is not None else []
        if found:
            out[name] = (np.asarray([i for i, _ in found], dtype=np.int64),
                         np.ascontiguousarray(np.stack([v for _, v in found]), dtype=np.float32))
    return out


def _local_relevance(part: AnnPart, query: np.ndarray, calibration: Calibration, recall: float | None,
                     excluded: np.ndarray) -> Relevance:
    """A query's relevance in a part with its local tail: its best ``TAIL + 1`` in the whole part."""
    scores, ids = part.search(query, min(part.ntotal, TAIL + 1), recall=recall, exclude=excluded)
    return Relevance.of(calibration, scores[0], ids[0], part.ntotal)
