"""What one request body may cost before a route sees it: its size, and how long it may take to arrive.

- **Size.** A body over ``max_bytes`` is refused with 413 as soon as that is known: from
  Content-Length before anything is read, or while it streams. The rest of the body is then read and
  dropped (up to ``DRAIN_BYTES`` in ``DRAIN_SECONDS``) before the response ends and the connection
  closes: a plain client sends its whole body before it reads an answer, and closing on unread data
  would reach it as a broken pipe or a reset instead of the 413.
- **Pace.** A body that pauses for ``body_timeout`` seconds, or is not all in after ``body_seconds``,
  is answered 408 and the connection closed, so a client that declares a large body and goes silent
  does not hold a connection (the headers' own timeout is the server's: ``xmodal.api.server``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from starlette.exceptions import HTTPException

Scope = dict[str, Any]
DRAIN_BYTES = 1 << 30
DRAIN_SECONDS = 30.0


class _TooLarge(HTTPException):
    """An HTTPException, so that FastAPI's body parsing lets it through as a 413, not a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over the limit of {max_bytes} bytes")


class _TooSlow(HTTPException):
    def __init__(self, why: str) -> None:
        super().__init__(408, why, headers={"Connection": "close"})


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers") or []:
        if name == wanted:
            return bytes(value)
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


class RequestGuard:
    """ASGI middleware bounding request bodies by size and pace (see the module's docstring)."""

    def __init__(self, app: Any, *, max_bytes: int, body_timeout: float, body_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        # a client that asked "Expect: 100-continue" sends its body only when told to: nothing to drain
        drain = (_header(scope, b"expect") or b"").lower() != b"100-continue"
        if declared is not None and declared > self.max_bytes:
            await self._refuse(receive, send, drain=drain)
            return
        state = {"seen": 0, "more": True, "over": False}
        deadline = time.monotonic() + self.body_seconds

        async def guarded_receive() -> Any:
            if not state["more"]:  # the body is in: what is left to wait for is a disconnect
                return await receive()
            wait = min(self.body_timeout, deadline - time.monotonic())
            message = None
            if wait > 0:
                with anyio.move_on_after(wait):
                    message = await receive()
            if message is None:
                state["more"] = False
                pause = wait >= self.body_timeout
                raise _TooSlow(f"the request body paused for more than {self.body_timeout:g} s" if pause else
                               f"the request body took more than {self.body_seconds:g} s")
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                state["more"] = bool(message.get("more_body", False))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise _TooLarge(self.max_bytes)
            else:
                state["more"] = False
            return message

        async def guarded_send(message: Any) -> None:
            if message["type"] == "http.response.start" and state["over"]:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            if message["type"] == "http.response.body" and state["over"] and state["more"] and drain and \
                    not message.get("more_body", False):
                await send({**message, "more_body": True})
                await _drain(receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app(scope, guarded_receive, guarded_send)

    async def _refuse(self, receive: Any, send: Any, *, drain: bool) -> None:
        body = json.dumps({"error": "too_large",
                           "message": f"request body over the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body, "more_body": drain})
        if drain:
            await _drain(receive)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _drain(receive: Any) -> None:
    """Read and drop what is left of a refused request body, within ``DRAIN_BYTES`` and ``DRAIN_SECONDS``."""
    dropped = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while dropped <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

