"""Decode untrusted video (PyAV: FFmpeg's libraries from a wheel) into sampled frames and shots.

The input (:data:`Source`) is bytes in memory (an upload, a fetched URL: bounded by their size limits) or an
open file (a local file, ``media.read.LocalFile.reader``) that FFmpeg reads and seeks as it decodes: an
hour of 1080p is never held whole, only FFmpeg's read buffer and the demuxer's index.

Frames are sampled at ``VideoSpec.fps`` (the first decoded frame at or after each sample time, by its
presentation time, so variable frame rates sample the same way), turned upright by the stream's
rotation (display matrix), and handed to ``transform`` at once: only the transformed samples are kept,
never the decoded video. At most ``max_frames`` samples are kept: past that, every second one is
dropped and the rate halved (an hour at 1 fps keeps 256 frames 16 s apart), so memory is bounded by
the spec, not by the video's length. Samples are grouped into **segments** at shot changes: a cut
where the colour histograms of consecutive samples differ by more than ``cut`` (half the L1 distance of
16-bin-per-channel histograms, 0 to 1), and a segment never longer than ``max_segment_s``. The same
bytes give the same frames, segments and arrays, whether read from memory or from a file: no randomness, no
clock in the output.

Every failure is a :class:`~xmodal.errors.MediaError` with a short reason: not a container FFmpeg
knows (random bytes, a truncated MP4 without its moov atom), no video stream (:class:`NoVideoStream`:
the caller decodes it as audio when it has sound), an unsupported codec, frames over the pixel limit,
longer than the seconds limit, no frames at all, corrupt data mid-stream, and decoding that takes
longer than the time limit (checked between frames: a decoder stuck inside one frame is not stopped).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, TypeAlias

import numpy as np
from PIL import Image

from xmodal.errors import Cancelled, ErrorKind, MediaError
from xmodal.media.types import looks_like_text

logger = logging.getLogger(__name__)

#: what a decoder reads: the bytes, or an open binary file it may read and seek in (never closed here)
Source: TypeAlias = "bytes | IO[bytes]"
_HEAD = 512  # bytes looked at to say why a container does not open
_MAX_BOXES = 10_000  # top-level MP4 boxes walked looking for the moov atom
_HIST_BINS = 16
_HIST_SIDE = 64  # histograms are taken on a copy this small: cheap, and noise averages out


@dataclass(frozen=True)
class VideoSpec:
    """How a video is sampled and cut into segments (settings ``video_fps``, ``video_max_frames``,
    ``video_max_segment_s``)."""

    fps: float = 1.0
    max_frames: int = 256
    max_segment_s: float = 10.0
    cut: float = 0.15

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 60:
            raise ValueError(f"fps must be in (0, 60], got {self.fps}")
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be at least 2, got {self.max_frames}")
        if not self.max_segment_s > 0:
            raise ValueError(f"max_segment_s must be positive, got {self.max_segment_s}")
        if not 0 < self.cut < 1:
            raise ValueError(f"cut must be in (0, 1), got {self.cut}")


@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost: seconds of video, pixels per frame, seconds of decoding."""

    max_seconds: float = 3 * 3600.0
    max_pixels: int = 7680 * 4320
    timeout_s: float = 600.0


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    first: int  # index of its first sampled frame
    count: int  # how many sampled frames it holds
    frame: int  # index of its representative frame (the middle one)
    frame_s: float  # that frame's time


@dataclass
class VideoFrames:
    """The model's input for one video: the transformed samples, and the segment each belongs to.
    ``len()`` is the encoder work: one image per sample."""

    frames: np.ndarray  # (n, ...) float32: what ``transform`` made of each sample
    segment: np.ndarray  # (n,) int32: the segment of each sample
    sound: Any = None  # the sound track cut at the segments (``avaudio.Soundtrack``), when it is wanted and there

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class DecodedVideo:
    frames: np.ndarray
    times: list[float]  # each sample's time, seconds
    segments: list[Segment]
    duration_s: float
    width: int  # as shown (after rotation)
    height: int
    codec: str
    container: str
    rotation: int
    audio: bool  # it has a sound track
    interval_s: float  # seconds between samples (grows past max_frames)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spans(self) -> list[tuple[float, float]]:
        return [(s.start_s, s.end_s) for s in self.segments]

    def inputs(self) -> VideoFrames:
        owner = np.zeros(len(self.frames), dtype=np.int32)
        for i, s in enumerate(self.segments):
            owner[s.first : s.first + s.count] = i
        return VideoFrames(self.frames, owner)


class NoVideoStream(MediaError):
    """The container holds no video stream; ``audio`` says whether it holds sound (then it is audio)."""

    def __init__(self, audio: bool) -> None:
        super().__init__("no video stream" if audio else "no video frames: the file holds no video or audio stream",
                         ErrorKind.UNSUPPORTED_MEDIA)
        self.audio = audio


def decode_video(source: Source, spec: VideoSpec, limits: VideoLimits,
                 transform: Callable[[Image.Image], np.ndarray] | None = None,
                 stop: Callable[[], bool] | None = None) -> DecodedVideo:
    """Sample, transform and segment ``source`` (see the module docstring); :class:`MediaError` for bad bytes."""
    with _media_errors():
        return _decode(source, spec, limits, transform, stop)


def video_frame(source: Source, at_s: float, limits: VideoLimits) -> Image.Image:
    """The frame shown at ``at_s`` seconds (upright), for a thumbnail: a seek to the key frame before it, then
    frames decoded up to it (at most ``limits.timeout_s`` of decoding; past the end, the last frame). The
    same checks as for indexing: pixels per frame, a container FFmpeg reads, a video stream."""
    with _media_errors():
        return _frame_at(source, max(0.0, at_s), limits)


@contextmanager
def _media_errors() -> Iterator[None]:
    """Any failure to decode as a :class:`MediaError` (a safety net: no other exception may escape for any
    bytes); cancelling goes through."""
    try:
        yield
    except (MediaError, Cancelled):
        raise
    except MemoryError:
        raise MediaError("video too large: out of memory while decoding", ErrorKind.TOO_LARGE) from None
    except Exception as exc:
        logger.debug("unexpected error decoding video", exc_info=True)
        raise MediaError(f"corrupt video: {describe(exc)}") from None


def _frame_at(source: Source, at_s: float, limits: VideoLimits) -> Image.Image:
    import av

    container = open_container(source, "video")
    with container:
        if not container.streams.video:
            raise NoVideoStream(bool(container.streams.audio))
        stream = container.streams.video[0]
        _check_pixels(int(stream.width or 0), int(stream.height or 0), limits)
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        started = time.monotonic()
        chosen = None
        try:
            if at_s > 0 and stream.time_base is not None:
                container.seek(int((origin + at_s) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):  # the last frame that starts by ``at_s``
                _check_pixels(frame.width, frame.height, limits)
                if chosen is not None and frame.time is not None and float(frame.time) - origin > at_s + 1e-3:
                    break
                chosen = frame
                if frame.time is None or time.monotonic() - started > limits.timeout_s:
                    break  # no clock to go by, or out of time: the nearest frame decoded
        except av.FFmpegError as exc:
            if chosen is None:
                raise MediaError(f"corrupt video data: {describe(exc)}") from None
        if chosen is None:
            raise MediaError("no video frames (the stream is empty)")
        rotation = int(getattr(chosen, "rotation", 0) or 0) % 360
        return _upright(chosen.to_image(), rotation)


def video_metadata(video: DecodedVideo) -> dict[str, Any]:
    """JSON-able facts for the catalog (``windows``: how many segments the item's vector pools)."""
    return {"duration_s": round(video.duration_s, 3), "width": video.width, "height": video.height,
            "codec": video.codec, "format": video.container, "rotation": video.rotation, "has_audio": video.audio,
            "frames": len(video.times), "frame_interval_s": round(video.interval_s, 3),
            "windows": len(video.segments)}


def is_av_container(head: bytes) -> bool:
    """Whether a file that starts with ``head`` (its first 12 bytes or more) is a container libsndfile can't read
    and FFmpeg can: ISO BMFF (mp4, m4a, mov), Matroska/WebM, ADTS AAC."""
    head = head[:12]
    return head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide") or head.startswith(b"\x1a\x45\xdf\xa3") or (
        len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0)


def open_container(source: Source, what: str) -> Any:
    """``av.open`` on the bytes or from the start of the open file, every failure a :class:`MediaError` that
    says why (looking at the first bytes, and for an MP4 at its top-level boxes: never reading it whole)."""
    import av

    file = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    file.seek(0)
    head = file.read(_HEAD)
    if not head:
        raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
    file.seek(0)
    try:
        return av.open(file, mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        if looks_like_text(head):
            raise MediaError(f"not a {what} file: the content looks like text", ErrorKind.UNSUPPORTED_MEDIA) from None
        if head[4:8] == b"ftyp" and not _has_moov(file):
            raise MediaError("truncated: the MP4 has no moov atom (the file was cut short)",
                             ErrorKind.UNSUPPORTED_MEDIA) from None
        raise MediaError(f"not a recognised {what} container ({describe(exc)}; starts with {head[:8].hex(' ')})",
                         ErrorKind.UNSUPPORTED_MEDIA) from None


def _has_moov(file: IO[bytes]) -> bool:
    """Whether an MP4's top-level boxes (walked by their sizes, seeking past each) include a whole ``moov``:
    a file cut short loses it when it comes last, or holds a box that runs past the end."""
    end = file.seek(0, io.SEEK_END)
    at = 0
    for _ in range(_MAX_BOXES):
        if at + 8 > end:
            return False
        file.seek(at)
        header = file.read(16)
        size, kind = int.from_bytes(header[:4], "big"), header[4:8]
        if size == 1 and len(header) == 16:  # a 64-bit size follows the type
            size = int.from_bytes(header[8:16], "big")
        elif size == 0:  # the box runs to the end of the file
            size = end - at
        if size < 8 or at + size > end:
            return False
        if kind == b"moov":
            return True
        at += size
    return False


def _decode(source: Source, spec: VideoSpec, limits: VideoLimits,
            transform: Callable[[Image.Image], np.ndarray] | None, stop: Callable[[], bool] | None) -> DecodedVideo:
    import av

    container = open_container(source, "video")
    with container:
        if not container.streams.video:
            raise NoVideoStream(bool(container.streams.audio))
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = getattr(ctx, "name", None) or "unknown"
        if ctx is None or not getattr(ctx, "is_decoder", True):
            raise MediaError(f"unsupported video codec {codec}", ErrorKind.UNSUPPORTED_MEDIA)
        _check_pixels(int(stream.width or 0), int(stream.height or 0), limits)
        duration = _duration(container, stream)
        if duration is not None and duration > limits.max_seconds:
            raise MediaError(f"too long: {duration:.1f} s, at most {limits.max_seconds:g} s", ErrorKind.TOO_LARGE)
        sampler = _Sampler(spec, transform)
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        started = time.monotonic()
        rotation, last_t, shown = 0, 0.0, (0, 0)
        try:
            for n, frame in enumerate(container.decode(stream)):
                if stop is not None and stop():
                    raise Cancelled("stopped while decoding video")
                if time.monotonic() - started > limits.timeout_s:
                    raise MediaError(f"decoding took over {limits.timeout_s:g} s (stopped after {last_t:.1f} s of "
                                     "video)", ErrorKind.TOO_LARGE)
                _check_pixels(frame.width, frame.height, limits)
                if frame.time is None:
                    t = n / float(stream.average_rate or 25)
                else:  # seconds from the stream's start (an MPEG-TS starts at its clock's time)
                    origin = float(frame.time) if origin is None else origin
                    t = max(0.0, float(frame.time) - origin)
                if t > limits.max_seconds:
                    raise MediaError(f"too long: over {limits.max_seconds:g} s", ErrorKind.TOO_LARGE)
                last_t = max(last_t, t)
                if sampler.wants(t):
                    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                    image = _upright(frame.to_image(), rotation)
                    shown = image.size
                    sampler.take(t, image)
        except av.FFmpegError as exc:
            raise MediaError(f"corrupt video data after {last_t:.1f} s: {describe(exc)}") from None
        has_audio = bool(container.streams.audio)
        fmt = str(container.format.name).split(",")[0]
    if not sampler.times:
        raise MediaError("no video frames (the stream is empty)")
    end = max(last_t + sampler.frame_step(stream), duration or 0.0)
    segments = segment(sampler.times, sampler.hists, spec, end)
    return DecodedVideo(frames=sampler.stacked(), times=[round(t, 3) for t in sampler.times], segments=segments,
                        duration_s=end, width=shown[0], height=shown[1], codec=codec, container=fmt,
                        rotation=rotation, audio=has_audio, interval_s=sampler.interval)


class _Sampler:
    """Keeps the first frame at or after each sample time, at most ``max_frames`` of them (then every
    second one and half the rate)."""

    def __init__(self, spec: VideoSpec, transform: Callable[[Image.Image], np.ndarray] | None) -> None:
        self.spec = spec
        self.transform = transform
        self.interval = 1.0 / spec.fps
        self.next_t = 0.0
        self.times: list[float] = []
        self.hists: list[np.ndarray] = []
        self.frames: list[np.ndarray] = []
        self._last_frame_t: float | None = None
        self._step = 0.0

    def wants(self, t: float) -> bool:
        if self._last_frame_t is not None and t > self._last_frame_t:
            self._step = t - self._last_frame_t if not self._step else min(self._step, t - self._last_frame_t)
        self._last_frame_t = t
        return t + 1e-6 >= self.next_t

    def take(self, t: float, image: Image.Image) -> None:
        self.times.append(t)
        self.hists.append(_histogram(image))
        pixels = self.transform(image) if self.transform is not None else np.asarray(image, dtype=np.uint8)
        self.frames.append(np.asarray(pixels))
        while self.next_t <= t + 1e-6:
            self.next_t += self.interval
        if len(self.times) > self.spec.max_frames:  # thin out: every second sample, half the rate
            self.times, self.hists, self.frames = self.times[::2], self.hists[::2], self.frames[::2]
            self.interval *= 2
            self.next_t = self.times[-1] + self.interval

    def frame_step(self, stream: Any) -> float:
        """How long the last frame shows: the smallest gap seen between frames, else 1 / the stream's rate."""
        if self._step:
            return self._step
        rate = float(stream.average_rate or 0)
        return 1.0 / rate if rate > 0 else 0.0

    def stacked(self) -> np.ndarray:
        """The samples as one array, each list entry dropped as it is copied (never two copies at once)."""
        out = np.empty((len(self.frames), *self.frames[0].shape), dtype=self.frames[0].dtype)
        for i, frame in enumerate(self.frames):
            out[i] = frame
            self.frames[i] = out[i]  # the sample's own array is freed; the list only views ``out``
        return out


def segment(times: list[float], hists: list[np.ndarray], spec: VideoSpec, end_s: float) -> list[Segment]:
    """Group samples into segments at shot changes (histogram distance over ``spec.cut``), none longer than
    ``spec.max_segment_s``; a segment runs from its first sample's time to the next segment's first."""
    starts = [0]
    for i in range(1, len(times)):
        cut = 0.5 * float(np.abs(hists[i] - hists[i - 1]).sum()) > spec.cut
        if cut or times[i] - times[starts[-1]] >= spec.max_segment_s - 1e-6:
            starts.append(i)
    out = []
    for k, first in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else len(times)
        start_s = 0.0 if k == 0 else times[first]
        end = times[stop] if stop < len(times) else max(end_s, times[-1])
        middle = first + (stop - first - 1) // 2
        out.append(Segment(round(start_s, 3), round(end, 3), first, stop - first, middle, round(times[middle], 3)))
    return out


def _histogram(image: Image.Image) -> np.ndarray:
    small = np.asarray(image.convert("RGB").resize((_HIST_SIDE, _HIST_SIDE), Image.Resampling.BILINEAR))
    bins = (small.reshape(-1, 3) // (256 // _HIST_BINS)).astype(np.int64)
    counts = np.concatenate([np.bincount(bins[:, c], minlength=_HIST_BINS) for c in range(3)])
    return (counts / (3.0 * _HIST_SIDE * _HIST_SIDE)).astype(np.float32)  # sums to 1


def _upright(image: Image.Image, rotation: int) -> Image.Image:
    """The frame as it is meant to be shown: the display matrix's counter-clockwise rotation applied."""
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return image.transpose(turn[rotation]) if rotation in turn else image


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_pixels:
        raise MediaError(f"video frames too large: {width}x{height} pixels, over the limit of {limits.max_pixels:,}",
                         ErrorKind.TOO_LARGE)


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def describe(exc: BaseException) -> str:
    """An FFmpeg error in a few words: its message without the file name PyAV appends."""
    message = getattr(exc, "strerror", None) or str(exc)
    message = " ".join(str(message).split()).rstrip(".")
    return (message[:199] + "…") if len(message) > 200 else message or type(exc).__name__
