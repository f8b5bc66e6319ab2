"""Manifest files: the format told by the extension, and the streams CSV and JSONL are read from.

A stream is gunzipped when the name ends in ``.gz`` (Parquet is opened by pyarrow, and never gzipped).
An open or read error becomes a :class:`ManifestError` that names the file and, for a stream that
breaks part-way, the line after which nothing was read.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, cast

from xmodal.indexer.manifest.report import ManifestError

_FORMATS: Mapping[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# what reading a stream raises when the file breaks part-way (gzip: EOFError, BadGzipFile, zlib.error)
_STREAM_ERRORS = (OSError, EOFError, zlib.error)


def _detect_format(path: Path, name: str) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes.pop()
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    known = ", ".join(sorted({*_FORMATS, *(f"{s}.gz" for s, f in _FORMATS.items() if f != "parquet")}))
    if fmt is None:
        raise ManifestError(f"unknown manifest format (known extensions: {known})", path=name)
    if fmt == "parquet" and compressed:
        raise ManifestError("a gzip-compressed Parquet file is not read: Parquet compresses inside the file",
                            path=name)
    return fmt, compressed


class _NoBar:
    """What the readers update when no progress bar was asked for."""

    n = 0

    def update(self, n: float) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Opened:
    """The raw file (for progress) and a binary or text stream over it, gunzipped when asked."""

    def __init__(self, path: Path, name: str, compressed: bool, *, text: bool) -> None:
        self._path, self._name, self._compressed, self._text = path, name, compressed, text
        self._stack = ExitStack()

    def __enter__(self) -> tuple[IO[bytes], Any]:
        try:
            raw: IO[bytes] = self._stack.enter_context(open(self._path, "rb"))
        except OSError as exc:
            raise ManifestError(f"cannot read: {exc.strerror or exc}", path=self._name) from None
        stream: IO[bytes] = raw
        if self._compressed:
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            self._stack.enter_context(gz)
            stream = cast(IO[bytes], gz)
        if not self._text:
            return raw, stream
        # newline="" as the csv module asks; bad UTF-8 becomes surrogates, found per row
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._stack.enter_context(text)
        return raw, text

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _stream_error(exc: OSError | EOFError | zlib.error, name: str, *, line: int) -> ManifestError:
    """The error for one of :data:`_STREAM_ERRORS`, raised while reading the stream at ``line``."""
    if isinstance(exc, EOFError):
        message = "compressed file ends early (truncated download?)"
    elif isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        message = f"bad gzip data: {exc}"
    else:
        message = f"read error: {exc.strerror or exc}"
    return ManifestError(f"{message}; nothing after this point was read", path=name, line=line)
