"""The HTTP server: uvicorn, with a deadline on each request's headers.

uvicorn bounds the idle time between requests on a connection (keep-alive) but not the time a client
takes to send a request's headers: a client that opens connections and sends a header line now and
then would hold them forever. :class:`HeaderDeadline` arms a timer when a request's first byte
arrives (and when a connection opens) and answers 408 and closes the connection if the headers are
not complete in ``request_header_timeout`` seconds. Bodies are bounded by ``api.guard.RequestGuard``.

:func:`run` calls ``on_ready(host, port)`` once the socket listens (the port is the bound one), so that the
command line can say where the page is; an address or port it cannot bind is a :class:`UserError`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from xmodal.config import Settings
from xmodal.errors import UserError


def _protocol(header_timeout: float) -> type[asyncio.Protocol]:
    base: Any = AutoHTTPProtocol

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        """uvicorn's HTTP protocol (httptools, or h11 without it) with a deadline on request headers."""

        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            body = json.dumps({"error": "timeout", "message": f"the request headers took more than "
                                                              f"{header_timeout:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
            self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()  # a connection that never sends a request is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:  # bytes of a new request's head
                self._arm()
            super().data_received(data)

        def on_headers_complete(self) -> None:  # httptools
            self._disarm()
            super().on_headers_complete()

        def handle_events(self) -> None:  # h11
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()

    return HeaderDeadline


def config(app: Any, settings: Settings, *, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    """The server's settings: the header deadline above, keep-alive, a bounded graceful shutdown."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=_protocol(settings.request_header_timeout),
                          timeout_keep_alive=5, timeout_graceful_shutdown=10)


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it listens, and turning a failed bind into a user error."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str, int], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        except SystemExit:
            if self.lifespan.should_exit:  # the app's startup failed: uvicorn has logged why
                raise
            raise UserError(f"cannot listen on {self.config.host}:{self.config.port} (is another server using "
                            f"it? choose another with --port, or --host)") from None
        if self.started and self._on_ready is not None:
            port = self.servers[0].sockets[0].getsockname()[1]
            self._on_ready(self.config.host, int(port))


def run(app: Any, settings: Settings, *, host: str, port: int, log_level: str = "warning",
        on_ready: Callable[[str, int], None] | None = None) -> None:
    _Server(config(app, settings, host=host, port=port, log_level=log_level), on_ready).run()
