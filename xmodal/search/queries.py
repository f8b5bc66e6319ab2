"""Query vectors: a text, an item, or query media (by modality) turned into vectors of the spaces a search
needs, each computed once per request; text vectors are cached. A mixin of :class:`search.engine.Searcher`.

Query media has its own, smaller limits than indexed media (``MediaLimits.for_queries``) and may be
abandoned half-way (``stop``: a client that left); media arrives by modality through ``QUERY_MEDIA``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from xmodal.config import Settings
from xmodal.encoders.base import AudioEncoder, ImageEncoder
from xmodal.errors import Cancelled, MediaError, UserError
from xmodal.media.image import decode_image_with_info
from xmodal.media.read import read_file
from xmodal.media.types import MediaLimits
from xmodal.spaces import native_spaces
from xmodal.storage.catalog import STATUS_OK, Catalog
from xmodal.storage.layout import Layout
from xmodal.storage.shards import read_shard


class QueryMediaError(UserError):
    """An uploaded or named query file that is not usable media; of the media error's kind (too large,
    unsupported, invalid)."""

    def __init__(self, message: str, cause: MediaError) -> None:
        super().__init__(message, kind=cause.kind)
        self.reason = cause.reason


@dataclass
class Query:
    """One query: its modality, its vector in each space (filled as routes ask), the ids it excludes."""

    modality: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    exclude: set[int] = field(default_factory=set)


def check_stop(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise Cancelled("stopped: whoever asked for this query has gone")


TEXT_VECTORS = 4096  # text vectors kept per searcher (queries repeat)
_TEXTS_LOCK = threading.Lock()


class QueryVectors:
    """Query encoding, for a searcher (the attributes below are the searcher's)."""

    settings: Settings
    limits: MediaLimits
    catalog: Catalog
    collection_id: int
    layout: Layout
    primary: str
    _spaces: dict[str, Any]  # the searcher's: the spaces this collection has
    _text_vectors: OrderedDict[tuple[str, str], np.ndarray]  # the searcher's: the last TEXT_VECTORS, by (text, space)

    def encoder_for(self, space: str) -> Any: ...  # the searcher's: the space's loaded encoder

    def _loaded(self, space: str) -> Any: ...  # the searcher's: the space's loaded version

    def text_vector(self, text: str, space: str | None = None) -> np.ndarray:
        text = text.strip()
        if not text:
            raise UserError("empty text query")
        if len(text) > self.settings.max_query_chars:
            raise UserError(f"text query too long: {len(text)} characters, at most {self.settings.max_query_chars} "
                            "(XMODAL_MAX_QUERY_CHARS)")
        return self._text_vector(text, space or self.primary)

    def text_encoded(self, text: str, space: str) -> bool:
        """Whether ``text`` has its vector in ``space`` already (a repeated query: nothing to encode)."""
        return (text, space) in self._text_vectors

    def _text_vector(self, text: str, space: str) -> np.ndarray:
        kept, key = self._text_vectors, (text, space)
        with _TEXTS_LOCK:
            vec = kept.get(key)
            if vec is not None:
                kept.move_to_end(key)
                return vec
        vec = self.encoder_for(space).embed_texts([text])[0]
        vec.setflags(write=False)  # shared by every request that repeats the query
        with _TEXTS_LOCK:
            kept[key] = vec
            while len(kept) > TEXT_VECTORS:
                kept.popitem(last=False)
        return vec

    def query_file(self, path: Path, kind: str) -> bytes:
        try:
            return read_file(str(path), self.limits)
        except MediaError as exc:
            raise UserError(f"cannot use {path} as {'an' if kind[0] in 'aeiou' else 'a'} {kind} query: {exc.reason}"
                            ) from exc

    def image_vector(self, path: Path) -> np.ndarray:
        return self.image_bytes_vector(self.query_file(path, "image"), name=str(path))

    def image_bytes_vector(self, data: bytes, *, name: str = "the upload",
                           stop: Callable[[], bool] | None = None) -> np.ndarray:
        encoder = cast(ImageEncoder, self.encoder_for(native_spaces("image")[0]))
        try:
            info = decode_image_with_info(data, self.limits, min_side=encoder.image_min_side())
        except MediaError as exc:
            raise QueryMediaError(f"cannot use {name} as an image query: {exc.reason}", exc) from exc
        check_stop(stop)
        pixels = encoder.image_transform()(info.image)
        check_stop(stop)
        return np.asarray(encoder.embed_images(pixels[None])[0])

    def audio_vector(self, path: Path) -> np.ndarray:
        return self.audio_bytes_vector(self.query_file(path, "audio"), name=str(path))

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
        check_stop(stop)
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

    def video_bytes_vectors(self, data: bytes, *, name: str = "the upload",
                            stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """A short clip's vectors, as a video is embedded at indexing: its sampled frames pooled per segment and
        over segments in the image space, and, where it has sound and the collection a sound space, its sound
        cut at the same segments there. Within the query limits (seconds, pixels, decode time)."""
        from xmodal.encoders.base import pool_segments
        from xmodal.media.avaudio import decode_soundtrack
        from xmodal.media.video import VideoLimits, VideoSpec, decode_video

        s, lim = self.settings, self.limits
        image_space = native_spaces("image")[0]
        encoder = cast(ImageEncoder, self.encoder_for(image_space))
        try:
            video = decode_video(data, VideoSpec(s.video_fps, s.video_max_frames, s.video_max_segment_s),
                                 VideoLimits(lim.max_video_seconds, lim.max_video_pixels, lim.video_timeout_s),
                                 encoder.image_transform(), stop)
        except MediaError as exc:
            raise QueryMediaError(f"cannot use {name} as a video query: {exc.reason}", exc) from exc
        check_stop(stop)
        inputs = video.inputs()
        batch = s.batch_size
        frames = np.concatenate([encoder.embed_images(inputs.frames[at : at + batch])
                                 for at in range(0, len(inputs), batch)])
        out = {image_space: pool_segments(frames, inputs.segment, len(video.segments))[1]}
        sound_space = native_spaces("audio")[0]
        if video.audio and sound_space in self._spaces:
            check_stop(stop)
            sound_encoder = cast(AudioEncoder, self.encoder_for(sound_space))
            try:
                track = decode_soundtrack(data, sound_encoder.audio_spec(), video.spans,
                                          sound_encoder.audio_transform(), stop)
            except MediaError as exc:
                raise QueryMediaError(f"cannot use {name} as a video query: sound track: {exc.reason}", exc) from exc
            windows = sound_encoder.embed_windows(track.windows, batch, stop=stop)
            out[sound_space] = pool_segments(windows, track.segment, len(video.segments), sound_encoder.pool)[1]
        return out

    #: query media by modality: bytes -> its vectors by space (see ``media_vectors``)
    QUERY_MEDIA: dict[str, str] = {"image": "image_bytes_vector", "audio": "audio_bytes_vector",
                                   "video": "video_bytes_vectors"}

    def media_vectors(self, modality: str, data: bytes, *, name: str = "the upload",
                      stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray]:
        """The vectors of query media of a modality: in the first space that embeds it natively (a video: in
        each space that embeds a part of it)."""
        method = self.QUERY_MEDIA.get(modality)
        if method is None:
            raise UserError(f"{modality} is not a query modality (queries: text, item, "
                            f"{', '.join(self.QUERY_MEDIA)})")
        got = getattr(self, method)(data, name=name, stop=stop)
        return got if isinstance(got, dict) else {native_spaces(modality)[0]: got}

    def _query(self, *, text: str | None, media: tuple[str, bytes, str] | None, item: int | None,
               stop: Callable[[], bool] | None = None) -> Query:
        if sum(x is not None for x in (text, media, item)) != 1:
            raise UserError("give exactly one query: text, media (an image or a sound) or item")
        if text is not None:
            return Query("text", {})
        if media is not None:
            modality, data, name = media
            return Query(modality, self.media_vectors(modality, data, name=name, stop=stop))
        assert item is not None
        it = self.catalog.item_by_id(self.collection_id, int(item))
        return Query(it.modality, {}, {int(item)})

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
        return modality, self.query_file(Path(value), modality), str(value)

    def asks_in(self, q: Query, space: str, *, text: str | None, item: int | None) -> bool:
        """Whether the query has a vector in ``space``: a text always, media where it was embedded, an item where
        it has one (a silent video has none in the sound space)."""
        if text is not None or space in q.vectors:
            return True
        return item is not None and self.catalog.vector_location(int(item), space) is not None

    def _vector(self, q: Query, space: str, *, text: str | None, item: int | None) -> np.ndarray:
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

