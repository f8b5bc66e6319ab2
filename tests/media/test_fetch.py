"""Fetching media: a real HTTP server on 127.0.0.1 that misbehaves in every way a CDN can, local files, fsspec."""

from __future__ import annotations

import collections
import gzip
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from xmodal.errors import MediaError
from xmodal.media.fetch import Fetcher, FetchError, FetchOptions, fetch_bytes, fetch_to_file, local_path

OK_BODY = os.urandom(100_000)
BIG = 64 * 1024 * 1024
LIMIT = 1024 * 1024
BOMB = gzip.compress(b"\0" * (20 * 1024 * 1024))


class MediaServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping must not hold up the end of the tests

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()
        self.written: dict[str, int] = {}  # bytes a streaming handler got out before the client left
        self.finished: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self.peers: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)  # connections used
        self.stop = threading.Event()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up, as tests make it
            super().handle_error(request, client_address)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str, test: str) -> str:
        """A URL whose hit counter belongs to one test (the query makes it unique)."""
        return f"{self.base}{path}?t={test}"

    def hits_of(self, path: str, test: str) -> int:
        with self.lock:
            return self.hits[f"{path}?t={test}"]

    def bytes_written(self, path: str, test: str) -> int:
        key = f"{path}?t={test}"
        assert self.finished[key].wait(5), "the handler never saw the client go"
        return self.written[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MediaServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits[self.path] += 1
            hit = self.server.hits[self.path]
            self.server.peers[self.path].add(self.client_address)
        route = urlsplit(self.path).path
        parts = route.strip("/").split("/")
        if route == "/ok":
            self.send_body(OK_BODY)
        elif route == "/slow":
            self.server.stop.wait(3)
            self.send_body(b"late")
        elif route == "/flaky":  # 503 twice, then the file
            if hit <= 2:
                self.send_body(b"busy", status=503)
            else:
                self.send_body(OK_BODY)
        elif parts[0] == "status":
            self.send_body(b"no", status=int(parts[1]))
        elif route == "/busy":  # 429 with Retry-After (seconds in the query's r=) once, then the file
            if hit == 1:
                self.send_body(b"slow down", status=429, headers={"Retry-After": parts_query(self.path)["r"]})
            else:
                self.send_body(OK_BODY)
        elif route == "/big-honest":
            self.stream(length=BIG)
        elif route == "/big-chunked":
            self.stream(chunked=True)
        elif route == "/big-unframed":  # HTTP/1.0 style: no length, the body ends when the connection does
            self.stream()
        elif route == "/bomb":
            self.send_body(BOMB, headers={"Content-Encoding": "gzip"})
        elif parts[0] == "redirect":
            n = int(parts[1])
            target = "/ok" if n == 0 else f"/redirect/{n - 1}"
            self.send_body(b"x" * 1000, status=302, headers={"Location": f"{target}?{urlsplit(self.path).query}"})
        elif route == "/redirect-ftp":
            self.send_body(b"", status=301, headers={"Location": "ftp://127.0.0.1/file.jpg"})
        elif route == "/truncated":  # promises 1000 bytes, sends 100, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"y" * 100)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif route == "/drip":  # one byte every 50 ms, for ever: a read timeout alone never fires
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while not self.server.stop.wait(0.05):
                    self.wfile.write(b"1\r\nz\r\n")
                    self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
        elif route == "/empty":
            self.send_body(b"")
        else:
            self.send_body(b"not here", status=404)

    def send_body(self, body: bytes, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def stream(self, *, length: int | None = None, chunked: bool = False) -> None:
        """Write up to BIG * 4 bytes until the client hangs up; record how many got out."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        block = b"b" * 65536
        total = 0
        try:
            while total < (length or BIG * 4):
                self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
                total += len(block)
        except OSError:  # the client hung up, as it should
            pass
        self.close_connection = True
        self.server.written[self.path] = total
        self.server.finished[self.path].set()


def parts_query(path: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in urlsplit(path).query.split("&") if "=" in p)


@pytest.fixture(scope="module")
def server() -> Iterator[MediaServer]:
    srv = MediaServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def failure(uri: str, **options: Any) -> FetchError:
    with Fetcher(FetchOptions(**options)) as fetcher, pytest.raises(FetchError) as info:
        fetcher.fetch_bytes(uri)
    return info.value


FAST: dict[str, Any] = {"timeout_s": 1.0, "deadline_s": 5.0, "backoff_s": 0.01}


# --- HTTP ---------------------------------------------------------------------------------------


def test_fetches_a_file(server: MediaServer, tmp_path: Path) -> None:
    url = server.url("/ok", "plain")
    assert fetch_bytes(url, **FAST) == OK_BODY
    dest = tmp_path / "out.bin"
    assert fetch_to_file(url, dest, **FAST) == len(OK_BODY)
    assert dest.read_bytes() == OK_BODY
    assert os.listdir(tmp_path) == ["out.bin"]  # the temporary .part file was renamed
    assert server.hits_of("/ok", "plain") == 2


def test_one_fetcher_keeps_its_connection_between_fetches(server: MediaServer) -> None:
    with Fetcher(FetchOptions(**FAST)) as fetcher:
        for _ in range(5):
            assert fetcher.fetch_bytes(server.url("/ok", "many")) == OK_BODY
    assert server.hits_of("/ok", "many") == 5
    assert len(server.peers["/ok?t=many"]) == 1  # keep-alive: one TCP connection for the five


def test_slow_response_times_out_and_is_retried(server: MediaServer) -> None:
    start = time.monotonic()
    err = failure(server.url("/slow", "slow"), timeout_s=0.25, retries=1, backoff_s=0.01)
    elapsed = time.monotonic() - start
    assert err.reason == "timeout (read) (2 attempts)"
    assert err.retryable and err.attempts == 2 and isinstance(err, MediaError)
    assert server.hits_of("/slow", "slow") == 2
    assert 0.45 < elapsed < 2.0


def test_503_twice_then_success_is_retried(server: MediaServer) -> None:
    with Fetcher(FetchOptions(retries=2, **FAST)) as fetcher:
        assert fetcher.fetch_bytes(server.url("/flaky", "enough")) == OK_BODY
    assert server.hits_of("/flaky", "enough") == 3

    err = failure(server.url("/flaky", "too-few"), retries=1, **FAST)
    assert err.reason == "http 503 (2 attempts)" and err.status == 503 and err.retryable
    assert server.hits_of("/flaky", "too-few") == 2


@pytest.mark.parametrize("status", [404, 403, 410, 400])
def test_other_4xx_are_final_at_once(server: MediaServer, status: int) -> None:
    err = failure(server.url(f"/status/{status}", "final"), retries=3, **FAST)
    assert err.reason == f"http {status}" and err.status == status
    assert not err.retryable and err.attempts == 1
    assert server.hits_of(f"/status/{status}", "final") == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_5xx_are_retried(server: MediaServer, status: int) -> None:
    err = failure(server.url(f"/status/{status}", "retried"), retries=2, **FAST)
    assert err.reason == f"http {status} (3 attempts)" and err.attempts == 3
    assert server.hits_of(f"/status/{status}", "retried") == 3


def test_retry_after_is_honoured(server: MediaServer) -> None:
    start = time.monotonic()
    with Fetcher(FetchOptions(retries=1, **FAST)) as fetcher:
        assert fetcher.fetch_bytes(f"{server.base}/busy?r=1&t=honoured") == OK_BODY
    assert time.monotonic() - start >= 0.95  # the backoff alone would be 10 ms
    assert server.hits["/busy?r=1&t=honoured"] == 2


def test_retry_after_is_capped(server: MediaServer) -> None:
    start = time.monotonic()
    options = FetchOptions(retries=1, max_retry_after_s=0.2, **FAST)
    with Fetcher(options) as fetcher:
        assert fetcher.fetch_bytes(f"{server.base}/busy?r=3600&t=capped") == OK_BODY
    assert 0.15 < time.monotonic() - start < 1.5


def test_retry_after_beyond_the_deadline_gives_up_at_once(server: MediaServer) -> None:
    start = time.monotonic()
    err = failure(f"{server.base}/busy?r=20&t=deadline", retries=3, timeout_s=1.0, deadline_s=2.0,
                  backoff_s=0.01)
    assert time.monotonic() - start < 0.5
    assert err.reason == "http 429; no time left to retry within 2 s" and err.status == 429
    assert err.attempts == 1 and err.retryable


def test_oversized_body_with_content_length_is_refused_before_reading(server: MediaServer) -> None:
    err = failure(server.url("/big-honest", "honest"), max_bytes=LIMIT, retries=2, **FAST)
    assert err.reason == "too large: Content-Length 64 MiB over the limit of 1 MiB"
    assert not err.retryable and server.hits_of("/big-honest", "honest") == 1
    assert server.bytes_written("/big-honest", "honest") < 8 * LIMIT  # of the 64 MiB it offered


@pytest.mark.parametrize("route", ["/big-chunked", "/big-unframed"])
def test_oversized_body_without_length_is_aborted_early(server: MediaServer, route: str) -> None:
    start = time.monotonic()
    err = failure(server.url(route, "nolength"), max_bytes=LIMIT, **FAST)
    assert time.monotonic() - start < 2
    assert err.reason == "too large: over the limit of 1 MiB while streaming"
    assert not err.retryable and server.hits_of(route, "nolength") == 1
    # the server was stopped long before its 256 MiB: only socket buffers' worth got past the limit
    assert server.bytes_written(route, "nolength") < 8 * LIMIT


def test_decompression_bomb_is_counted_as_it_inflates(server: MediaServer) -> None:
    assert len(BOMB) < LIMIT  # its Content-Length passes
    err = failure(server.url("/bomb", "bomb"), max_bytes=LIMIT, **FAST)
    assert err.reason == "too large: over the limit of 1 MiB while streaming"


def test_redirect_chain_is_followed_up_to_the_limit(server: MediaServer) -> None:
    with Fetcher(FetchOptions(max_redirects=3, **FAST)) as fetcher:
        assert fetcher.fetch_bytes(server.url("/redirect/2", "chain")) == OK_BODY
    assert [server.hits_of(f"/redirect/{n}", "chain") for n in (2, 1, 0)] == [1, 1, 1]
    assert server.hits_of("/ok", "chain") == 1

    err = failure(server.url("/redirect/5", "long"), max_redirects=2, **FAST)
    assert err.reason == "too many redirects (over 2)" and not err.retryable and err.status == 302
    assert [server.hits_of(f"/redirect/{n}", "long") for n in (5, 4, 3, 2)] == [1, 1, 1, 0]
    assert server.hits_of("/ok", "long") == 0


def test_redirect_to_another_scheme_is_refused(server: MediaServer) -> None:
    err = failure(server.url("/redirect-ftp", "ftp"), **FAST)
    assert err.reason == "redirect to unsupported scheme 'ftp'"


def test_body_cut_short_is_retried_then_reported(server: MediaServer) -> None:
    err = failure(server.url("/truncated", "cut"), retries=2, **FAST)
    assert err.reason == "incomplete body (connection closed early) (3 attempts)"
    assert err.retryable and server.hits_of("/truncated", "cut") == 3


def test_deadline_stops_a_server_that_drips(server: MediaServer) -> None:
    start = time.monotonic()
    err = failure(server.url("/drip", "drip"), timeout_s=1.0, deadline_s=0.5, retries=3, backoff_s=0.01)
    elapsed = time.monotonic() - start
    assert err.reason == "timeout: over the 0.5 s deadline"
    assert err.retryable and 0.45 < elapsed < 2.0
    assert server.hits_of("/drip", "drip") == 1  # no time left for another try


def test_connection_refused_is_retried(server: MediaServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    err = failure(f"http://127.0.0.1:{port}/x.jpg", retries=1, **FAST)
    assert err.reason == "connection failed: Connection refused (2 attempts)" and err.retryable


def test_empty_body_and_bad_urls(server: MediaServer) -> None:
    assert failure(server.url("/empty", "empty"), **FAST).reason == "empty response (0 bytes)"
    assert failure("http://", **FAST).reason.startswith("invalid URL")
    assert failure("", **FAST).reason == "empty URI"


def test_failed_fetch_to_file_leaves_the_destination_alone(server: MediaServer, tmp_path: Path) -> None:
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"previous")
    with pytest.raises(FetchError, match="too large"):
        fetch_to_file(server.url("/big-chunked", "tofile"), dest, max_bytes=LIMIT, **FAST)
    assert dest.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_options_are_checked() -> None:
    for bad in ({"timeout_s": 0}, {"deadline_s": float("inf")}, {"retries": -1}, {"max_bytes": 0},
                {"backoff_s": -1.0}, {"max_redirects": True}):
        with pytest.raises(ValueError, match="FetchOptions"):
            FetchOptions(**bad)


# --- local files --------------------------------------------------------------------------------


def test_local_paths_and_file_uris(tmp_path: Path) -> None:
    path = tmp_path / "a b.jpg"
    path.write_bytes(b"local bytes")
    assert fetch_bytes(str(path)) == b"local bytes"
    uri = "file://" + quote(str(path))
    assert local_path(uri) == str(path)
    assert fetch_bytes(uri) == b"local bytes"
    assert fetch_bytes("file://localhost" + quote(str(path))) == b"local bytes"
    assert local_path("https://x/y.jpg") is None and local_path("s3://b/k") is None


def test_local_files_keep_read_file_bounds(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2000)
    err = failure(str(big), max_bytes=1000)
    assert err.reason == "file too large: 1.95 KiB over the limit of 1000 bytes" and not err.retryable
    assert failure(str(tmp_path / "missing.jpg")).reason == "file vanished before it was read"
    os.mkfifo(tmp_path / "pipe.jpg")
    assert failure(str(tmp_path / "pipe.jpg")).reason == "not a regular file (named pipe)"
    assert failure("file://server/share/x.jpg").reason.startswith("file URI with a host is not supported")


# --- fsspec -------------------------------------------------------------------------------------


def test_fsspec_schemes(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/xmodal-test/ok.jpg", b"from memory")
    fs.pipe("/xmodal-test/big.jpg", b"m" * 5000)
    try:
        assert fetch_bytes("memory://xmodal-test/ok.jpg") == b"from memory"
        assert fetch_to_file("memory://xmodal-test/ok.jpg", tmp_path / "m.jpg") == 11
        err = failure("memory://xmodal-test/big.jpg", max_bytes=1000)
        assert err.reason == "too large: 4.88 KiB over the limit of 1000 bytes"
        assert failure("memory://xmodal-test/none.jpg").reason == "not found"
        assert failure("nosuchscheme://b/k.jpg").reason.startswith("unsupported URI: Protocol not known")
    finally:
        fs.rm("/xmodal-test", recursive=True)


def test_without_fsspec_remote_schemes_say_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec now raises ImportError
    err = failure("s3://bucket/key.jpg")
    assert err.reason == "remote storage unavailable: s3:// URIs need fsspec (pip install 'xmodal[remote]')"
    assert err.retryable and err.uri == "s3://bucket/key.jpg"
