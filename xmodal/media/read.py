"""Read a whole media file into memory, refusing anything that is not a plain, bounded, regular file; or
open one for a decoder that reads it as it goes (:class:`LocalFile`: a long video is never read whole)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from typing import BinaryIO, TypeVar

from xmodal.errors import ErrorKind, MediaError
from xmodal.media.types import MediaLimits, format_bytes, format_over_limit

_CHUNK = 1 << 20
T = TypeVar("T")
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after stat() must not block open()
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def read_file(path: str, limits: MediaLimits) -> bytes:
    """All bytes of the regular file at ``path`` (symlinks followed), or :class:`MediaError`.

    The file is ``stat``-ed before it is opened, so FIFOs, sockets, devices and directories are
    refused without being opened; ``fstat`` after opening catches a file swapped in between.
    At most ``limits.max_file_bytes + 1`` bytes are ever read, even from a file that grows.
    """
    with LocalFile(path, limits.max_file_bytes) as file:
        return file.read_all(limits.max_file_bytes)


class LocalFile:
    """A regular local file, open, that passed :func:`read_file`'s checks (a regular file, not empty, at most
    ``max_bytes`` when that is given) without being read: a decoder that reads as it goes (PyAV) takes
    :meth:`reader`, so memory never holds the whole file; :meth:`sha256` reads it in chunks. ``size`` and
    ``mtime_ns`` are the open file's when it was opened: :meth:`changed` says whether it has changed since."""

    def __init__(self, path: str, max_bytes: int | None = None) -> None:
        st = _stat(path)
        _check_regular(st.st_mode)
        _check_size(st.st_size, max_bytes)
        try:
            self.fd = os.open(path, _OPEN_FLAGS)
        except (OSError, ValueError) as exc:
            raise MediaError(_os_error_reason(exc)) from None
        try:
            fst = self._io(lambda: os.fstat(self.fd))
            _check_regular(fst.st_mode)
            _check_size(fst.st_size, max_bytes)
        except BaseException:
            self.close()
            raise
        self.size, self.mtime_ns = fst.st_size, fst.st_mtime_ns

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def head(self, n: int = 64) -> bytes:
        """The first ``n`` bytes (fewer for a shorter file)."""
        return self._io(lambda: os.pread(self.fd, n, 0))

    def read_all(self, max_bytes: int) -> bytes:
        """Every byte, as :func:`read_file` reads them: at most ``max_bytes + 1`` are read, even from a file
        that grows, and one over ``max_bytes`` is refused."""
        _check_size(self.size, max_bytes)

        def read() -> bytes:
            os.lseek(self.fd, 0, os.SEEK_SET)
            return _read_bounded(self.fd, expected=self.size, cap=max_bytes + 1)

        data = self._io(read)
        if not data:
            raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
        if len(data) > max_bytes:
            raise MediaError(
                f"file too large: over the limit of {format_bytes(max_bytes)} (it grew while being read)",
                ErrorKind.TOO_LARGE,
            )
        return data

    def sha256(self) -> tuple[str, int]:
        """The SHA-256 (hex) of the bytes and how many there were, read in chunks of 1 MiB."""

        def digest() -> tuple[str, int]:
            os.lseek(self.fd, 0, os.SEEK_SET)
            h, total = hashlib.sha256(), 0
            while chunk := os.read(self.fd, _CHUNK):
                h.update(chunk)
                total += len(chunk)
            return h.hexdigest(), total

        return self._io(digest)

    def reader(self) -> BinaryIO:
        """A buffered file object over the open file, at its start, for a decoder that reads and seeks as it
        goes; closing it leaves the file open (this object closes it)."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        return open(self.fd, "rb", closefd=False)  # noqa: SIM115 - the caller closes it

    def changed(self) -> bool:
        """Whether the file's size or modification time differs from when it was opened."""
        st = self._io(lambda: os.fstat(self.fd))
        return (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns)

    @staticmethod
    def _io(call: Callable[[], T]) -> T:
        try:
            return call()
        except OSError as exc:
            raise MediaError(_os_error_reason(exc)) from None


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except (OSError, ValueError):
            is_link = False
        raise MediaError("broken symlink" if is_link else "file vanished before it was read") from None
    except (OSError, ValueError) as exc:
        raise MediaError(_os_error_reason(exc)) from None


def _check_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        kind = "directory"
    elif stat.S_ISFIFO(mode):
        kind = "named pipe"
    elif stat.S_ISSOCK(mode):
        kind = "socket"
    elif stat.S_ISCHR(mode):
        kind = "character device"
    elif stat.S_ISBLK(mode):
        kind = "block device"
    else:
        kind = "special file"
    raise MediaError(f"not a regular file ({kind})")


def _check_size(size: int, limit: int | None) -> None:
    if size == 0:
        raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
    if limit is not None and size > limit:
        raise MediaError(f"file too large: {format_over_limit(size, limit)}", ErrorKind.TOO_LARGE)


def _read_bounded(fd: int, *, expected: int, cap: int) -> bytes:
    """Read to EOF or ``cap`` bytes. The first read asks for ``expected + 1``, so a file that does
    not change while read comes back as one buffer, without a copy."""
    chunks: list[bytes] = []
    total = 0
    while total < cap:
        want = min(cap - total, max(expected + 1 - total, _CHUNK))
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def _os_error_reason(exc: OSError | ValueError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file vanished before it was read"
    if isinstance(exc, OSError):
        if exc.errno == errno.ELOOP:
            return "cannot read file: symlink loop"
        return f"cannot read file: {exc.strerror or exc}"
    # ValueError: NUL byte in the path, or a string that cannot be encoded as a file name
    return f"invalid path: {exc}"
