"""decode_video on files PyAV encodes here (every container and codec the wheel writes), rotation, shots,
the limits, and bad bytes refused with a reason; audio-only containers decoded as audio."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers import photo, sound, write_video
from PIL import Image

from xmodal.errors import MediaError
from xmodal.media.avaudio import decode_audio_av, decode_soundtrack
from xmodal.media.video import (
    NoVideoStream,
    VideoLimits,
    VideoSpec,
    decode_video,
    is_av_container,
    video_frame,
)
from xmodal.spaces import AudioSpec, modality_for_path

SPEC = VideoSpec(fps=2.0)
LIMITS = VideoLimits()
SHOTS = [(photo(1), 2.0), (photo(2), 3.0), (photo(3), 2.0)]


@pytest.mark.parametrize(("name", "codec", "container"), [
    ("clip.mp4", "libx264", None), ("clip.m4v", "libx264", "mp4"), ("clip.mov", "libx264", None),
    ("clip.mkv", "mpeg4", None), ("clip.webm", "libvpx-vp9", None), ("clip.ts", "libx264", None),
    ("clip.avi", "mpeg4", None),
])
def test_each_container_and_codec_decodes_into_its_three_shots(tmp_path: Path, name: str, codec: str,
                                                                container: str | None) -> None:
    path = write_video(tmp_path / name, SHOTS, codec=codec, container=container, audio=sound(1, 7.0))
    assert modality_for_path(path) == "video"
    video = decode_video(path.read_bytes(), SPEC, LIMITS)
    assert video.frames.shape[1:] == (64, 96, 3) and (video.width, video.height) == (96, 64)
    assert video.audio
    assert len(video.segments) == 3
    # the cuts fall at the shots' changes (within a sample: AVI's timestamps come one frame late)
    assert [s.start_s for s in video.segments][1:] == pytest.approx([2.0, 5.0], abs=0.51)
    assert video.segments[-1].end_s == pytest.approx(7.0, abs=0.2)
    assert [s.count for s in video.segments] == [sum(1 for t in video.times if s.start_s <= t < s.end_s)
                                                 for s in video.segments]


def test_the_same_bytes_give_the_same_frames_and_segments(tmp_path: Path) -> None:
    data = write_video(tmp_path / "a.mp4", SHOTS).read_bytes()
    one, two = decode_video(data, SPEC, LIMITS), decode_video(data, SPEC, LIMITS)
    assert np.array_equal(one.frames, two.frames) and one.segments == two.segments


def test_a_long_static_shot_is_cut_at_the_maximum_segment_length(tmp_path: Path) -> None:
    data = write_video(tmp_path / "long.mp4", [(photo(5), 9.0)], fps=4).read_bytes()
    video = decode_video(data, VideoSpec(fps=1.0, max_segment_s=4.0), LIMITS)
    assert [(s.start_s, s.end_s) for s in video.segments] == [(0.0, 4.0), (4.0, 8.0), (8.0, 9.0)]


def test_past_max_frames_every_second_sample_goes_and_the_rate_halves(tmp_path: Path) -> None:
    data = write_video(tmp_path / "many.mp4", [(photo(6), 10.0)], fps=4).read_bytes()
    video = decode_video(data, VideoSpec(fps=4.0, max_frames=8), LIMITS)
    assert len(video.times) <= 8
    assert video.interval_s == pytest.approx(2.0)
    assert video.times == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])


def test_rotation_metadata_turns_the_frames_upright(tmp_path: Path) -> None:
    arr = np.zeros((64, 96, 3), dtype=np.uint8)
    arr[:32, :48] = (255, 0, 0)  # the stored picture's top-left quarter is red
    path = write_video(tmp_path / "phone.mp4", [(Image.fromarray(arr), 1.0)], rotation=90)
    video = decode_video(path.read_bytes(), SPEC, LIMITS)
    assert video.rotation == 90 and (video.width, video.height) == (64, 96)
    frame = video.frames[0].astype(int)
    # turned 90 degrees counter-clockwise: the red corner is now bottom-left
    assert frame[80, 10, 0] > 200 and frame[80, 10, 1] < 60
    assert frame[10, 10, 0] < 60


def test_the_transform_is_applied_to_each_sample(tmp_path: Path) -> None:
    data = write_video(tmp_path / "a.webm", SHOTS, codec="libvpx-vp9").read_bytes()
    video = decode_video(data, SPEC, LIMITS, transform=lambda im: np.zeros((3, 8, 8), np.float32) + im.size[0])
    assert video.frames.shape == (len(video.times), 3, 8, 8) and float(video.frames[0, 0, 0, 0]) == 96.0
    frames = video.inputs()
    assert len(frames) == len(video.times) and frames.segment.tolist() == sorted(frames.segment.tolist())


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: b"", "empty file"),
    (lambda p: p.read_bytes()[: len(p.read_bytes()) // 2], "no moov atom"),
    (lambda p: np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes(),
     "not a recognised video container"),
    (lambda p: b"just some notes\n" * 100, "looks like text"),
])
@pytest.mark.parametrize("as_file", [False, True], ids=["bytes", "open-file"])
def test_bad_bytes_are_refused_with_a_reason(tmp_path: Path, make, reason: str, as_file: bool) -> None:
    good = write_video(tmp_path / "good.mp4", SHOTS)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(make(good))
    with pytest.raises(MediaError, match=reason):
        if as_file:
            with bad.open("rb") as fh:
                decode_video(fh, SPEC, LIMITS)
        else:
            decode_video(bad.read_bytes(), SPEC, LIMITS)


class _Reads(io.RawIOBase):
    """A file that records every read's size and where it started: what a decoder asked of it."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("rb")
        self.reads: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def read(self, size: int = -1) -> bytes:
        at = self.fh.tell()
        data = self.fh.read(size)
        self.reads.append((at, len(data)))
        return data

    def close(self) -> None:
        self.fh.close()
        super().close()


def test_an_open_file_decodes_as_its_bytes_do_read_a_buffer_at_a_time(tmp_path: Path) -> None:
    """A local file is decoded from the open file, which FFmpeg reads as it goes: the same frames, segments and
    sound windows as from its bytes, and no read asks for the whole file (each is one buffer, far smaller)."""
    path = write_video(tmp_path / "long.mp4", [(photo(s), 4.0) for s in range(8)], fps=15, size=(320, 240),
                       audio=sound(2, 32.0))
    size = path.stat().st_size
    data = path.read_bytes()
    spec = AudioSpec(sample_rate=16_000, window_s=4.0)
    whole = decode_video(data, SPEC, LIMITS)
    track = decode_soundtrack(data, spec, whole.spans)
    file = _Reads(path)
    with file:
        streamed = decode_video(file, SPEC, LIMITS)
        sound_reads = len(file.reads)
        streamed_track = decode_soundtrack(file, spec, streamed.spans)
    assert np.array_equal(whole.frames, streamed.frames) and whole.segments == streamed.segments
    assert len(whole.segments) == 8
    assert np.array_equal(track.windows, streamed_track.windows) and track.spans == streamed_track.spans
    assert size > 300_000 and len(file.reads) > sound_reads > 10
    assert max(n for _, n in file.reads) <= 64 * 1024 < size // 5


@pytest.mark.parametrize("name", ["none.mp4", "none.mov"])
def test_a_container_without_frames_is_refused(tmp_path: Path, name: str) -> None:
    data = write_video(tmp_path / name, []).read_bytes()
    with pytest.raises(MediaError, match="no video frames"):
        decode_video(data, SPEC, LIMITS)


def test_frames_over_the_pixel_limit_and_videos_over_the_seconds_limit_are_refused(tmp_path: Path) -> None:
    data = write_video(tmp_path / "a.mp4", SHOTS).read_bytes()
    with pytest.raises(MediaError, match="frames too large: 96x64"):
        decode_video(data, SPEC, VideoLimits(max_pixels=96 * 64 - 1))
    with pytest.raises(MediaError, match="too long"):
        decode_video(data, SPEC, VideoLimits(max_seconds=5.0))


def test_an_unsupported_codec_is_refused(tmp_path: Path) -> None:
    data = bytearray(write_video(tmp_path / "a.mkv", SHOTS, codec="mpeg4").read_bytes())
    at = data.find(b"V_MPEG4/ISO/ASP")
    assert at > 0
    data[at : at + 15] = b"V_NOSUCHCODEC12"  # the Matroska codec id of the track
    with pytest.raises(MediaError, match="unsupported video codec|not a recognised|no video frames"):
        decode_video(bytes(data), SPEC, LIMITS)


def test_an_audio_only_container_is_no_video_and_decodes_as_audio(tmp_path: Path) -> None:
    for name in ("voice.m4a", "voice.mp4"):
        data = write_video(tmp_path / name, None, audio=sound(3, 2.5), container="mp4").read_bytes()
        with pytest.raises(NoVideoStream) as caught:
            decode_video(data, SPEC, LIMITS)
        assert caught.value.audio and is_av_container(data)
        audio = decode_audio_av(data, AudioSpec(48_000, window_s=1.0))
        assert audio.windows.shape == (3, 48_000) and audio.spans[-1][1] == pytest.approx(2.5, abs=0.05)
    assert modality_for_path("voice.m4a") == "audio" and modality_for_path("x.aac") == "audio"


def test_adts_aac_decodes_as_audio(tmp_path: Path) -> None:
    data = write_video(tmp_path / "s.aac", None, audio=sound(4, 1.5), container="adts").read_bytes()
    assert is_av_container(data)
    audio = decode_audio_av(data, AudioSpec(48_000, window_s=10.0))
    assert len(audio.spans) == 1 and audio.duration_s == pytest.approx(1.5, abs=0.05)


def test_silent_sound_in_a_container_is_refused(tmp_path: Path) -> None:
    data = write_video(tmp_path / "q.m4a", None, audio=np.zeros(48_000, np.float32), container="mp4").read_bytes()
    with pytest.raises(MediaError, match="silent"):
        decode_audio_av(data, AudioSpec(48_000))


def test_a_video_url_without_an_extension_is_known_by_its_bytes(tmp_path: Path) -> None:
    from xmodal.media.types import sniff_modality

    for name, codec in (("a.mp4", "libx264"), ("a.webm", "libvpx-vp9"), ("a.avi", "mpeg4")):
        assert sniff_modality(write_video(tmp_path / name, SHOTS[:1], codec=codec).read_bytes()) == "video"


def _nearest_shot(image: Image.Image) -> int:
    """Which of SHOTS' photos an image is (the smallest mean pixel difference at the video's size)."""
    got = np.asarray(image.convert("RGB").resize((96, 64))).astype(np.float32)
    return int(np.argmin([np.abs(got - np.asarray(p.convert("RGB").resize((96, 64)))).mean() for p, _ in SHOTS]))


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_video_frame_seeks_to_the_frame_shown_at_a_time(tmp_path: Path, name: str) -> None:
    codec = "libvpx-vp9" if name.endswith(".webm") else "libx264"
    data = write_video(tmp_path / name, SHOTS, codec=codec).read_bytes()
    assert [_nearest_shot(video_frame(data, t, LIMITS)) for t in (0.0, 1.0, 3.5, 4.9, 6.0, 60.0)] == [0, 0, 1, 1, 2, 2]
    assert video_frame(data, 3.5, LIMITS).size == (96, 64)


def test_video_frame_is_upright_bounded_and_refuses_bad_bytes(tmp_path: Path) -> None:
    data = write_video(tmp_path / "r.mp4", SHOTS, rotation=90).read_bytes()
    assert video_frame(data, 1.0, LIMITS).size == (64, 96)  # turned as it is shown
    with pytest.raises(MediaError, match="too large"):
        video_frame(data, 1.0, VideoLimits(max_pixels=1000))
    with pytest.raises(MediaError, match="not a recognised video container"):
        video_frame(np.random.default_rng(2).bytes(4000), 1.0, LIMITS)


def test_a_sound_track_is_cut_at_the_segments_one_window_each(tmp_path: Path) -> None:
    """Each segment is heard through one window: all of it when short, its middle when long; past the end of
    the track, silence. The same bytes give the same windows."""
    track = sound(3, 25.0)
    data = write_video(tmp_path / "t.mp4", [(photo(1), 25.0)], fps=2, audio=track).read_bytes()
    spec = AudioSpec(sample_rate=16_000, window_s=4.0)
    segments = [(0.0, 3.0), (3.0, 13.0), (13.0, 25.0), (25.0, 30.0)]
    def summary(window: np.ndarray) -> np.ndarray:  # a model input's stand-in: each window's length and peak
        return np.array([len(window), np.abs(window).max()], dtype=np.float32)

    cut = decode_soundtrack(data, spec, segments, summary)
    assert cut.segment.tolist() == [0, 1, 2, 3]
    assert cut.spans == [(0.0, 3.0), (6.0, 10.0), (17.0, 21.0), (25.5, 29.5)]
    assert cut.windows[:, 0].tolist() == [48_000, 64_000, 64_000, 64_000]
    assert (cut.windows[:3, 1] > 0.05).all()  # the track's sound
    assert cut.windows[3, 1] < 1e-3  # after the track: silence
    assert np.array_equal(decode_soundtrack(data, spec, segments, summary).windows, cut.windows)
