"""Decode untrusted audio bytes into fixed-length mono windows at a model's sample rate.

The bytes are read with libsndfile (through :mod:`soundfile`) block by block, mixed down to mono
by averaging the channels, resampled with :class:`soxr.ResampleStream` and cut into windows as
they arrive, so an hour-long file never holds its whole decoded signal in memory: only a rolling
buffer of about two windows and the windows already cut (or what ``transform`` made of them).
The output depends on the bytes alone: no random crops, same bytes, same arrays.

Every failure, whatever the bytes, is a :class:`~xmodal.errors.MediaError` with a short reason:
unrecognised or malformed data, a clip with no samples (one shorter than the spec's ``min_seconds``
is zero-padded to it), too long, silent or holding NaN, a decode error
in the middle of the stream, and files that are cut short. libsndfile hides truncation in several
ways, so it is looked for explicitly:

* WAV, AIFF and RF64: libsndfile shortens the frame count to what the file holds and only notes
  the header's own claim in its log, which is parsed for it (:func:`_header_claim`).
* FLAC, MP3 with a Xing/Info/VBRI tag, and other formats with a length in the header: fewer
  frames decode than the header announced.
* Ogg (Vorbis, Opus): libsndfile takes the length from the last complete page, so a cut file
  just looks shorter; the page structure is walked instead and a last page cut off in the
  middle means the file was truncated (:func:`_ogg_ends_mid_page`).

libsndfile never reads past the frame count it reports. For an MP3 without a length tag that
count is an estimate from the file size and the first frame's bitrate: a low estimate (VBR files
without a Xing tag) silently cuts the decoded audio short, and nothing here can recover it.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from xmodal.errors import Cancelled, ErrorKind, MediaError
from xmodal.media.types import AUDIO_EXTENSIONS, looks_like_text  # noqa: F401 - AUDIO_EXTENSIONS re-exported
from xmodal.spaces import AudioSpec  # noqa: F401 - re-exported: the spec the decoder applies

logger = logging.getLogger(__name__)

_BLOCK_SAMPLES = 1 << 18  # samples (all channels together) read per block: 1 MiB of float32
_MIN_RATE, _MAX_RATE = 1_000, 1_000_000
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports SF_COUNT_MAX when it does not know the length
#: Headers that give an exact length may differ from what decodes by this much (padding, a last
#: partial sample) before the file counts as truncated.
_EXACT_TOLERANCE_S = 0.005
#: MP3 with a Xing/Info/VBRI tag: the tag holds the frame count. Files written by libsndfile/LAME
#: (CBR, VBR and ABR, 8 to 48 kHz, 0.3 s to 300 s, mono and stereo) decoded to exactly the
#: reported count, while the same files cut in half decoded to 1 % to 50 % of it (short files lose
#: more, as the encoder's padding and bit reservoir weigh more). Tags from other encoders may omit
#: the encoder delay and padding (up to about three MPEG frames, 144 ms at 8 kHz), and damaged last
#: frames or trailing junk should not fail a file, so only a shortfall over max(0.5 s, 5 %) fails.
#: MP3 without such a tag get no check at all: libsndfile's count is then estimated from the file
#: size, so it shrinks along with a truncated file (a cut file decoded to 94 % to 100 % of its own
#: estimate) and intact VBR/ABR files decoded to as little as 68 % of it: the count can neither
#: catch truncation nor be trusted.
_MP3_TOLERANCE_S = 0.5
_MP3_TOLERANCE_FRACTION = 0.05
_MP3_LENGTH_TAGS = (b"Xing", b"Info", b"VBRI")
#: Sizes writers put in a WAV data chunk when they do not know the length yet (streaming).
_PLACEHOLDER_SIZES = frozenset({0xFFFFFFFF, 0x7FFFFFFF})

# libsndfile's log (SoundFile.extra_info) notes header lengths that the file does not hold.
_WAV_DATA_CLAIM = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_FRAME_CLAIMS = (
    re.compile(r"from 'COMM' chunk \((\d+)\)"),  # AIFF
    re.compile(r"from 'ds64' chunk of (\d+)"),  # RF64
)
_ERROR_PREFIX = re.compile(r"^error\s*:\s*", re.IGNORECASE)  # libsndfile's "Error : flac decoder lost sync."
_SF_ERR_UNRECOGNISED_FORMAT = 1
#: libsndfile's "File does not exist or is not a regular file (possibly a pipe?)": what it says when
#: bytes that looked like MPEG audio (random data, a few bytes of an MP3) do not decode.
_SFE_BAD_FILE = 7


@dataclass
class DecodedAudio:
    """The windows of one clip and facts about the file.

    ``windows`` is float32 with one row per window: its mono samples at the spec's rate, or what
    ``transform`` returned for it. ``spans`` are the windows' (start, end) in seconds of the
    clip, rounded to milliseconds; ``duration_s``, ``source_rate`` and ``channels`` describe the
    file as stored, ``format`` and ``subtype`` are soundfile's names (``"WAV"``/``"PCM_16"``,
    ``"OGG"``/``"OPUS"``, ``"MP3"``/``"MPEG_LAYER_III"``...) and ``window_s`` the spec's window length.
    """

    windows: np.ndarray
    spans: list[tuple[float, float]]
    duration_s: float
    source_rate: int
    channels: int
    format: str
    subtype: str
    window_s: float


def decode_audio(
    data: bytes, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None = None,
    stop: Callable[[], bool] | None = None,
) -> DecodedAudio:
    """Decode ``data`` into mono windows of ``spec.window_s`` seconds at ``spec.sample_rate``.

    A clip no longer than one window gives a single window of its own length (no padding). A
    longer clip gives windows at 0, W, 2W... while they fit, and, when samples remain, one last
    window covering the last W samples (overlapping the one before). ``transform``, if given, is
    applied to each window (a fresh array it may keep or change) as soon as it is cut, and only
    its float32 results are kept. Exceptions raised by ``transform`` propagate unchanged; anything
    wrong with ``data`` raises :class:`MediaError`. ``stop`` is asked between blocks: when it says
    True, decoding ends with :class:`Cancelled` (a query whose client has gone).
    """
    return guarded(_decode, data, spec, transform, stop)


#: an audio decoder: its input (bytes; ``avaudio``'s also take an open file), spec, transform, stop
Decoder = Callable[[Any, AudioSpec, "Callable[[np.ndarray], np.ndarray] | None", "Callable[[], bool] | None"],
                   "DecodedAudio"]


def guarded(decode: Decoder, data: Any, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None,
            stop: Callable[[], bool] | None) -> DecodedAudio:
    """Run an audio decoder so that only :class:`MediaError` (or :class:`Cancelled`, or what ``transform``
    raised) leaves it, whatever the bytes: every audio decoder's one error contract."""
    try:
        return decode(data, spec, transform, stop)
    except (MediaError, Cancelled):
        raise
    except _TransformError as exc:
        raise exc.error from None
    except MemoryError:
        raise MediaError("audio too large: out of memory while decoding", ErrorKind.TOO_LARGE) from None
    except Exception as exc:  # safety net: no other exception may escape for any bytes
        logger.debug("unexpected error decoding audio", exc_info=True)
        raise MediaError(f"corrupt audio: {_describe(exc)}") from None


def audio_metadata(decoded: DecodedAudio) -> dict[str, Any]:
    """JSON-able facts about a decoded clip, for the catalog."""
    return {
        "duration_s": round(decoded.duration_s, 3),
        "sample_rate": decoded.source_rate,
        "channels": decoded.channels,
        "format": decoded.format,
        "subtype": decoded.subtype,
        "windows": len(decoded.spans),
        "window_s": decoded.window_s,
    }


class _TransformError(Exception):
    """Carries an exception raised by the caller's transform past the safety net."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _decode(
    data: bytes, spec: AudioSpec, transform: Callable[[np.ndarray], np.ndarray] | None,
    stop: Callable[[], bool] | None,
) -> DecodedAudio:
    if not data:
        raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
    try:
        sound = sf.SoundFile(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as exc:  # LibsndfileError, RuntimeError, ValueError...: all mean "not readable"
        raise MediaError(_open_failure(data, exc), ErrorKind.UNSUPPORTED_MEDIA) from None

    with sound:
        rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
        fmt, subtype = str(sound.format), str(sound.subtype)
        if channels < 1:
            raise MediaError(f"no audio channels ({channels})")
        if not _MIN_RATE <= rate <= _MAX_RATE:
            raise MediaError(f"unsupported sample rate: {rate} Hz")
        known = 0 <= frames < _UNKNOWN_FRAMES
        estimated = fmt == "MP3" and not _mp3_has_length_tag(data)
        exact_tolerance = _EXACT_TOLERANCE_S * rate

        if known:
            claim = _header_claim(_log_of(sound), frames)
            if claim is not None and claim - frames > exact_tolerance:
                said, held = _pair(claim / rate, frames / rate)
                raise MediaError(f"truncated: header says {said} s, file holds {held} s")
        if fmt == "OGG" and _ogg_ends_mid_page(data):
            raise MediaError(f"truncated: the Ogg data ends inside a page after {_seconds(frames / rate)} s")
        if known and not estimated and frames > spec.max_seconds * rate:
            length, limit = _pair(frames / rate, spec.max_seconds)
            raise MediaError(f"too long: {length} s, at most {limit} s", ErrorKind.TOO_LARGE)

        decoded, peak, windows = _stream(sound, rate, channels, spec, transform, stop)

    duration = decoded / rate
    if known and not estimated:
        tolerance = exact_tolerance
        if fmt == "MP3":
            tolerance = max(_MP3_TOLERANCE_S * rate, _MP3_TOLERANCE_FRACTION * frames)
        if frames - decoded > tolerance:
            said, held = _pair(frames / rate, duration)
            raise MediaError(f"truncated: header says {said} s, file holds {held} s")
    if decoded == 0:  # shorter clips than ``min_seconds`` were padded with silence; none at all is nothing
        raise MediaError("empty: no audio samples")
    if peak == 0.0:
        raise MediaError("silent (all samples are zero)")
    level = 20.0 * math.log10(peak)
    if level < spec.silence_dbfs:
        shown = f"{level:.0f}"
        if shown == f"{spec.silence_dbfs:.0f}":
            shown = f"{level:.1f}"
        raise MediaError(f"silent (peak {shown} dBFS)")

    stacked, spans = windows.result()
    return DecodedAudio(
        windows=stacked,
        spans=spans,
        duration_s=duration,
        source_rate=rate,
        channels=channels,
        format=fmt,
        subtype=subtype,
        window_s=spec.window_s,
    )


def _stream(
    sound: sf.SoundFile,
    rate: int,
    channels: int,
    spec: AudioSpec,
    transform: Callable[[np.ndarray], np.ndarray] | None,
    stop: Callable[[], bool] | None = None,
) -> tuple[int, float, _Windower]:
    """Read, check, mix down, resample and window the whole stream; (frames read, mono peak, windows)."""
    block = np.empty((max(1, _BLOCK_SAMPLES // channels), channels), dtype=np.float32)
    resampler = None
    if rate != spec.sample_rate:
        resampler = soxr.ResampleStream(rate, spec.sample_rate, 1, dtype="float32")
    windows = _Windower(round(spec.window_s * spec.sample_rate), spec.sample_rate, transform)
    limit = spec.max_seconds * rate
    decoded, peak = 0, 0.0
    while True:
        if stop is not None and stop():
            raise Cancelled("stopped while decoding audio")
        try:
            # read(out=...) returns only the part of ``block`` it filled; blocks() would hand back
            # stale samples after a short read (a truncated MP3 then "decodes" to full length).
            got = sound.read(out=block)
        except MemoryError:
            raise
        except Exception as exc:
            where = _stream_position(sound, decoded)  # where the decoder stopped, inside the block
            raise MediaError(
                f"corrupt audio data after {_seconds(where / rate)} s: {_describe(exc)}"
            ) from None
        count = len(got)
        if count:
            finite = np.isfinite(got)
            if not finite.all():
                first = int(np.argmin(finite.all(axis=1)))
                at = _seconds((decoded + first) / rate)
                raise MediaError(f"invalid samples (NaN or infinity) at {at} s")
            mono = got[:, 0] if channels == 1 else got.mean(axis=1, dtype=np.float32)
            peak = max(peak, float(np.max(np.abs(mono))))
            decoded += count
            if decoded > limit:
                length, most = _pair(decoded / rate, spec.max_seconds)
                raise MediaError(f"too long: at least {length} s, at most {most} s", ErrorKind.TOO_LARGE)
            windows.feed(mono if resampler is None else resampler.resample_chunk(mono))
        if count == 0:  # a short read is not taken for the end: libsndfile may return one early
            break
    if resampler is not None:
        windows.feed(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    short = round(spec.min_seconds * spec.sample_rate) - (windows.offset + windows.fill)
    if decoded and short > 0:  # a click or UI sound: zero-padded to the shortest clip the model takes
        windows.feed(np.zeros(short, dtype=np.float32))
    return decoded, peak, windows


class _Windower:
    """Cuts a stream of mono samples into windows, keeping only about two windows of samples."""

    def __init__(self, width: int, rate: int, transform: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.width = width
        self.rate = rate
        self.transform = transform
        self.buffer = np.empty(min(2 * width, 1 << 16), dtype=np.float32)
        self.fill = 0  # samples held in ``buffer``
        self.offset = 0  # stream position of buffer[0]
        self.next_start = 0  # stream position of the next full window
        self.windows: list[np.ndarray] = []
        self.starts: list[tuple[int, int]] = []

    def feed(self, chunk: np.ndarray) -> None:
        pos = 0
        while pos < len(chunk):
            if self.fill == len(self.buffer):
                self._make_room()
            take = min(len(chunk) - pos, len(self.buffer) - self.fill)
            self.buffer[self.fill : self.fill + take] = chunk[pos : pos + take]
            self.fill += take
            pos += take
            end = self.offset + self.fill
            while self.next_start + self.width <= end:
                at = self.next_start - self.offset
                self._emit(self.buffer[at : at + self.width], self.next_start)
                self.next_start += self.width
            # Now next_start > end - width: the last ``width`` samples hold all that is not yet
            # in a window, and also everything the final end-aligned window can need.

    def _make_room(self) -> None:
        if len(self.buffer) < 2 * self.width:
            grown = np.empty(min(2 * len(self.buffer), 2 * self.width), dtype=np.float32)
            grown[: self.fill] = self.buffer[: self.fill]
            self.buffer = grown
            return
        keep_from = self.fill - self.width  # > 0: the buffer is full and twice a window long
        self.buffer[: self.width] = self.buffer[keep_from : self.fill]
        self.offset += keep_from
        self.fill = self.width

    def _emit(self, samples: np.ndarray, start: int) -> None:
        window = samples.copy()  # the buffer is reused: never hand out a view of it
        if self.transform is not None:
            try:
                result = self.transform(window)
            except Exception as exc:
                raise _TransformError(exc) from exc
            window = np.array(result, dtype=np.float32)  # a compact copy, never a view of a bigger array
        self.windows.append(window)
        self.starts.append((start, start + len(samples)))

    def result(self) -> tuple[np.ndarray, list[tuple[float, float]]]:
        end = self.offset + self.fill
        if end > self.next_start:
            if self.next_start == 0:  # no longer than one window: the whole clip, unpadded
                self._emit(self.buffer[: self.fill], 0)
            else:  # the last ``width`` samples, overlapping the window before
                self._emit(self.buffer[self.fill - self.width : self.fill], end - self.width)
        spans = [(round(a / self.rate, 3), round(b / self.rate, 3)) for a, b in self.starts]
        return np.stack(self.windows), spans


def _stream_position(sound: sf.SoundFile, decoded: int) -> int:
    try:
        return max(decoded, int(sound.tell()))
    except Exception:
        return decoded


def _log_of(sound: sf.SoundFile) -> str:
    try:
        return str(sound.extra_info)
    except Exception:
        return ""


def _header_claim(log: str, frames: int) -> int | None:
    """Frames the header claims when libsndfile's log says the file holds fewer (WAV, AIFF, RF64)."""
    match = _WAV_DATA_CLAIM.search(log)
    if match:
        declared, held = int(match.group(1)), int(match.group(2))
        if declared in _PLACEHOLDER_SIZES or held <= 0 or declared <= held:
            return None
        return round(frames * declared / held)
    for pattern in _FRAME_CLAIMS:
        match = pattern.search(log)
        if match:
            return int(match.group(1))
    return None


def _ogg_ends_mid_page(data: bytes) -> bool:
    """Whether the Ogg pages in ``data`` end with one cut short (stray trailing data is ignored)."""
    pos, size = 0, len(data)
    if not data.startswith(b"OggS"):
        return False
    while pos < size:
        if not data.startswith(b"OggS", pos):
            return size - pos < 4 and b"OggS".startswith(data[pos:])
        if size - pos < 27:
            return True
        segments = data[pos + 26]
        if size - pos < 27 + segments:
            return True
        pos += 27 + segments + sum(data[pos + 27 : pos + 27 + segments])
    return pos > size


def _mp3_has_length_tag(data: bytes) -> bool:
    """Whether the first MPEG frame holds a Xing, Info (LAME) or VBRI tag with the frame count."""
    start = 0
    if data.startswith(b"ID3") and len(data) >= 10:
        size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
        start = 10 + size + (10 if data[5] & 0x10 else 0)
    end = min(len(data) - 1, start + 65536)
    pos = data.find(b"\xff", start, end)
    while pos != -1 and data[pos + 1] & 0xE0 != 0xE0:
        pos = data.find(b"\xff", pos + 1, end)
    if pos == -1:
        return False
    head = data[pos + 4 : pos + 4 + 40]  # the tag follows the 9 to 32 bytes of side information
    return any(tag in head for tag in _MP3_LENGTH_TAGS)


def _open_failure(data: bytes, exc: Exception) -> str:
    if getattr(exc, "code", None) in (_SF_ERR_UNRECOGNISED_FORMAT, _SFE_BAD_FILE):
        head = data[:512]
        if looks_like_text(head):
            return "not an audio file: the content looks like text"
        return f"not a recognised audio format (starts with {head[:8].hex(' ')})"
    return f"unreadable audio file: {_describe(exc)}"


def _seconds(value: float, digits: int | None = None) -> str:
    """``12.0``, ``3.1``, ``0.05``: one decimal from a second up, milliseconds below."""
    if digits is None:
        if value >= 1:
            return f"{value:.1f}"
        digits = 3
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _pair(value: float, limit: float) -> tuple[str, str]:
    """Two durations shown with enough digits to tell them apart (3600.04 vs 3600.0)."""
    for digits in (None, 3, 6):
        shown = _seconds(value, digits), _seconds(limit, digits)
        if shown[0] != shown[1]:
            return shown
    return shown


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "error_string", None) or str(exc)
    message = _ERROR_PREFIX.sub("", " ".join(str(message).split())).rstrip(".")
    if len(message) > 200:
        message = message[:199] + "…"
    return message or type(exc).__name__
