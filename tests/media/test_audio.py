"""decode_audio on real files of every format it should take, and bytes it must refuse."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xmodal.errors import MediaError
from xmodal.media.audio import AUDIO_EXTENSIONS, AudioSpec, DecodedAudio, audio_metadata, decode_audio

RATE = 48_000
SPEC = AudioSpec(sample_rate=RATE)
LEVEL = 10 ** (-12 / 20)  # -12 dBFS peak


def signal(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A deterministic mono test signal: three sines plus a little noise, peaking at -12 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    x = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1234 * t) + 0.3 * np.sin(2 * np.pi * 97 * t)
    x += 0.1 * rng.standard_normal(len(t))
    return (x * (LEVEL / np.max(np.abs(x)))).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16", **kw: object) -> bytes:
    """Encode with soundfile in chunks: libsndfile 1.2.2 crashes writing long Vorbis in one call."""
    buf = io.BytesIO()
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    with sf.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype, **kw) as out:
        for i in range(0, len(samples), 8192):
            out.write(samples[i : i + 8192])
    return buf.getvalue()


def save(tmp_path: Path, name: str, data: bytes) -> bytes:
    """Write ``data`` to ``tmp_path / name`` and read it back, as the indexer would."""
    path = tmp_path / name
    path.write_bytes(data)
    return path.read_bytes()


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(MediaError) as info:
        call()
    return info.value.reason


def strip_mp3_length_tag(data: bytes) -> bytes:
    """The same MP3 without its Xing/Info tag, so libsndfile estimates the length from the size."""
    out = bytearray(data)
    for tag in (b"Xing", b"Info"):
        at = out.find(tag, 0, 200)
        if at >= 0:
            out[at : at + 4] = b"XXXX"
    return bytes(out)


# --- formats ---------------------------------------------------------------------------------

FORMATS = [
    # name, format, subtype, source rate
    ("a.wav", "WAV", "PCM_16", 44_100),
    ("a.wave", "WAV", "FLOAT", 48_000),
    ("a.wav", "WAV", "PCM_U8", 16_000),
    ("a.flac", "FLAC", "PCM_24", 44_100),
    ("a.ogg", "OGG", "VORBIS", 44_100),
    ("a.oga", "OGG", "VORBIS", 22_050),
    ("a.opus", "OGG", "OPUS", 48_000),
    ("a.mp3", "MP3", "MPEG_LAYER_III", 44_100),
    ("a.aiff", "AIFF", "PCM_16", 32_000),
    ("a.aif", "AIFF", "PCM_24", 48_000),
]


@pytest.mark.parametrize(("name", "fmt", "subtype", "rate"), FORMATS)
def test_each_format_decodes(tmp_path: Path, name: str, fmt: str, subtype: str, rate: int) -> None:
    assert Path(name).suffix in AUDIO_EXTENSIONS
    data = save(tmp_path, name, encode(signal(3.0, rate), rate, fmt, subtype))
    decoded = decode_audio(data, SPEC)
    assert (decoded.format, decoded.subtype) == (fmt, subtype)
    assert (decoded.source_rate, decoded.channels) == (rate, 1)
    assert decoded.duration_s == pytest.approx(3.0, abs=0.002)
    assert decoded.windows.dtype == np.float32
    assert decoded.windows.shape[0] == 1
    assert abs(decoded.windows.shape[1] - 3 * RATE) <= 4
    assert decoded.spans == [(0.0, pytest.approx(3.0, abs=0.002))]
    peak = float(np.max(np.abs(decoded.windows)))
    assert 0.6 * LEVEL < peak < 1.6 * LEVEL  # the signal is there, at about the level written


@pytest.mark.parametrize(("subtype", "tol"), [("PCM_16", 1e-4), ("FLOAT", 0.0), ("PCM_U8", 1e-2)])
def test_lossless_wav_at_model_rate_keeps_the_samples(subtype: str, tol: float) -> None:
    x = signal(2.0)
    decoded = decode_audio(encode(x, RATE, "WAV", subtype), SPEC)
    assert decoded.windows.shape == (1, len(x))
    assert np.max(np.abs(decoded.windows[0] - x)) <= tol


def test_stereo_is_averaged_to_mono() -> None:
    x = signal(2.0)
    decoded = decode_audio(encode(np.stack([x, 0.5 * x], axis=1), RATE, "WAV", "PCM_16"), SPEC)
    assert decoded.channels == 2
    assert decoded.windows.shape == (1, len(x))
    assert np.max(np.abs(decoded.windows[0] - 0.75 * x)) < 1e-4


def test_stereo_that_cancels_out_is_silent() -> None:
    x = signal(1.0)
    data = encode(np.stack([x, -x], axis=1), RATE, "WAV", "FLOAT")
    assert reason_of(lambda: decode_audio(data, SPEC)) == "silent (all samples are zero)"


def test_resampling_44100_to_48000_gives_the_expected_count() -> None:
    x = signal(7.0, 44_100)
    decoded = decode_audio(encode(x, 44_100, "WAV", "FLOAT"), SPEC)
    assert decoded.source_rate == 44_100
    assert decoded.duration_s == pytest.approx(7.0)
    assert abs(decoded.windows.shape[1] - 7 * RATE) <= 2


def test_resampling_16000_to_48000_keeps_pitch_and_level() -> None:
    t = np.arange(3 * 16_000) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    decoded = decode_audio(encode(tone, 16_000, "WAV", "FLOAT"), SPEC)
    out = decoded.windows[0]
    assert abs(len(out) - 3 * RATE) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * RATE / len(out) == pytest.approx(1000, abs=1)
    assert float(np.max(np.abs(out[RATE:-RATE]))) == pytest.approx(0.5, abs=0.01)


def test_resampling_to_a_lower_rate() -> None:
    decoded = decode_audio(encode(signal(2.0), RATE, "WAV", "FLOAT"), AudioSpec(sample_rate=16_000))
    assert abs(decoded.windows.shape[1] - 2 * 16_000) <= 2


# --- windows ---------------------------------------------------------------------------------


def test_long_clip_gets_full_windows_and_an_end_aligned_last_one() -> None:
    x = signal(25.0)
    decoded = decode_audio(encode(x, RATE, "WAV", "FLOAT"), SPEC)
    assert decoded.spans == [(0.0, 10.0), (10.0, 20.0), (15.0, 25.0)]
    assert decoded.windows.shape == (3, 10 * RATE)
    for row, (start, end) in zip(decoded.windows, decoded.spans, strict=True):
        np.testing.assert_array_equal(row, x[round(start * RATE) : round(end * RATE)])


def test_exact_multiple_of_the_window_has_no_extra_window() -> None:
    decoded = decode_audio(encode(signal(20.0), RATE, "WAV", "FLOAT"), SPEC)
    assert decoded.spans == [(0.0, 10.0), (10.0, 20.0)]
    assert decoded.windows.shape == (2, 10 * RATE)


def test_one_sample_over_a_window() -> None:
    x = signal(10.0 + 1 / RATE)
    decoded = decode_audio(encode(x, RATE, "WAV", "FLOAT"), SPEC)
    assert decoded.spans == [(0.0, 10.0), (0.0, 10.0)]  # the second starts one sample later
    np.testing.assert_array_equal(decoded.windows[1], x[1:])


def test_short_clip_is_one_unpadded_window() -> None:
    decoded = decode_audio(encode(signal(4.0), RATE, "WAV", "FLOAT"), SPEC)
    assert decoded.windows.shape == (1, 4 * RATE)
    assert decoded.spans == [(0.0, 4.0)]


def test_clip_of_exactly_one_window() -> None:
    decoded = decode_audio(encode(signal(10.0), RATE, "WAV", "FLOAT"), SPEC)
    assert decoded.windows.shape == (1, 10 * RATE)
    assert decoded.spans == [(0.0, 10.0)]


def test_short_windows_many_chunks_after_resampling() -> None:
    spec = AudioSpec(sample_rate=16_000, window_s=0.25)
    decoded = decode_audio(encode(signal(3.1, 44_100), 44_100, "FLAC", "PCM_16"), spec)
    assert decoded.windows.shape == (13, 4000)
    assert decoded.spans[:2] == [(0.0, 0.25), (0.25, 0.5)]
    assert decoded.spans[-2:] == [(2.75, 3.0), (2.85, 3.1)]


def test_shorter_than_the_minimum_is_zero_padded_and_only_no_samples_is_refused() -> None:
    decoded = decode_audio(encode(signal(0.1), RATE), SPEC)
    assert decoded.windows.shape == (1, 4800)
    click = decode_audio(encode(signal(0.005), RATE), SPEC)  # a UI click: 240 samples
    assert click.windows.shape == (1, 4800) and click.duration_s == pytest.approx(0.005)
    assert np.abs(click.windows[0, :240]).max() > 0.01  # the click itself
    assert not click.windows[0, 240:].any()  # the padding is silence
    reason = reason_of(lambda: decode_audio(encode(np.zeros(0, dtype=np.float32), RATE), SPEC))
    assert reason.startswith("empty")


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS"), ("WAV", "PCM_16")]
)
def test_decoding_is_deterministic(fmt: str, subtype: str) -> None:
    data = encode(signal(12.0, 44_100), 44_100, fmt, subtype)
    first, second = decode_audio(data, SPEC), decode_audio(data, SPEC)
    np.testing.assert_array_equal(first.windows, second.windows)
    assert first.spans == second.spans == [(0.0, 10.0), (2.0, 12.0)]


def test_transform_is_applied_to_each_window() -> None:
    x = signal(25.0)
    seen: list[int] = []

    def transform(window: np.ndarray) -> np.ndarray:
        seen.append(len(window))
        window *= 0  # the transform may scribble on its input without harm
        return np.arange(8, dtype=np.float64) + len(seen)

    decoded = decode_audio(encode(x, RATE, "WAV", "FLOAT"), SPEC, transform=transform)
    assert seen == [10 * RATE] * 3
    assert decoded.windows.dtype == np.float32
    np.testing.assert_array_equal(decoded.windows, np.arange(8)[None, :] + np.array([[1], [2], [3]]))

    halves = decode_audio(encode(x, RATE, "WAV", "FLOAT"), SPEC, transform=lambda w: w[:8] * 2)
    assert halves.windows.shape == (3, 8)
    np.testing.assert_array_equal(halves.windows[2], x[15 * RATE : 15 * RATE + 8] * 2)


def test_transform_errors_propagate_unchanged() -> None:
    def broken(window: np.ndarray) -> np.ndarray:
        raise KeyError("model says no")

    with pytest.raises(KeyError, match="model says no"):
        decode_audio(encode(signal(1.0), RATE), SPEC, transform=broken)


def test_metadata_is_json_able() -> None:
    decoded = decode_audio(encode(np.stack([signal(12.5, 44_100)] * 2, axis=1), 44_100, "FLAC"), SPEC)
    meta = audio_metadata(decoded)
    assert meta == {
        "duration_s": 12.5,
        "sample_rate": 44_100,
        "channels": 2,
        "format": "FLAC",
        "subtype": "PCM_16",
        "windows": 2,
        "window_s": 10.0,
    }
    assert json.loads(json.dumps(meta)) == meta
    assert isinstance(decoded, DecodedAudio)


def test_spec_validation() -> None:
    for bad in (
        {"sample_rate": 0},
        {"sample_rate": RATE, "window_s": 0.0},
        {"sample_rate": RATE, "min_seconds": 5.0, "max_seconds": 1.0},
        {"sample_rate": RATE, "silence_dbfs": float("nan")},
    ):
        with pytest.raises(ValueError):
            AudioSpec(**bad)  # type: ignore[arg-type]


# --- refusals --------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    assert reason_of(lambda: decode_audio(b"", SPEC)) == "empty file (0 bytes)"


def test_random_bytes() -> None:
    data = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    assert reason_of(lambda: decode_audio(data, SPEC)).startswith(
        "not a recognised audio format (starts with "
    )


def test_text_named_wav(tmp_path: Path) -> None:
    data = save(tmp_path, "notes.wav", b"just some notes, not a recording\n" * 20)
    assert reason_of(lambda: decode_audio(data, SPEC)) == "not an audio file: the content looks like text"


def test_wav_without_data_chunk() -> None:
    data = b"RIFF\x04\x00\x00\x00WAVE"
    assert reason_of(lambda: decode_audio(data, SPEC)).startswith("unreadable audio file: ")


def test_all_zeros_is_silent() -> None:
    data = encode(np.zeros(RATE, dtype=np.float32), RATE)
    assert reason_of(lambda: decode_audio(data, SPEC)) == "silent (all samples are zero)"


def test_near_silence_is_silent() -> None:
    x = signal(1.0) * np.float32(10 ** (-80 / 20) / LEVEL)  # peak -80 dBFS
    data = encode(x, RATE, "WAV", "FLOAT")
    assert reason_of(lambda: decode_audio(data, SPEC)) == "silent (peak -80 dBFS)"
    quiet = decode_audio(data, AudioSpec(sample_rate=RATE, silence_dbfs=-90.0))  # the threshold is the spec's
    assert quiet.windows.shape == (1, RATE)


def test_too_long_from_the_header() -> None:
    data = encode(signal(3.0), RATE)
    spec = AudioSpec(sample_rate=RATE, max_seconds=2.0)
    assert reason_of(lambda: decode_audio(data, spec)) == "too long: 3.0 s, at most 2.0 s"
    assert decode_audio(data, AudioSpec(sample_rate=RATE, max_seconds=3.0)).duration_s == 3.0


def test_too_long_while_decoding_when_the_length_is_only_estimated() -> None:
    # Without its length tag, an MP3's length is an estimate: it is checked as it decodes.
    data = strip_mp3_length_tag(encode(signal(9.0, 44_100), 44_100, "MP3", "MPEG_LAYER_III"))
    spec = AudioSpec(sample_rate=RATE, max_seconds=1.0)
    reason = reason_of(lambda: decode_audio(data, spec))
    assert reason.startswith("too long: at least "), reason
    assert reason.endswith(" s, at most 1.0 s")


def test_mp3_without_length_tag_decodes() -> None:
    for mode in ("CONSTANT", "VARIABLE", "AVERAGE"):
        data = strip_mp3_length_tag(
            encode(signal(5.0, 44_100), 44_100, "MP3", "MPEG_LAYER_III", bitrate_mode=mode)
        )
        decoded = decode_audio(data, SPEC)
        assert decoded.format == "MP3"
        assert decoded.duration_s > 1.0, mode


def test_truncated_wav() -> None:
    data = encode(signal(10.0), RATE)
    reason = reason_of(lambda: decode_audio(data[: len(data) // 2], SPEC))
    assert reason == "truncated: header says 10.0 s, file holds 5.0 s"


def test_wav_header_claiming_ten_times_the_data() -> None:
    data = bytearray(encode(signal(10.0), RATE))
    at = data.find(b"data")
    (size,) = struct.unpack("<I", data[at + 4 : at + 8])
    data[at + 4 : at + 8] = struct.pack("<I", size * 10)
    reason = reason_of(lambda: decode_audio(bytes(data), SPEC))
    assert reason == "truncated: header says 100.0 s, file holds 10.0 s"


def test_wav_with_placeholder_data_size_decodes() -> None:
    # Streaming writers leave 0xFFFFFFFF in the size fields: not a truncation.
    data = bytearray(encode(signal(2.0), RATE))
    at = data.find(b"data")
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    assert decode_audio(bytes(data), SPEC).duration_s == 2.0


def test_truncated_aiff() -> None:
    data = encode(signal(10.0), RATE, "AIFF", "PCM_16")
    reason = reason_of(lambda: decode_audio(data[: len(data) // 2], SPEC))
    assert reason == "truncated: header says 10.0 s, file holds 5.0 s"


def test_truncated_flac() -> None:
    data = encode(signal(10.0), RATE, "FLAC", "PCM_16")
    reason = reason_of(lambda: decode_audio(data[: len(data) // 2], SPEC))
    assert reason.startswith("corrupt audio data after 4.")
    assert reason.endswith(" s: flac decoder lost sync")


def test_truncated_mp3() -> None:
    data = encode(signal(10.0, 44_100), 44_100, "MP3", "MPEG_LAYER_III")
    reason = reason_of(lambda: decode_audio(data[: len(data) // 2], SPEC))
    assert reason.startswith("truncated: header says 10.0 s, file holds 4.")
    decode_audio(data, SPEC)  # the whole file is fine


@pytest.mark.parametrize(("subtype", "rate"), [("VORBIS", 44_100), ("OPUS", 48_000)])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_ogg(subtype: str, rate: int, keep: float) -> None:
    data = encode(signal(10.0, rate), rate, "OGG", subtype)
    reason = reason_of(lambda: decode_audio(data[: int(len(data) * keep)], SPEC))
    assert reason.startswith("truncated: the Ogg data ends inside a page after ")
    assert decode_audio(data, SPEC).duration_s == pytest.approx(10.0)


def test_mp3_behind_an_id3v2_tag() -> None:
    mp3 = encode(signal(4.0, 44_100), 44_100, "MP3", "MPEG_LAYER_III")
    body = b"TIT2" + struct.pack(">I", 11) + b"\x00\x00\x03Some title" + b"\x00" * 2000
    size = bytes((len(body) >> shift) & 0x7F for shift in (21, 14, 7, 0))  # syncsafe
    data = b"ID3\x04\x00\x00" + size + body + mp3
    assert decode_audio(data, SPEC).duration_s == pytest.approx(4.0)
    reason = reason_of(lambda: decode_audio(data[: len(data) // 2], SPEC))
    assert reason.startswith("truncated: header says 4.0 s, file holds 1.")


@pytest.mark.parametrize(
    ("channels", "rate", "expected"),
    [
        (0, RATE, "unreadable audio file: Channel count is zero"),
        (1, 5, "unsupported sample rate: 5 Hz"),
        (1, 4_000_000, "unsupported sample rate: 4000000 Hz"),
    ],
)
def test_absurd_wav_header(channels: int, rate: int, expected: str) -> None:
    data = bytearray(encode(signal(1.0), RATE))
    assert data[12:16] == b"fmt "
    data[22:24] = struct.pack("<H", channels)
    data[24:28] = struct.pack("<I", rate)
    assert reason_of(lambda: decode_audio(bytes(data), SPEC)) == expected


def test_nan_samples() -> None:
    x = signal(2.0)
    x[RATE + 10] = np.nan
    data = encode(x, RATE, "WAV", "FLOAT")
    assert reason_of(lambda: decode_audio(data, SPEC)) == "invalid samples (NaN or infinity) at 1.0 s"
    x[RATE + 10] = np.inf
    assert reason_of(lambda: decode_audio(encode(x, RATE, "WAV", "FLOAT"), SPEC)).startswith(
        "invalid samples"
    )


@pytest.mark.parametrize(("fmt", "subtype"), [("MP3", "MPEG_LAYER_III"), ("FLAC", "PCM_16")])
@pytest.mark.parametrize("seed", range(4))
def test_garbage_inside_a_file_decodes_or_fails_cleanly(fmt: str, subtype: str, seed: int) -> None:
    data = bytearray(encode(signal(5.0, 44_100), 44_100, fmt, subtype))
    rng = np.random.default_rng(seed)
    for _ in range(5):
        at = int(rng.integers(1000, len(data) - 1000))
        data[at : at + 500] = rng.integers(0, 256, 500, dtype=np.uint8).tobytes()
    try:
        decoded = decode_audio(bytes(data), SPEC)
    except MediaError as exc:
        assert exc.reason.startswith(
            ("truncated: header says 5.0 s, file holds ", "corrupt audio data after ")
        )
    else:
        assert decoded.duration_s > 4.5  # mpg123 skips what it cannot decode; the rest is kept


@pytest.mark.parametrize("cut", [1, 10, 44, 100, 1000])
def test_tiny_prefixes_are_media_errors(cut: int) -> None:
    for fmt, subtype in [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]:
        data = encode(signal(1.0), RATE, fmt, subtype)[:cut]
        with pytest.raises(MediaError):
            decode_audio(data, SPEC)


# --- memory ----------------------------------------------------------------------------------


def test_long_file_is_streamed_not_held_in_memory() -> None:
    seconds = 600
    t = np.arange(seconds * RATE, dtype=np.float32) / np.float32(RATE)
    x = np.sin(np.float32(2 * np.pi * 440) * t, dtype=np.float32)
    x *= np.float32(LEVEL)
    del t
    buf = io.BytesIO()
    sf.write(buf, x, RATE, format="WAV", subtype="FLOAT")
    del x
    data = buf.getvalue()
    del buf
    full_signal = seconds * RATE * 4  # 115 MB of float32

    tracemalloc.start()
    try:
        decoded = decode_audio(data, SPEC, transform=lambda w: w[:4])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.windows.shape == (60, 4)
    assert decoded.duration_s == seconds
    assert peak < 40_000_000 < full_signal, f"peak traced memory {peak / 1e6:.1f} MB"
