"""The decode stage streams local videos and container audio: decoded from the open file (the same inputs as
from its bytes), hashed in chunks, with no byte cap (the video limits bound them), and a file that changes
while it is decoded failed as temporary; what libsndfile reads is still read whole within the byte cap."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import photo, sound, write_sounds, write_video
from PIL import Image

from xmodal.indexer.decode import (
    TEMPORARY_FAILURE,
    AudioPrep,
    DecodeConfig,
    DecodeTask,
    ImagePrep,
    _decode_as,
    decode_one,
)
from xmodal.media.types import MediaLimits
from xmodal.media.video import VideoSpec
from xmodal.spaces import AudioSpec

SHOTS = [(photo(50 + s), 2.0) for s in range(3)]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32)


def _config(max_file_bytes: int = 1 << 30, transform=_pixels) -> DecodeConfig:
    prep = {"video": ImagePrep(transform, None), "image": ImagePrep(transform, None),
            "audio": AudioPrep(AudioSpec(sample_rate=16_000, window_s=2.0), lambda w: w.astype(np.float32))}
    return DecodeConfig(MediaLimits(max_file_bytes, 10**8, 1 << 20), prep, video=VideoSpec(fps=2.0))


def test_a_local_video_decodes_from_the_file_as_from_its_bytes(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.mp4", SHOTS, audio=sound(4, 6.0))
    data = path.read_bytes()
    config = _config()
    got = decode_one(DecodeTask(1, str(path), "video", None), config)
    assert got.error is None and got.modality == "video"
    assert got.content_hash == hashlib.sha256(data).hexdigest() and got.size == len(data)
    _, inputs, spans, meta = _decode_as("video", data, config)  # what an upload's bytes give
    assert spans == got.spans and meta == got.meta and len(spans) == 3
    assert np.array_equal(inputs.frames, got.inputs.frames) and np.array_equal(inputs.segment, got.inputs.segment)
    assert np.array_equal(inputs.sound.windows, got.inputs.sound.windows)
    again = decode_one(DecodeTask(1, str(path), "video", got.content_hash), config)
    assert again.unchanged and again.inputs is None and again.size == len(data)


def test_streamed_files_have_no_byte_cap_and_libsndfile_files_keep_theirs(tmp_path: Path) -> None:
    """The byte cap bounds what is read whole; a streamed file's cost is bounded by the video limits instead."""
    video = write_video(tmp_path / "a.mov", SHOTS)
    m4a = write_video(tmp_path / "voice.m4a", None, audio=sound(6, 2.0), container="mp4")
    podcast = write_video(tmp_path / "podcast.mp4", None, audio=sound(7, 2.0))  # no pictures: audio, streamed
    wav = write_sounds(tmp_path, 1, seconds=2.0)[0]
    config = _config(max_file_bytes=1000)
    assert min(p.stat().st_size for p in (video, m4a, podcast, wav)) > 1000
    assert decode_one(DecodeTask(1, str(video), "video", None), config).error is None
    assert decode_one(DecodeTask(2, str(m4a), "audio", None), config).error is None
    moved = decode_one(DecodeTask(3, str(podcast), "video", None), config)
    assert moved.error is None and moved.modality == "audio" and moved.spans
    refused = decode_one(DecodeTask(4, str(wav), "audio", None), config)
    assert refused.error is not None and refused.error.startswith("file too large")
    image = tmp_path / "big.png"
    photo(1).save(image)
    assert decode_one(DecodeTask(5, str(image), "image", None), config).error.startswith("file too large")


@pytest.mark.parametrize(("make", "reason"), [
    (lambda good: b"", "empty file (0 bytes)"),
    (lambda good: good[: len(good) // 2], "no moov atom"),
    (lambda good: np.random.default_rng(1).bytes(5000), "not a recognised video container"),
])
def test_bad_local_videos_fail_with_the_same_reasons(tmp_path: Path, make, reason: str) -> None:
    good = write_video(tmp_path / "good.mp4", SHOTS).read_bytes()
    path = tmp_path / "bad.mp4"
    path.write_bytes(make(good))
    got = decode_one(DecodeTask(1, str(path), "video", None), _config())
    assert got.error is not None and reason in got.error and got.inputs is None


def test_a_video_that_changes_while_it_decodes_is_a_temporary_failure(tmp_path: Path) -> None:
    """The hash is read before the decode: a file written to meanwhile might not be what the vectors show, so
    it is failed as temporary (the next run decodes it again) rather than recorded under the old hash."""
    path = write_video(tmp_path / "a.mp4", SHOTS)

    def appending(image: Image.Image) -> np.ndarray:  # the file grows while its frames are decoded
        with path.open("ab") as fh:
            fh.write(b"\0" * 16)
        return _pixels(image)

    got = decode_one(DecodeTask(1, str(path), "video", None), _config(transform=appending))
    assert got.error == f"{TEMPORARY_FAILURE}the file changed while it was read" and got.inputs is None
    assert decode_one(DecodeTask(1, str(path), "video", None), _config()).error is None
