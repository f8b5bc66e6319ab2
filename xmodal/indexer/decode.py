"""The decode stage, run in worker processes: read, hash, decode, validate, preprocess.

Only plain data crosses the process boundary: paths in, arrays or text and metadata out. Decoders are
registered by modality (:data:`DECODERS`): each turns its input into the model's input for that modality,
using the preparation its encoder gave (``DecodeConfig.prepare``: an image's transform, a sound's
window spec), plus the metadata the catalog keeps.

A decoder's input is the file's bytes, read whole within ``max_file_bytes`` (images, texts, sound through
libsndfile), or, for a local file its registration says is **streamed** (video; audio in a container
FFmpeg reads: :func:`xmodal.media.video.is_av_container` on its first bytes), the open file, which PyAV
reads as it decodes: its SHA-256 is read in chunks first, no byte cap applies (the video limits on seconds,
pixels and decode time do), and a file whose size or modification time changed while it was decoded is
failed as temporary (the next run takes it again). Fetched media and inline text are bytes whatever the
modality: a fetch is bounded by ``max_file_bytes``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from xmodal.encoders.base import ImageTransform
from xmodal.errors import ErrorKind, MediaError
from xmodal.media.fetch import Fetcher, FetchError, FetchOptions
from xmodal.media.image import decode_image_with_info
from xmodal.media.read import LocalFile, read_file
from xmodal.media.text import decode_text, text_metadata
from xmodal.media.types import MediaLimits, looks_like_text, sniff_modality
from xmodal.media.video import Source, VideoSpec, is_av_container
from xmodal.spaces import AudioSpec

log = logging.getLogger(__name__)


CHUNK_FILES = 8  # files per task sent to a decode worker (and per fetch round of remote media)
#: prefix of failure reasons that a later run may not meet (a fetch timeout, HTTP 503): retried next run
TEMPORARY_FAILURE = "temporary: "
UNKNOWN = "unknown"  # a manifest URL that names no type: decided from the fetched bytes


@dataclass(frozen=True)
class DecodeTask:
    item_id: int
    path: str  # a local path, or (with ``remote``) the URI to fetch
    modality: str  # image | audio | text, or UNKNOWN
    known_hash: str | None  # content already embedded: skip decoding when the bytes still hash to it
    remote: bool = False  # fetch ``path`` (http(s), fsspec) instead of reading a local file
    text: str | None = None  # inline text from a manifest: no file at all


@dataclass
class Decoded:
    item_id: int
    content_hash: str | None = None
    size: int | None = None
    error: str | None = None
    unchanged: bool = False
    modality: str | None = None  # what was decoded (a URL that names no type: found from its bytes)
    inputs: Any = None  # the model's input: an image's pixels, a text, a sound's window features
    spans: list[tuple[float, float]] | None = None  # a windowed modality: each window's (start, end) seconds
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def windows(self) -> int:
        """How much encoder work this is: windows for a windowed modality, else 1."""
        return len(self.inputs) if self.spans is not None and self.inputs is not None else 1


@dataclass(frozen=True)
class ImagePrep:
    """What an image encoder wants from its decoder: its transform (run in the worker) and the smallest
    side it needs (JPEGs decode at the smallest scale that keeps it)."""

    transform: ImageTransform
    min_side: int | None


@dataclass(frozen=True)
class AudioPrep:
    """What an audio encoder wants: how sound is cut into windows, and each window's transform."""

    spec: AudioSpec
    transform: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DecodeConfig:
    limits: MediaLimits
    prepare: dict[str, Any] = field(default_factory=dict)  # modality -> its encoder's preparation (above)
    fetch: FetchOptions | None = None  # bounds on remote fetches (timeouts, retries, size cap)
    fetch_threads: int = 8  # remote fetches of one chunk run concurrently: they wait on the network
    video: VideoSpec = field(default_factory=VideoSpec)  # how videos are sampled and cut into segments

    def __hash__(self) -> int:  # frozen, but holds a dict: hashed by identity (one config per run)
        return id(self)


def preparations(encoders: Iterable[Any]) -> dict[str, Any]:
    """Each modality's preparation, from the encoders that embed it (image encoders: images and video frames;
    audio encoders)."""
    from xmodal.encoders.base import AudioEncoder, ImageEncoder

    out: dict[str, Any] = {}
    for enc in encoders:
        if isinstance(enc, ImageEncoder):
            out["image"] = out["video"] = ImagePrep(enc.image_transform(), enc.image_min_side())  # frames are images
        if isinstance(enc, AudioEncoder):
            out["audio"] = AudioPrep(enc.audio_spec(), enc.audio_transform())
    return out


_fetchers: dict[FetchOptions, Fetcher] = {}  # one per worker process: keeps connections to a CDN open


def _fetcher(options: FetchOptions | None) -> Fetcher:
    opts = options or FetchOptions()
    if opts not in _fetchers:
        _fetchers[opts] = Fetcher(opts)
    return _fetchers[opts]


def init_worker() -> None:
    """Process-pool initializer: Ctrl-C is the parent's to handle (it stops the run and shuts the pool
    down), and one torch thread per worker (the cores are the pool's)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def warm_up() -> None:
    """A first task that makes the pool start its processes now (they import torch meanwhile)."""


class DecodeAs(Exception):  # noqa: N818 - a redirection, not an error
    """Raised by a decoder: these bytes are another modality (an ``.mp4`` with sound and no pictures is audio)."""

    def __init__(self, modality: str) -> None:
        super().__init__(modality)
        self.modality = modality


Decoder = Callable[[Source, DecodeConfig], tuple[Any, "list[tuple[float, float]] | None", dict[str, Any]]]
#: modality -> its input (bytes, or an open file where it streams) to (model inputs, window spans or None,
#: metadata); raise MediaError for bad bytes
DECODERS: dict[str, Decoder] = {}
#: modality -> whether a local file that starts with these bytes is streamed to its decoder (an open file)
STREAMS: dict[str, Callable[[bytes], bool]] = {}


def register_decoder(modality: str, decoder: Decoder, streams: Callable[[bytes], bool] | None = None) -> None:
    """``streams``: given a local file's first 64 bytes, whether the decoder reads it as it goes (it is then
    handed the open file, else the bytes)."""
    DECODERS[modality] = decoder
    if streams is not None:
        STREAMS[modality] = streams


def _prep(config: DecodeConfig, modality: str) -> Any:
    prep = config.prepare.get(modality)
    if prep is None:
        raise MediaError(f"no {modality} encoder in this collection")
    return prep


def _whole(source: Source) -> bytes:
    """The bytes of a decoder's input: only streaming decoders are handed open files (``STREAMS``)."""
    if not isinstance(source, bytes):
        raise TypeError("this decoder takes bytes, not an open file")
    return source


def _decode_image(source: Source, config: DecodeConfig) -> tuple[Any, None, dict[str, Any]]:
    prep: ImagePrep = _prep(config, "image")
    info = decode_image_with_info(_whole(source), config.limits, min_side=prep.min_side)
    return prep.transform(info.image), None, {"width": info.width, "height": info.height, "format": info.format}


def _decode_text(source: Source, config: DecodeConfig) -> tuple[Any, None, dict[str, Any]]:
    text = decode_text(_whole(source), config.limits)
    return text, None, text_metadata(text)


def _decode_audio(source: Source, config: DecodeConfig) -> tuple[Any, list[tuple[float, float]], dict[str, Any]]:
    from xmodal.media.audio import audio_metadata, decode_audio

    prep: AudioPrep = _prep(config, "audio")
    spec = dataclasses.replace(prep.spec, max_seconds=config.limits.max_audio_seconds)
    if not isinstance(source, bytes) or is_av_container(source):  # m4a, aac, an mp4 or webm with sound only
        from xmodal.media.avaudio import decode_audio_av

        audio = decode_audio_av(source, spec, prep.transform)  # FFmpeg through PyAV, from the file as it reads
    else:
        audio = decode_audio(source, spec, prep.transform)
    return audio.windows, audio.spans, audio_metadata(audio)


def _decode_video(source: Source, config: DecodeConfig) -> tuple[Any, list[tuple[float, float]], dict[str, Any]]:
    from xmodal.media.video import NoVideoStream, VideoLimits, decode_video, video_metadata

    prep: ImagePrep = _prep(config, "video")
    lim = config.limits
    try:
        video = decode_video(source, config.video, VideoLimits(lim.max_video_seconds, lim.max_video_pixels,
                                                             lim.video_timeout_s), prep.transform)
    except NoVideoStream as exc:
        if exc.audio:
            raise DecodeAs("audio") from None
        raise
    inputs = video.inputs()
    sound: AudioPrep | None = config.prepare.get("audio")
    if video.audio and sound is not None:  # this run embeds sound: the track, cut at the segments
        from xmodal.media.avaudio import decode_soundtrack

        spec = dataclasses.replace(sound.spec, max_seconds=max(lim.max_video_seconds, video.duration_s + 1))
        try:
            inputs.sound = decode_soundtrack(source, spec, video.spans, sound.transform)
        except MediaError as exc:
            raise MediaError(f"sound track: {exc.reason}", exc.kind) from None
    return inputs, video.spans, video_metadata(video)


register_decoder("image", _decode_image)
register_decoder("text", _decode_text)
register_decoder("audio", _decode_audio, streams=is_av_container)
register_decoder("video", _decode_video, streams=lambda head: True)


def _decode_as(modality: str, data: Source, config: DecodeConfig) -> tuple[str, Any, Any, dict[str, Any]]:
    """(modality, inputs, spans, metadata) by the modality's decoder, or the one it hands the bytes to."""
    tried: list[str] = []
    while True:
        decoder = DECODERS.get(modality)
        if decoder is None:
            raise MediaError(f"unsupported modality {modality!r}")
        tried.append(modality)
        try:
            return (modality, *decoder(data, config))
        except DecodeAs as redirect:
            if redirect.modality in tried:
                raise MediaError(f"no decoder takes this {modality} file") from None
            modality = redirect.modality


def decode_many(tasks: list[DecodeTask], config: DecodeConfig) -> list[Decoded]:
    """Decode a chunk of tasks; its remote media are fetched concurrently first (network waits overlap)."""
    remote = [t for t in tasks if t.remote]
    if len(remote) < 2:
        return [decode_one(task, config) for task in tasks]
    with ThreadPoolExecutor(min(len(remote), max(1, config.fetch_threads))) as pool:
        fetched = dict(zip([t.item_id for t in remote], pool.map(lambda t: _fetch(t, config), remote), strict=True))
    return [decode_one(task, config, fetched=fetched.get(task.item_id)) for task in tasks]


def _fetch(task: DecodeTask, config: DecodeConfig) -> bytes | MediaError:
    try:
        return _fetcher(config.fetch).fetch_bytes(task.path)
    except MediaError as exc:
        return exc


def _read(task: DecodeTask, config: DecodeConfig) -> bytes:
    if task.text is not None:
        data = task.text.encode("utf-8", "surrogatepass")
        if len(data) > config.limits.max_text_bytes:
            raise MediaError(f"text too long: {len(data)} bytes, over the limit of {config.limits.max_text_bytes}",
                             ErrorKind.TOO_LARGE)
        return data
    if task.remote:
        return _fetcher(config.fetch).fetch_bytes(task.path)
    return read_file(task.path, config.limits)


def decode_one(task: DecodeTask, config: DecodeConfig, *, fetched: bytes | MediaError | None = None) -> Decoded:
    out = Decoded(item_id=task.item_id)
    try:
        if isinstance(fetched, MediaError):
            raise fetched
        if fetched is None and task.text is None and not task.remote and task.modality in STREAMS:
            with LocalFile(task.path) as file:  # the size cap waits until we know whether it streams
                if STREAMS[task.modality](file.head()):
                    _decode_streamed(task, file, config, out)
                    return out
                data = file.read_all(config.limits.max_file_bytes)
        else:
            data = fetched if fetched is not None else _read(task, config)
        out.size = len(data)
        out.content_hash = hashlib.sha256(data).hexdigest()
        if task.known_hash is not None and out.content_hash == task.known_hash:
            out.unchanged = True
            return out
        modality = task.modality
        if modality == UNKNOWN:
            found = sniff_modality(data)
            if found is None:
                kind = "text" if looks_like_text(data[:512]) else "data"
                raise MediaError(f"not an image, audio or video file (it looks like {kind}; its URL names no type)")
            modality = found
        out.modality, out.inputs, out.spans, out.meta = _decode_as(modality, data, config)
    except FetchError as exc:
        out.error = f"{TEMPORARY_FAILURE if exc.retryable else ''}fetch failed: {exc.reason}"
    except MediaError as exc:
        out.error = exc.reason
    except MemoryError:
        out.error = "out of memory while decoding"
    except Exception as exc:  # a decoder bug must not stop the run: record it and go on
        log.warning("unexpected error decoding %s", task.path, exc_info=True)
        out.error = f"internal decode error: {type(exc).__name__}: {exc}"[:500]
    return out


def _decode_streamed(task: DecodeTask, file: LocalFile, config: DecodeConfig, out: Decoded) -> None:
    """A local file its decoder reads as it goes: hashed in chunks, then decoded from the open file (never
    read whole); one that changed meanwhile is a temporary failure (the vectors might not be of the hash)."""
    out.content_hash, out.size = file.sha256()
    if task.known_hash is not None and out.content_hash == task.known_hash:
        out.unchanged = True
        return
    reader: IO[bytes] = file.reader()
    with reader:
        decoded = _decode_as(task.modality, reader, config)
    if file.changed() or out.size != file.size:
        raise MediaError(f"{TEMPORARY_FAILURE}the file changed while it was read")
    out.modality, out.inputs, out.spans, out.meta = decoded
