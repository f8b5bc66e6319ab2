"""Sound in containers libsndfile does not read (``.m4a``, ``.aac``, an ``.mp4`` without pictures, a video's
track), decoded through PyAV (from bytes, or from an open file read as it goes: ``video.Source``) into the
same windows as :func:`xmodal.media.audio.decode_audio`.

The first audio stream is decoded frame by frame, resampled by FFmpeg's resampler to mono float32 at the
spec's rate and cut into windows as it goes (``audio._Windower``), so memory stays at about two windows
plus what was cut. The same checks as for other audio apply: too long, no samples, silent, NaN.

A video's **sound track** (:func:`decode_soundtrack`) is cut the same way, but at the video's segment
boundaries: each segment's time range is its own clip, heard through one window of at most ``window_s``
(its middle, when it is longer; silence where the track ends early), so that every segment gets a vector
of the sound heard while it shows. Memory stays at about one window of samples plus one model input per
segment: bounded by the video spec (``max_frames``), not by the video's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from xmodal.errors import Cancelled, ErrorKind, MediaError
from xmodal.media.audio import DecodedAudio, _pair, _seconds, _Windower, guarded
from xmodal.media.video import Source, describe, open_container
from xmodal.spaces import AudioSpec


def decode_audio_av(source: Source, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    stop: Callable[[], bool] | None = None) -> DecodedAudio:
    """The sound of ``source`` (bytes, or an open file read as it decodes: any container FFmpeg reads) as
    windows; :class:`MediaError` for bad bytes."""
    return guarded(_decode, source, spec, transform, stop)


@dataclass
class Soundtrack:
    """A video's sound cut at its segments: every window's model input, the segment it belongs to, its span."""

    windows: np.ndarray  # (w, ...) float32: what ``transform`` made of each window
    segment: np.ndarray  # (w,) int32: the segment of each window
    spans: list[tuple[float, float]]  # each window's (start, end) seconds in the video

    def __len__(self) -> int:
        return len(self.windows)


def decode_soundtrack(source: Source, spec: AudioSpec, segments: list[tuple[float, float]],
                      transform: Callable[[np.ndarray], np.ndarray] | None = None,
                      stop: Callable[[], bool] | None = None) -> Soundtrack:
    """The first audio stream of a video, cut at ``segments`` ((start, end) seconds, in order, from 0):
    each segment's samples in windows of at most ``spec.window_s`` (see the module docstring). A silent
    track is kept (it is what the video sounds like); corrupt or endless sound is a :class:`MediaError`."""

    def run(source: Source, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None,
            stop: Callable[[], bool] | None) -> Any:
        return _soundtrack(source, spec, segments, transform, stop)

    return guarded(run, source, spec, transform, stop)  # type: ignore[return-value]


def _mono(container: Any, spec: AudioSpec, stop: Callable[[], bool] | None) -> Iterator[np.ndarray]:
    """The first audio stream as chunks of mono float32 at ``spec.sample_rate`` (NaN, too long: errors)."""
    import av

    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        claimed = float(stream.duration * stream.time_base)
        if claimed > spec.max_seconds:
            length, most = _pair(claimed, spec.max_seconds)
            raise MediaError(f"too long: {length} s, at most {most} s", ErrorKind.TOO_LARGE)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
    limit = spec.max_seconds * spec.sample_rate
    produced = 0

    def chunks(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
        nonlocal produced
        for out in frames:
            mono = np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.float32)
            if not np.isfinite(mono).all():
                raise MediaError(f"invalid samples (NaN or infinity) near {_seconds(produced / spec.sample_rate)} s")
            produced += len(mono)
            if produced > limit:
                length, most = _pair(produced / spec.sample_rate, spec.max_seconds)
                raise MediaError(f"too long: at least {length} s, at most {most} s", ErrorKind.TOO_LARGE)
            yield mono

    try:
        for frame in container.decode(stream):
            if stop is not None and stop():
                raise Cancelled("stopped while decoding audio")
            frame.pts = None  # resample by order, not by the container's (maybe odd) timestamps
            yield from chunks(resampler.resample(frame))
        yield from chunks(resampler.resample(None))
    except av.FFmpegError as exc:
        at = _seconds(produced / spec.sample_rate)
        raise MediaError(f"corrupt audio data after {at} s: {describe(exc)}") from None


def _decode(source: Source, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None,
            stop: Callable[[], bool] | None) -> DecodedAudio:
    container = open_container(source, "audio")
    with container:
        if not container.streams.audio:
            raise MediaError("no audio stream", ErrorKind.UNSUPPORTED_MEDIA)
        stream = container.streams.audio[0]
        rate, channels = int(stream.sample_rate or 0), int(stream.channels or 0)
        codec = getattr(stream.codec_context, "name", None) or "unknown"
        windows = _Windower(round(spec.window_s * spec.sample_rate), spec.sample_rate, transform)
        produced, peak = 0, 0.0
        for mono in _mono(container, spec, stop):
            if len(mono):
                peak = max(peak, float(np.max(np.abs(mono))))
            produced += len(mono)
            windows.feed(mono)
        fmt = str(container.format.name).split(",")[0]
    short = round(spec.min_seconds * spec.sample_rate) - produced
    if produced and short > 0:
        windows.feed(np.zeros(short, dtype=np.float32))
    if produced == 0:
        raise MediaError("empty: no audio samples")
    if peak == 0.0:
        raise MediaError("silent (all samples are zero)")
    level = 20.0 * math.log10(peak)
    if level < spec.silence_dbfs:
        raise MediaError(f"silent (peak {level:.1f} dBFS)")
    stacked, spans = windows.result()
    return DecodedAudio(windows=stacked, spans=spans, duration_s=produced / spec.sample_rate, source_rate=rate,
                        channels=channels, format=fmt.upper(), subtype=codec.upper(), window_s=spec.window_s)


class _SegmentCutter:
    """Feeds a stream of samples to one windower per segment, closing each at its segment's end."""

    def __init__(self, spec: AudioSpec, segments: list[tuple[float, float]],
                 transform: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.rate, self.transform = spec.sample_rate, transform
        self.width = round(spec.window_s * spec.sample_rate)
        # segment k holds samples [bounds[k], bounds[k + 1]): at least one each; it is heard through at most
        # one window, its middle [heard[k], heard[k] + width) when it is longer
        self.bounds = [0]
        for _, end in segments:
            self.bounds.append(max(round(end * self.rate), self.bounds[-1] + 1))
        self.heard = [max(a, (a + b - self.width) // 2) for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)]
        self.k, self.at = 0, 0
        self.cut = _Windower(self.width, self.rate, transform)
        self.windows: list[np.ndarray] = []
        self.owner: list[int] = []
        self.spans: list[tuple[float, float]] = []

    @property
    def done(self) -> bool:
        return self.k >= len(self.bounds) - 1

    def feed(self, chunk: np.ndarray) -> None:
        while len(chunk) and not self.done:
            room = self.bounds[self.k + 1] - self.at
            start = self.heard[self.k]  # the part of this segment that is heard, in stream positions
            take = chunk[:room]
            lo, hi = max(0, start - self.at), max(0, start + self.width - self.at)
            self.cut.feed(take[lo:hi])
            self.at += min(room, len(chunk))
            chunk = chunk[room:]
            if self.at == self.bounds[self.k + 1]:
                self._close()

    def pad(self) -> None:
        """Silence for what the track did not cover."""
        while not self.done:
            self.feed(np.zeros(min(self.bounds[self.k + 1] - self.at, 1 << 20), dtype=np.float32))

    def _close(self) -> None:
        stacked, own = self.cut.result()
        start = self.heard[self.k] / self.rate
        self.windows.extend(stacked)
        self.owner.extend([self.k] * len(stacked))
        self.spans.extend((round(start + a, 3), round(start + b, 3)) for a, b in own)
        self.k += 1
        self.cut = _Windower(self.width, self.rate, self.transform)


def _soundtrack(source: Source, spec: AudioSpec, segments: list[tuple[float, float]],
                transform: Callable[[np.ndarray], np.ndarray] | None, stop: Callable[[], bool] | None) -> Soundtrack:
    if not segments:
        raise MediaError("no segments to cut the sound track at")
    cutter = _SegmentCutter(spec, segments, transform)
    container = open_container(source, "video")
    with container:
        if not container.streams.audio:
            raise MediaError("no audio stream", ErrorKind.UNSUPPORTED_MEDIA)
        for mono in _mono(container, spec, stop):
            cutter.feed(mono)
            if cutter.done:
                break  # the sound goes on past the last picture: part of no segment
    cutter.pad()  # the track ended early: the rest of the video is silence
    return Soundtrack(np.stack(cutter.windows).astype(np.float32), np.asarray(cutter.owner, dtype=np.int32),
                      cutter.spans)
