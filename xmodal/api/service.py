"""What the HTTP routes call: served collections, readiness, live index swaps, hydration to JSON,
media and thumbnails. Routes validate and call these methods with keyword arguments, nothing more.

Loading (models and indexes) runs in a background thread so that ``/readyz`` can answer 503 until it is
done. The same thread then polls the catalog for newly published index versions and swaps them in:
a request holds the version it started with until it finishes, and the old version is freed when the
last such request lets go of it (reference counting), so no request fails or stalls during a swap.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.requests import Request

from xmodal.api.files import VerifiedFile, open_verified
from xmodal.api.heavy import HeavyWork, until_disconnect
from xmodal.api.metrics import Metrics
from xmodal.config import Settings
from xmodal.errors import (
    ConflictError,
    ErrorKind,
    MediaError,
    NotFoundError,
    NotReadyError,
    UserError,
    XmodalError,
)
from xmodal.media.fetch import fetch_bytes, is_remote
from xmodal.media.image import decode_image_with_info
from xmodal.media.types import MediaLimits
from xmodal.media.video import Source, VideoLimits, video_frame
from xmodal.search import products
from xmodal.search.browse import Page, find
from xmodal.search.engine import Searcher
from xmodal.search.filters import metadata_fields, prepare_filter
from xmodal.spaces import ANY, UPLOAD_TYPES, upload_modality
from xmodal.storage.catalog import STATUS_OK, Catalog, Item
from xmodal.storage.uris import is_under, uri_to_path

log = logging.getLogger(__name__)



THUMBNAIL_VIDEO_S = 10.0  # at most this long decoding towards a video thumbnail's frame


class Service:
    def __init__(self, settings: Settings, collections: list[str] | None = None) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.resolved_database_url, create=False)
        names = collections or self.catalog.collection_names()
        if not names:
            raise UserError("no collections to serve: run `xmodal index` first")
        for name in names:
            self.catalog.collection_id(name)  # unknown names fail now, with the list of known ones
        self.names = list(names)
        self.metrics = Metrics()
        self.searchers: dict[str, Searcher] = {}
        self.fields: dict[str, dict[str, str]] = {}
        self._fields_at: dict[str, Any] = {}  # the catalog's last change when each field list was read
        self._roots: dict[str, list[str]] = {}
        self._by_id: dict[int, str] = {}
        self.heavy = HeavyWork(settings.query_concurrency)
        self._thumbnails = threading.BoundedSemaphore(settings.query_concurrency)  # made one at a time each
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xmodal-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.catalog.close()

    def _run(self) -> None:
        try:
            for name in self.names:
                searcher = Searcher(self.settings, name, catalog=self.catalog)
                searcher.warm_up(filters=True)  # the first filtered request does not build the column view
                self.searchers[name] = searcher
                self._by_id[searcher.collection_id] = name
                self._after_load(name)
            self.ready.set()
            log.info("serving %s", ", ".join(self.names))
        except Exception as exc:  # readyz says why; the process stays up for healthz and logs
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading failed")
            return
        while not self._stop.wait(self.settings.index_poll_seconds):
            for name, searcher in self.searchers.items():
                try:
                    if searcher.refresh():
                        self._after_load(name)
                        log.info("%s: now serving index version %d", name, searcher.loaded.version)
                except Exception:  # a broken new version must not take the served one down
                    log.exception("%s: could not load the new index version; still serving the old one", name)

    def _after_load(self, name: str) -> None:
        searcher = self.searchers[name]
        self._fields(name)
        self._roots[name] = self.catalog.source_roots(searcher.collection_id)
        loaded = searcher.loaded
        files = loaded.manifest.get("files", {})
        self.metrics.index(name, searcher.SPACE, loaded.version,
                           sum(int(p.ntotal) for p in loaded.parts.values()),
                           sum(int(f.get("bytes", 0)) for f in files.values()))

    def _fields(self, name: str) -> dict[str, str]:
        """The filterable fields of a collection as the catalog has them now: read again when an item
        changed since (one index lookup), so a column added by a metadata-only run (no new index version)
        is listed and filterable once that run commits, without a restart."""
        collection_id = self.catalog.collection_id(name)
        stamp = self.catalog.last_change(collection_id)
        if name not in self.fields or self._fields_at.get(name) != stamp:
            self.fields[name] = metadata_fields(self.catalog, collection_id)
            self._fields_at[name] = stamp
        return self.fields[name]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.ready.is_set():
            return True, {"status": "ready",
                          "collections": {n: s.loaded.version for n, s in self.searchers.items()}}
        if self.load_error:
            return False, {"status": "failed", "message": self.load_error}
        return False, {"status": "loading", "message": "loading models and indexes"}

    def _searcher(self, collection: str) -> Searcher:
        if not self.ready.is_set():
            raise NotReadyError("the service is still loading its models and indexes")
        searcher = self.searchers.get(collection)
        if searcher is None:
            raise NotFoundError(f"collection {collection!r} is not served (served: {', '.join(self.names)})")
        return searcher

    # collections -------------------------------------------------------------------------------

    def collections(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names:
            counts = self.catalog.counts(self.catalog.collection_id(name))
            searcher = self.searchers.get(name)
            out.append({
                "name": name, "items": counts["status"], "modalities": counts["modality"],
                "metadata_fields": self._fields(name),
                "index_version": searcher.loaded.version if searcher and self.ready.is_set() else None,
                "model": searcher.space.model.get("model") if searcher else None,
            })
        return out

    # search ------------------------------------------------------------------------------------

    def search(self, *, collection: str, text: str | None = None, item_id: int | None = None,
               media: tuple[str, bytes] | None = None, target: str = ANY, k: int = 12, offset: int = 0,
               filters: dict[str, Any] | None = None, recall: float | None = None, fusion: str = "relevance",
               min_relevance: float | None = None, min_score: float | None = None,
               cancel: threading.Event | None = None, mode: str | None = None, sort: list[dict[str, str]] | None = None,
               facets: list[str] | None = None, group_by: str | None = None,
               group_weights: dict[str, Any] | None = None, segments: int = 1) -> dict[str, Any]:
        """A query by text, item, or ``media`` (modality, bytes: an upload), or none (a browse by filters);
        ``mode``: vector, lexical, hybrid; ``sort``, ``facets``, totals: ``search.browse``; ``group_by``: source
        (one result per product) or none (``search.products``); ``segments``: matching windows listed per
        windowed result (``search.segments``)."""
        searcher = self._searcher(collection)
        fields = self._fields(collection) if filters or sort or facets else {}  # unfiltered: no catalog lookup
        where = prepare_filter(filters, fields) if filters else None  # planned by selectivity (search.plans)
        t0 = time.perf_counter()
        page = find(searcher, fields=fields, where=where, sort=sort, facets=facets, group_by=group_by,
                    group_weights=group_weights, k=k, offset=offset, target=target, mode=mode, text=text, item=item_id,
                    media=media, recall=recall, fusion=fusion, min_relevance=min_relevance, min_score=min_score,
                    stop=cancel.is_set if cancel is not None else None, segments=segments)
        total_ms = (time.perf_counter() - t0) * 1000
        self.metrics.stages(page.outcome.timings)
        return self._response(collection, target, k, offset, page, total_ms)

    async def search_upload(self, *, request: Request, collection: str, data: bytes, media_type: str,
                            target: str = "any", k: int = 12, offset: int = 0,
                            filters: dict[str, Any] | None = None, recall: float | None = None,
                            fusion: str = "relevance", min_relevance: float | None = None,
                            min_score: float | None = None, group_by: str | None = None,
                            group_weights: dict[str, Any] | None = None, segments: int = 1) -> dict[str, Any]:
        """A query by uploaded media: at most ``query_concurrency`` at once (503 beyond), in a worker
        thread, abandoned if the client disconnects (499 in the metrics)."""
        modality = upload_modality(media_type)
        if modality is None:
            declared = media_type.split(";")[0].strip().lower()
            raise XmodalError(f"file type {declared or 'unknown'!r} is not accepted; send one of "
                              f"{', '.join(sorted(UPLOAD_TYPES))}", kind=ErrorKind.UNSUPPORTED_MEDIA)
        self._searcher(collection)  # not ready, unknown collection: said before any work
        async with self.heavy.slot():
            return await until_disconnect(request, lambda cancel: self.search(
                collection=collection, media=(modality, data), target=target, k=k, offset=offset, filters=filters,
                recall=recall, fusion=fusion, min_relevance=min_relevance, min_score=min_score, cancel=cancel,
                group_by=group_by, group_weights=group_weights, segments=segments))

    def similar(self, *, item_id: int, collection: str | None = None, target: str = "any", k: int = 12,
                offset: int = 0, filters: dict[str, Any] | None = None, recall: float | None = None,
                fusion: str = "relevance", min_relevance: float | None = None,
                min_score: float | None = None, group_by: str | None = None,
                group_weights: dict[str, Any] | None = None, segments: int = 1) -> dict[str, Any]:
        item = self._item(item_id)
        served = self._by_id.get(item.collection_id)
        if collection is not None and collection != served:
            raise NotFoundError(f"item {item_id} is not in collection {collection!r}")
        assert served is not None
        return self.search(collection=served, item_id=item_id, target=target, k=k, offset=offset, filters=filters,
                           recall=recall,
                           fusion=fusion, min_relevance=min_relevance, min_score=min_score, group_by=group_by,
                           group_weights=group_weights, segments=segments)

    def _response(self, collection: str, target: str, k: int, offset: int, page: Page,
                  total_ms: float) -> dict[str, Any]:
        outcome = page.outcome
        t = outcome.timings
        return {
            "collection": collection, "target": target, "k": k, "offset": offset,
            "index_version": outcome.version, "mode": outcome.mode, "routes": outcome.routes, "fusion": outcome.fusion, "ann": outcome.ann,
            "cutoff": outcome.cutoff, "no_good_match": outcome.no_good_match, **page.as_dict(),
            "results": page.results(lambda r: {**r.as_dict(), "uri": self._client_uri(collection, r.uri),
                                               **products.item_links(r.id, r.modality, r.segment)}),
            "timings_ms": {"encode": round(t.encode_ms, 3), "ann": round(t.ann_ms, 3), "sql": round(t.sql_ms, 3),
                           "total": round(total_ms, 3)},
        }

    def _client_uri(self, collection: str, uri: str) -> str | None:
        """What a client sees of an item's location (``client_uris``): the absolute server path, the path
        from its source folder (named by that folder: ``Pictures/2024/a.jpg``), or nothing. URLs and
        manifest keys are not server paths and are shown as they are."""
        mode = self.settings.client_uris
        if mode == "absolute" or is_remote(uri) or uri.startswith("manifest:"):
            return uri
        if mode == "none":
            return None
        path = uri_to_path(uri)
        roots = self._roots.get(collection, [])
        for candidate in (path, os.path.realpath(path)):
            under = [r for r in roots if is_under(candidate, [r])]
            if under:
                root = max(under, key=len)
                return os.path.join(os.path.basename(root.rstrip(os.sep)), os.path.relpath(candidate, root))
        return os.path.basename(path)

    # items -------------------------------------------------------------------------------------

    def _item(self, item_id: int) -> Item:
        if not self.ready.is_set():
            raise NotReadyError("the service is still loading its models and indexes")
        found = self.catalog.items([item_id]).get(item_id)
        if found is None or found.status != STATUS_OK or found.collection_id not in self._by_id:
            raise NotFoundError(f"no item with id {item_id}")
        return found

    def item(self, *, item_id: int) -> dict[str, Any]:
        return self._item_out(self._item(item_id))

    def _item_out(self, it: Item) -> dict[str, Any]:
        collection = self._by_id[it.collection_id]
        return {"id": it.id, "collection": collection, "uri": self._client_uri(collection, it.uri),
                "modality": it.modality, "metadata": it.meta or {}, "content_hash": it.content_hash, "size": it.size,
                **products.item_links(it.id, it.modality)}

    # sources: a manifest's rows, by the catalog's own ids -----------------------------------------

    def _source(self, source_id: str, collection: str | None) -> tuple[str, list[Item]]:
        if collection is not None:
            self._searcher(collection)  # not ready, not served: said as for a search
        elif not self.ready.is_set():
            raise NotReadyError("the service is still loading its models and indexes")
        names = [collection] if collection is not None else self.names
        ids = {self.searchers[n].collection_id: n for n in names}
        items = self.catalog.source_items(list(ids), source_id)
        found = sorted({ids[it.collection_id] for it in items})
        if not found:
            where = f" in collection {collection!r}" if collection is not None else ""
            raise NotFoundError(f"no product or manifest row with id {source_id!r}{where}")
        if len(found) > 1:
            raise UserError(f"id {source_id!r} is in collections {', '.join(found)}: name one (collection=...)")
        return found[0], items

    def source(self, *, source_id: str, collection: str | None = None) -> dict[str, Any]:
        """A manifest row by its own id (a SKU): its metadata and its items, one per media column."""
        name, items = self._source(source_id, collection)
        return {"collection": name, "source_id": source_id, "metadata": items[0].source_meta or {},
                "items": [{**self._item_out(it), "column": it.source_column} for it in items]}

    def similar_source(self, *, source_id: str, collection: str | None = None, column: str | None = None,
                       filters: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """More like a row: its ``column``'s item as the query (default: its first image, else its first
        item), the row's own items left out; ``options`` as for ``search``."""
        name, items = self._source(source_id, collection)
        if column is not None:
            chosen = [it for it in items if it.source_column == column]
            if not chosen:
                have = ", ".join(sorted({str(it.source_column) for it in items}))
                raise NotFoundError(f"{source_id!r} has no media column {column!r} (it has: {have})")
        else:
            chosen = [it for it in items if it.modality == "image"] or items
        others = {"not": {"field": "source_id", "op": "eq", "value": source_id}}
        return self.search(collection=name, item_id=chosen[0].id, filters={"and": [filters, others]} if filters
                           else others, **options)

    def media(self, *, item_id: int) -> tuple[VerifiedFile, str] | str:
        """The original file of an item, open and checked (``api.files``: by id only, from under the
        collection's sources, still the indexed content), or the URL of a manifest item's remote media
        (the client is redirected there: never proxied)."""
        it = self._item(item_id)
        if is_remote(it.uri):
            if it.uri.lower().startswith(("http://", "https://")):
                return it.uri
            raise NotFoundError(f"the media of item {item_id} is at {it.uri}, which is not served here")
        if it.source_id is not None and it.uri.startswith("manifest:"):
            raise NotFoundError(f"item {item_id} is text given inline by a manifest: it has no file "
                                "(its text is in metadata.snippet)")
        opened = open_verified(it, self.catalog.source_roots(it.collection_id), max_bytes=self.settings.max_file_bytes)
        media_type = mimetypes.guess_type(opened.path)[0] or (
            "text/plain" if it.modality == "text" else "application/octet-stream")
        if it.modality == "text" and media_type.startswith("text/"):
            media_type += "; charset=utf-8"
        return opened, media_type

    def thumbnail(self, *, item_id: int, at_s: float | None = None) -> Path:
        """A JPEG thumbnail of an image item, or of a video's frame at ``at_s`` seconds (default: its middle;
        snapped to tenths of a second within the video), made once from the bytes actually read and cached
        under the data dir, named by their SHA-256 (so a changed file never gets the old one's thumbnail)."""
        it = self._item(item_id)
        if it.modality not in ("image", "video"):
            raise NotFoundError(f"item {item_id} is {it.modality}: only images and videos have thumbnails")
        size = self.settings.thumbnail_size
        folder = self.settings.home / "thumbnails"
        s = self.settings
        at = None
        if it.modality == "video":
            duration = float((it.meta or {}).get("duration_s") or 0.0)
            at = round(min(max(duration / 2 if at_s is None else at_s, 0.0), duration), 1)
        suffix = "" if at is None else f"-t{round(at * 10)}"
        with self._thumbnails:
            if is_remote(it.uri):  # a manifest's image URL: fetched within the indexer's bounds
                try:
                    data = fetch_bytes(it.uri, timeout_s=s.fetch_timeout, deadline_s=s.fetch_deadline,
                                       retries=s.fetch_retries, max_bytes=s.max_file_bytes)
                except MediaError as exc:
                    raise NotFoundError(f"the original of item {item_id} can't be fetched: {exc.reason}") from exc
                return self._thumbnail_of(it, data, hashlib.sha256(data).hexdigest(), folder, suffix, at)
            opened = open_verified(it, self.catalog.source_roots(it.collection_id), max_bytes=s.max_file_bytes)
            try:
                cached = folder / f"{it.id}-{opened.content_hash}-{size}{suffix}.jpg"
                if cached.is_file():
                    return cached
                if at is not None:  # a video: hashed in chunks, its frame decoded from the open file as it reads
                    with opened.reader() as reader:
                        return self._thumbnail_of(it, reader, opened.sha256(), folder, suffix, at)
                data = opened.read(s.max_file_bytes)
            finally:
                opened.close()
            return self._thumbnail_of(it, data, hashlib.sha256(data).hexdigest(), folder, suffix, at)

    def _thumbnail_of(self, it: Item, source: Source, digest: str, folder: Path, suffix: str,
                      at: float | None) -> Path:
        """The cached thumbnail of ``source`` (the bytes, or a video's open file) whose SHA-256 is ``digest``."""
        if not is_remote(it.uri) and digest != it.content_hash:  # changed while size and time stayed
            raise ConflictError(f"the file of item {it.id} changed since it was indexed: run `xmodal index` "
                                "on its source to index it again")
        size = self.settings.thumbnail_size
        cached = folder / f"{it.id}-{digest}-{size}{suffix}.jpg"
        if cached.is_file():
            return cached
        limits = MediaLimits.from_settings(self.settings)
        try:
            if at is None:
                if not isinstance(source, bytes):
                    raise TypeError("an image thumbnail is made from the image's bytes")
                image = decode_image_with_info(source, limits, min_side=size).image
            else:
                image = video_frame(source, at, VideoLimits(limits.max_video_seconds, limits.max_video_pixels,
                                                            min(limits.video_timeout_s, THUMBNAIL_VIDEO_S)))
        except MediaError as exc:
            raise NotFoundError(f"the original of item {it.id} can't be read: {exc.reason}") from exc
        image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{cached.name}.{uuid.uuid4().hex}.tmp"
        image.save(tmp, "JPEG", quality=85)
        os.replace(tmp, cached)
        return cached
