"""Sound in containers libsndfile does not read (``.m4a``, ``.aac``, an ``.mp4`` without pictures, a video's
track), decoded through PyAV into the same windows as :func:`xmodal.media.audio.decode_audio`.

The first audio stream is decoded frame by frame, resampled by FFmpeg's resampler to mono float32 at the
spec's rate and cut into windows as it goes (``audio._Windower``), so memory stays at about two windows
plus what was cut. The same checks as for other audio apply: too long, no samples, silent, NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from xmodal.errors import Cancelled, ErrorKind, MediaError
from xmodal.media.audio import DecodedAudio, _pair, _seconds, _Windower, guarded
from xmodal.media.video import describe, open_container
from xmodal.spaces import AudioSpec


def decode_audio_av(data: bytes, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    stop: Callable[[], bool] | None = None) -> DecodedAudio:
    """The sound of ``data`` (any container FFmpeg reads) as windows; :class:`MediaError` for bad bytes."""
    return guarded(_decode, data, spec, transform, stop)


def _decode(data: bytes, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None,
            stop: Callable[[], bool] | None) -> DecodedAudio:
    import av

    container = open_container(data, "audio")
    with container:
        if not container.streams.audio:
            raise MediaError("no audio stream", ErrorKind.UNSUPPORTED_MEDIA)
        stream = container.streams.audio[0]
        rate, channels = int(stream.sample_rate or 0), int(stream.channels or 0)
        codec = getattr(stream.codec_context, "name", None) or "unknown"
        if stream.duration is not None and stream.time_base is not None:
            claimed = float(stream.duration * stream.time_base)
            if claimed > spec.max_seconds:
                length, most = _pair(claimed, spec.max_seconds)
                raise MediaError(f"too long: {length} s, at most {most} s", ErrorKind.TOO_LARGE)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
        windows = _Windower(round(spec.window_s * spec.sample_rate), spec.sample_rate, transform)
        limit = spec.max_seconds * spec.sample_rate
        produced, peak = 0, 0.0

        def feed(frames: list[av.AudioFrame]) -> None:
            nonlocal produced, peak
            for out in frames:
                mono = np.ascontiguousarray(out.to_ndarray().reshape(-1), dtype=np.float32)
                if not np.isfinite(mono).all():
                    raise MediaError(f"invalid samples (NaN or infinity) near {_seconds(produced / spec.sample_rate)} s")
                if len(mono):
                    peak = max(peak, float(np.max(np.abs(mono))))
                produced += len(mono)
                if produced > limit:
                    length, most = _pair(produced / spec.sample_rate, spec.max_seconds)
                    raise MediaError(f"too long: at least {length} s, at most {most} s", ErrorKind.TOO_LARGE)
                windows.feed(mono)

        try:
            for frame in container.decode(stream):
                if stop is not None and stop():
                    raise Cancelled("stopped while decoding audio")
                frame.pts = None  # resample by order, not by the container's (maybe odd) timestamps
                feed(resampler.resample(frame))
            feed(resampler.resample(None))
        except av.FFmpegError as exc:
            at = _seconds(produced / spec.sample_rate)
            raise MediaError(f"corrupt audio data after {at} s: {describe(exc)}") from None
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
