"""Fetching media bytes from a local path, ``file://``, ``http(s)://`` or any fsspec URL, within bounds.

A catalog of remote media must never stall or exhaust an indexing run: every fetch has a connect
and read timeout, a total deadline (a server that drips one byte a second defeats a read timeout
alone), a size cap checked against ``Content-Length`` before the body and again while it streams
(a body without a length, or one that decompresses far beyond it), and a bounded number of
redirects. Transient failures (connection errors, timeouts, a body cut short, 429 and 5xx) are
retried with exponential backoff and jitter, honouring ``Retry-After`` up to a cap; other 4xx are
final at once. Every failure is a :class:`FetchError` whose ``reason`` is short enough to record as
an item's failure reason, with ``retryable`` saying whether a later run may succeed.

Redirects are followed here rather than by httpx: httpx reads each redirect response's body
whole, with no bound, before following it.

Use one :class:`Fetcher` per worker (it keeps connections to a CDN open between fetches);
:func:`fetch_bytes` and :func:`fetch_to_file` make a throwaway one.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_to_bytes

import httpx

from xmodal.errors import ErrorKind, MediaError
from xmodal.media.read import read_file
from xmodal.media.types import MediaLimits, format_bytes, format_over_limit

DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # the default of Settings.max_file_bytes
REMOTE_EXTRA_HINT = "pip install 'xmodal[remote]'"
_CHUNK = 1 << 16
_RETRY_STATUS_MIN = 500
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\]\s*(.+)")


class FetchError(MediaError):
    """Media could not be fetched. ``reason`` is short ("timeout (read)", "http 404", "too large: ...").

    ``retryable``: a later run may succeed (timeouts, 5xx, connection errors, a missing extra);
    ``status``: the last HTTP status, if any; ``attempts``: how many tries this fetch made.
    """

    def __init__(self, reason: str, *, uri: str = "", status: int | None = None, attempts: int = 1,
                 retryable: bool = False, kind: ErrorKind | None = None) -> None:
        super().__init__(reason, kind or ErrorKind.INVALID_MEDIA)
        self.uri = uri
        self.status = status
        self.attempts = attempts
        self.retryable = retryable


@dataclass(frozen=True)
class FetchOptions:
    """Bounds on one fetch. ``timeout_s`` applies to connecting and to each read; ``deadline_s`` to the
    whole fetch, retries and waits included (a read in flight may overrun it by up to ``timeout_s``).
    ``retries`` counts tries after the first."""

    timeout_s: float = 10.0
    deadline_s: float = 60.0
    retries: int = 3
    backoff_s: float = 0.5
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 5
    max_retry_after_s: float = 30.0
    user_agent: str = "xmodal-fetch/0.1"

    def __post_init__(self) -> None:
        for name in ("timeout_s", "deadline_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"FetchOptions.{name} must be a positive number of seconds, got {value!r}")
        for name in ("backoff_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ValueError(f"FetchOptions.{name} must be zero or more seconds, got {value!r}")
        for name, low in (("retries", 0), ("max_redirects", 0), ("max_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"FetchOptions.{name} must be an integer >= {low}, got {value!r}")


class _Retry(Exception):
    """A failed try worth another one."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class _Sink:
    """Where the bytes of a fetch go; emptied before each try."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class _MemorySink(_Sink):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def reset(self) -> None:
        self.chunks = []

    def value(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class _FileSink(_Sink):
    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def reset(self) -> None:
        self.file.seek(0)
        self.file.truncate()


def local_path(uri: str) -> str | None:
    """The local path a URI names (a plain path or ``file://``), or ``None`` for a remote one."""
    match = _SCHEME.match(uri)
    if match is None:
        return uri
    if match.group(1).lower() != "file":
        return None
    rest = uri[match.end():]
    if rest.lower().startswith("localhost/"):
        rest = rest[len("localhost"):]
    if not rest.startswith("/"):
        raise FetchError(f"file URI with a host is not supported: {uri}", uri=uri)
    return os.fsdecode(unquote_to_bytes(rest))


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names media to fetch (http(s), an fsspec scheme) rather than a local file."""
    match = _SCHEME.match(uri)
    return match is not None and match.group(1).lower() != "file"


class Fetcher:
    """Fetches media within :class:`FetchOptions`; thread-safe; close it (or use ``with``) when done.

    ``client``: an ``httpx.Client`` to use instead of one of its own (it is then not closed here);
    it must not follow redirects itself for the redirect limit to hold.
    """

    def __init__(self, options: FetchOptions | None = None, *, client: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options or FetchOptions()
        self._own_client = client is None
        self._client = client or httpx.Client(
            follow_redirects=False, headers={"User-Agent": self.options.user_agent}
        )
        self._sleep = sleep

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    # --- entry points ---------------------------------------------------------------------------

    def fetch_bytes(self, uri: str) -> bytes:
        """All bytes ``uri`` names, at most ``options.max_bytes``; :class:`FetchError` otherwise."""
        sink = _MemorySink()
        self._fetch(uri, sink)
        return sink.value()

    def fetch_to_file(self, uri: str, dest: Path | str) -> int:
        """Stream ``uri`` into ``dest`` (a temporary name in its folder, renamed when complete, so a
        failed fetch leaves nothing behind); returns the size. For large audio: memory stays flat."""
        dest = Path(dest)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "w+b") as file:
                self._fetch(uri, _FileSink(file))
                size = file.tell()
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp_name, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return size

    def _fetch(self, uri: str, sink: _Sink) -> None:
        if not isinstance(uri, str) or not uri.strip():
            raise FetchError("empty URI", uri=str(uri))
        path = local_path(uri)
        if path is not None:
            self._fetch_local(uri, path, sink)
            return
        match = _SCHEME.match(uri)
        scheme = match.group(1).lower() if match else ""
        if scheme in ("http", "https"):
            self._retrying(uri, sink, self._http_try)
        else:
            self._retrying(uri, sink, self._fsspec_try(uri, scheme))

    # --- local files ----------------------------------------------------------------------------

    def _fetch_local(self, uri: str, path: str, sink: _Sink) -> None:
        # read_file refuses FIFOs and devices and never reads past the limit; only its byte limit is used
        limits = MediaLimits(max_file_bytes=self.options.max_bytes, max_image_pixels=1, max_text_bytes=1)
        try:
            sink.write(read_file(path, limits))
        except FetchError:
            raise
        except MediaError as exc:
            raise FetchError(exc.reason, uri=uri, kind=exc.kind) from None

    # --- retries --------------------------------------------------------------------------------

    def _retrying(self, uri: str, sink: _Sink, attempt: Callable[[str, _Sink, float], None]) -> None:
        opts = self.options
        deadline = time.monotonic() + opts.deadline_s
        tries = 0
        while True:
            tries += 1
            sink.reset()
            try:
                attempt(uri, sink, deadline)
                return
            except FetchError as exc:
                exc.attempts = tries
                raise
            except _Retry as exc:
                last = exc
            reason = last.reason if tries == 1 else f"{last.reason} ({tries} attempts)"
            if tries > opts.retries:
                raise FetchError(reason, uri=uri, status=last.status, attempts=tries, retryable=True)
            wait = opts.backoff_s * 2 ** (tries - 1) * random.uniform(0.5, 1.0)
            if last.retry_after is not None:
                wait = max(wait, min(last.retry_after, opts.max_retry_after_s))
            if time.monotonic() + wait >= deadline:
                raise FetchError(f"{reason}; no time left to retry within {opts.deadline_s:g} s", uri=uri,
                                 status=last.status, attempts=tries, retryable=True)
            self._sleep(wait)

    # --- HTTP -----------------------------------------------------------------------------------

    def _http_try(self, uri: str, sink: _Sink, deadline: float) -> None:
        opts = self.options
        url: httpx.URL | str = uri
        for hop in range(opts.max_redirects + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"timeout: over the {opts.deadline_s:g} s deadline", uri=uri, retryable=True)
            try:
                request = self._client.build_request("GET", url, timeout=min(opts.timeout_s, remaining))
                response = self._client.send(request, stream=True, follow_redirects=False)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise _http_error(exc, uri) from None
            try:
                if response.status_code in _REDIRECT_STATUSES and response.next_request is not None:
                    url = self._next_hop(uri, response, hop)
                    continue
                self._http_body(uri, response, sink, deadline)
                return
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise _http_error(exc, uri) from None
            finally:
                response.close()  # without reading the rest: a redirect's body, an oversized one
        raise AssertionError("unreachable: the last hop either returns or raises")

    def _next_hop(self, uri: str, response: httpx.Response, hop: int) -> httpx.URL:
        if hop >= self.options.max_redirects:
            raise FetchError(f"too many redirects (over {self.options.max_redirects})", uri=uri,
                             status=response.status_code)
        assert response.next_request is not None
        target = response.next_request.url
        if target.scheme not in ("http", "https"):
            raise FetchError(f"redirect to unsupported scheme {target.scheme!r}", uri=uri,
                             status=response.status_code)
        return target

    def _http_body(self, uri: str, response: httpx.Response, sink: _Sink, deadline: float) -> None:
        opts = self.options
        status = response.status_code
        if status == 429 or status >= _RETRY_STATUS_MIN:
            raise _Retry(f"http {status}", status=status, retry_after=_retry_after(response))
        if not 200 <= status < 300:
            raise FetchError(f"http {status}", uri=uri, status=status)
        length = _content_length(response)
        if length is not None and length > opts.max_bytes:
            raise FetchError(f"too large: Content-Length {format_over_limit(length, opts.max_bytes)}", uri=uri,
                             status=status, kind=ErrorKind.TOO_LARGE)
        total = 0
        # Chunks as they arrive (a chunk size would buffer, and a server dripping bytes would never let
        # the deadline be checked), decoded: a gzip bomb is counted as it inflates.
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > opts.max_bytes:
                raise FetchError(f"too large: over the limit of {format_bytes(opts.max_bytes)} while streaming",
                                 uri=uri, kind=ErrorKind.TOO_LARGE, status=status)
            if time.monotonic() > deadline:
                raise FetchError(f"timeout: over the {opts.deadline_s:g} s deadline", uri=uri, status=status,
                                 retryable=True)
            sink.write(chunk)
        if total == 0:
            raise FetchError("empty response (0 bytes)", uri=uri, status=status)

    # --- fsspec ---------------------------------------------------------------------------------

    def _fsspec_try(self, uri: str, scheme: str) -> Callable[[str, _Sink, float], None]:
        try:
            fsspec: Any = importlib.import_module("fsspec")
        except ImportError:
            raise FetchError(f"remote storage unavailable: {scheme}:// URIs need fsspec ({REMOTE_EXTRA_HINT})",
                             uri=uri, retryable=True) from None

        def attempt(uri: str, sink: _Sink, deadline: float) -> None:
            opts = self.options
            try:
                fs, path = fsspec.core.url_to_fs(uri)
            except ImportError as exc:  # the scheme's own package (s3fs, gcsfs) is missing
                raise FetchError(f"remote storage unavailable: {_first_line(exc)} ({REMOTE_EXTRA_HINT})",
                                 uri=uri, retryable=True) from None
            except ValueError as exc:
                raise FetchError(f"unsupported URI: {_first_line(exc)}", uri=uri) from None
            try:
                size = fs.size(path)
                if size is not None and size > opts.max_bytes:
                    raise FetchError(f"too large: {format_over_limit(int(size), opts.max_bytes)}", uri=uri,
                                     kind=ErrorKind.TOO_LARGE)
                total = 0
                with fs.open(path, "rb") as file:
                    while True:
                        chunk = file.read(min(_CHUNK, opts.max_bytes + 1 - total))
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > opts.max_bytes:
                            raise FetchError(f"too large: over the limit of {format_bytes(opts.max_bytes)}",
                                             uri=uri, kind=ErrorKind.TOO_LARGE)
                        if time.monotonic() > deadline:
                            raise FetchError(f"timeout: over the {opts.deadline_s:g} s deadline", uri=uri,
                                             retryable=True)
                        sink.write(chunk)
            except FileNotFoundError:
                raise FetchError("not found", uri=uri) from None
            except PermissionError:
                raise FetchError("permission denied", uri=uri) from None
            except (TimeoutError, ConnectionError) as exc:
                raise _Retry(f"network error: {_first_line(exc)}") from None
            except OSError as exc:
                raise FetchError(f"cannot read: {_first_line(exc)}", uri=uri) from None
            if total == 0:
                raise FetchError("empty file (0 bytes)", uri=uri)

        return attempt


def fetch_bytes(uri: str, *, timeout_s: float = 10.0, deadline_s: float = 60.0, retries: int = 3,
                backoff_s: float = 0.5, max_bytes: int = DEFAULT_MAX_BYTES, max_redirects: int = 5) -> bytes:
    """All bytes ``uri`` names (see :class:`FetchOptions`); one-off: a worker should keep a :class:`Fetcher`."""
    options = FetchOptions(timeout_s=timeout_s, deadline_s=deadline_s, retries=retries, backoff_s=backoff_s,
                           max_bytes=max_bytes, max_redirects=max_redirects)
    with Fetcher(options) as fetcher:
        return fetcher.fetch_bytes(uri)


def fetch_to_file(uri: str, dest: Path | str, *, timeout_s: float = 10.0, deadline_s: float = 60.0,
                  retries: int = 3, backoff_s: float = 0.5, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_redirects: int = 5) -> int:
    """Stream ``uri`` into ``dest``; returns its size (see :meth:`Fetcher.fetch_to_file`)."""
    options = FetchOptions(timeout_s=timeout_s, deadline_s=deadline_s, retries=retries, backoff_s=backoff_s,
                           max_bytes=max_bytes, max_redirects=max_redirects)
    with Fetcher(options) as fetcher:
        return fetcher.fetch_to_file(uri, dest)


# --- helpers ------------------------------------------------------------------------------------


def _http_error(exc: Exception, uri: str) -> Exception:
    """A transport error as a retry (transient) or a final :class:`FetchError`."""
    if isinstance(exc, httpx.ConnectTimeout):
        return _Retry("timeout (connect)")
    if isinstance(exc, httpx.ReadTimeout):
        return _Retry("timeout (read)")
    if isinstance(exc, httpx.TimeoutException):
        return _Retry("timeout")
    text = _first_line(exc)
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE" in text or "SSL" in text:
            return FetchError(f"tls error: {text}", uri=uri)
        match = _ERRNO_TEXT.search(text)
        return _Retry(f"connection failed: {match.group(1) if match else text}")
    if isinstance(exc, httpx.RemoteProtocolError):
        if "complete message body" in text or "incomplete" in text.lower():
            return _Retry("incomplete body (connection closed early)")
        if "location header" in text.lower():
            return FetchError(f"bad redirect: {text}", uri=uri)
        return _Retry(f"protocol error: {text}")
    if isinstance(exc, httpx.DecodingError):
        return FetchError(f"bad content encoding: {text}", uri=uri)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError)):
        return FetchError(f"invalid URL: {text}", uri=uri)
    if isinstance(exc, httpx.TransportError):  # ReadError, WriteError, proxy errors
        return _Retry(f"network error: {text}")
    return FetchError(f"http error: {text}", uri=uri)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds asked for by ``Retry-After`` (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

