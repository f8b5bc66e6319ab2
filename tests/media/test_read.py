"""read_file, modality_for_path and MediaLimits, on real files of every awkward kind."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from xmodal.errors import MediaError
from xmodal.media import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, MediaLimits, modality_for_path, read_file
from xmodal.media.types import format_bytes, format_over_limit

LIMITS = MediaLimits(max_file_bytes=1 << 20, max_image_pixels=1_000_000, max_text_bytes=1 << 20)


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(MediaError) as info:
        call()
    return info.value.reason


def run_with_timeout(call: Callable[[], object], timeout: float = 5.0) -> object:
    """Run ``call`` in a daemon thread; fail (instead of hanging the suite) if it blocks."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"call blocked for more than {timeout} s"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


# --- regular files --------------------------------------------------------------------------


def test_reads_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"hello")
    assert read_file(str(path), LIMITS) == b"hello"


def test_reads_file_larger_than_one_chunk(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    limits = MediaLimits(max_file_bytes=len(data), max_image_pixels=1, max_text_bytes=1)
    assert read_file(str(path), limits) == data


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert reason_of(lambda: read_file(str(path), LIMITS)) == "empty file (0 bytes)"


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(b"x" * 600)
    limits = MediaLimits(max_file_bytes=100, max_image_pixels=1, max_text_bytes=1)
    assert (
        reason_of(lambda: read_file(str(path), limits))
        == "file too large: 600 bytes over the limit of 100 bytes"
    )


def test_file_exactly_at_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "edge.bin"
    path.write_bytes(b"x" * 100)
    limits = MediaLimits(max_file_bytes=100, max_image_pixels=1, max_text_bytes=1)
    assert read_file(str(path), limits) == b"x" * 100


def test_file_that_grows_while_read_is_cut_at_limit_plus_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stat says 50 bytes, the file holds 5000: at most limit + 1 bytes are read, then refused."""
    path = tmp_path / "growing.bin"
    path.write_bytes(b"x" * 5000)
    real_stat, real_fstat = os.stat, os.fstat
    reads: list[int] = []
    real_read = os.read

    def shrink(result: os.stat_result) -> os.stat_result:
        fields = list(result)
        fields[stat.ST_SIZE] = 50
        return os.stat_result(fields)

    def counting_read(fd: int, n: int) -> bytes:
        chunk = real_read(fd, n)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(os, "stat", lambda p, *a, **k: shrink(real_stat(p, *a, **k)))
    monkeypatch.setattr(os, "fstat", lambda fd: shrink(real_fstat(fd)))
    monkeypatch.setattr(os, "read", counting_read)
    limits = MediaLimits(max_file_bytes=100, max_image_pixels=1, max_text_bytes=1)
    reason = reason_of(lambda: read_file(str(path), limits))
    monkeypatch.undo()
    assert reason == "file too large: over the limit of 100 bytes (it grew while being read)"
    assert sum(reads) == 101


def test_symlink_to_regular_file_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "target.png"
    target.write_bytes(b"data")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert read_file(str(link), LIMITS) == b"data"


def test_undecodable_file_name(tmp_path: Path) -> None:
    raw = os.fsencode(str(tmp_path)) + b"/\xff\xfename.jpg"
    with open(raw, "wb") as fh:
        fh.write(b"bytes")
    path = os.fsdecode(raw)
    assert modality_for_path(path) == "image"
    assert read_file(path, LIMITS) == b"bytes"


# --- things that are not regular files --------------------------------------------------------


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    assert reason_of(lambda: read_file(str(folder), LIMITS)) == "not a regular file (directory)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    reason = reason_of(lambda: run_with_timeout(lambda: read_file(str(fifo), LIMITS)))
    assert reason == "not a regular file (named pipe)"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_swapped_in_after_stat_does_not_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO that replaces the file between stat() and open(): open must not block, fstat refuses it."""
    regular = tmp_path / "regular.jpg"
    regular.write_bytes(b"data")
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(regular if p == str(fifo) else p, *a, **k))
    reason = reason_of(lambda: run_with_timeout(lambda: read_file(str(fifo), LIMITS)))
    assert reason == "not a regular file (named pipe)"


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_device_file_is_refused() -> None:
    assert reason_of(lambda: read_file("/dev/null", LIMITS)) == "not a regular file (character device)"


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no unix sockets")
def test_unix_socket_is_refused() -> None:
    folder = tempfile.mkdtemp()  # tmp_path may be too long for a socket address
    try:
        path = os.path.join(folder, "s.jpg")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(path)
            assert reason_of(lambda: read_file(path, LIMITS)) == "not a regular file (socket)"
    finally:
        shutil.rmtree(folder)


# --- missing, broken, forbidden ------------------------------------------------------------


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "nowhere.jpg")
    assert reason_of(lambda: read_file(str(link), LIMITS)) == "broken symlink"


def test_symlink_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.symlink_to(b)
    b.symlink_to(a)
    assert reason_of(lambda: read_file(str(a), LIMITS)) == "cannot read file: symlink loop"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"
    assert reason_of(lambda: read_file(str(path), LIMITS)) == "file vanished before it was read"


def test_nul_in_path() -> None:
    assert reason_of(lambda: read_file("bad\x00name.jpg", LIMITS)).startswith("invalid path: ")


_READ_AS_NOBODY = """
import json, os, sys
from xmodal.errors import MediaError
from xmodal.media import MediaLimits, read_file
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    read_file(sys.argv[1], MediaLimits(1 << 20, 1, 1))
    print(json.dumps({"reason": None}))
except MediaError as exc:
    print(json.dumps({"reason": exc.reason}))
"""


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions only")
def test_permission_denied() -> None:
    """A real EACCES: as root, in a child that drops to uid 65534; otherwise with chmod 000."""
    folder = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "secret.jpg")
        with open(path, "wb") as fh:
            fh.write(b"secret")
        if os.geteuid() == 0:
            os.chmod(path, 0o600)
            # Import as root (the checkout may not be readable by nobody), then drop privileges.
            done = subprocess.run(
                [sys.executable, "-c", _READ_AS_NOBODY, path], capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            reason = json.loads(done.stdout)["reason"]
        else:
            os.chmod(path, 0)
            reason = reason_of(lambda: read_file(path, LIMITS))
        assert reason == "cannot read file: Permission denied"
    finally:
        os.chmod(folder, 0o700)
        shutil.rmtree(folder)


# --- modality_for_path, limits, formatting -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("photo.jpg", "image"),
        ("PHOTO.JPG", "image"),
        ("a/b/c.JpEg", "image"),
        ("x.tif", "image"),
        ("x.TIFF", "image"),
        ("notes.md", "text"),
        ("README.TXT", "text"),
        ("archive.tar.gz", None),
        ("noext", None),
        ("dir.jpg/", None),
        ("", None),
        ("weird\udcff\udcfe.png", "image"),
        ("\udcff.\udcfe", None),
        ("emoji 😀.webp", "image"),
    ],
)
def test_modality_for_path(path: str, expected: str | None) -> None:
    assert modality_for_path(path) == expected


def test_modality_accepts_path_objects() -> None:
    assert modality_for_path(Path("x/y.GIF")) == "image"


def test_extension_sets() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tiff", ".tif"} <= IMAGE_EXTENSIONS
    assert {".txt", ".md"} <= TEXT_EXTENSIONS
    assert not IMAGE_EXTENSIONS & TEXT_EXTENSIONS
    assert modality_for_path("camera.JFIF") == "image" and modality_for_path("notes.markdown") == "text"


def test_limits_from_settings() -> None:
    from xmodal.config import Settings

    settings = Settings(max_file_bytes=11, max_image_pixels=22, max_text_bytes=33)
    assert MediaLimits.from_settings(settings) == MediaLimits(11, 22, 33)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_limits_must_be_positive_integers(bad: object) -> None:
    with pytest.raises(ValueError):
        MediaLimits(max_file_bytes=bad, max_image_pixels=1, max_text_bytes=1)  # type: ignore[arg-type]


def test_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        LIMITS.max_file_bytes = 5  # type: ignore[misc]


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 bytes"
    assert format_bytes(1) == "1 byte"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(512 * 1024 * 1024) == "512 MiB"
    assert format_over_limit(600 * 1024 * 1024, 512 * 1024 * 1024) == "600 MiB over the limit of 512 MiB"
    # one byte over: rounded units would look equal, so exact counts are shown
    assert format_over_limit(512 * 1024 * 1024 + 1, 512 * 1024 * 1024) == (
        "536870913 bytes over the limit of 536870912 bytes"
    )


def test_importing_media_does_not_import_torch() -> None:
    code = "import sys, xmodal.media; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
