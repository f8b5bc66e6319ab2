"""Read a whole media file into memory, refusing anything that is not a plain, bounded, regular file."""

from __future__ import annotations

import errno
import os
import stat

from xmodal.errors import ErrorKind, MediaError
from xmodal.media.types import MediaLimits, format_bytes, format_over_limit

_CHUNK = 1 << 20
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
    st = _stat(path)
    _check_regular(st.st_mode)
    _check_size(st.st_size, limits.max_file_bytes)

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError) as exc:
        raise MediaError(_os_error_reason(exc)) from None
    try:
        fst = os.fstat(fd)
        _check_regular(fst.st_mode)
        _check_size(fst.st_size, limits.max_file_bytes)
        data = _read_bounded(fd, expected=fst.st_size, cap=limits.max_file_bytes + 1)
    except OSError as exc:
        raise MediaError(_os_error_reason(exc)) from None
    finally:
        os.close(fd)

    if not data:
        raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
    if len(data) > limits.max_file_bytes:
        raise MediaError(
            f"file too large: over the limit of {format_bytes(limits.max_file_bytes)} (it grew while being read)",
            ErrorKind.TOO_LARGE,
        )
    return data


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


def _check_size(size: int, limit: int) -> None:
    if size == 0:
        raise MediaError("empty file (0 bytes)", ErrorKind.UNSUPPORTED_MEDIA)
    if size > limit:
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
