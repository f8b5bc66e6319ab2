"""Every error the service answers is JSON, ``{"error": CODE, "message": TEXT}``, with the status that its
kind maps to in :data:`STATUS` (the one place that maps), never a bare 500 and never a dropped connection.

Client errors are logged on one line (INFO); a bug is logged once with its traceback and answered 500,
and the connection stays usable (Starlette's own error middleware re-raises to the server, which then
logs twice and resets the connection: :class:`CatchAll` stops exceptions before they get there).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmodal.errors import BusyError, ErrorKind, XmodalError

log = logging.getLogger(__name__)

#: the HTTP status of each kind of error (499: the client went away before the answer)
STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_INPUT: 422,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.INVALID_MEDIA: 422,
    ErrorKind.UNSUPPORTED_MEDIA: 415,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.BUSY: 503,
    ErrorKind.NOT_READY: 503,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.TIMEOUT: 408,
    ErrorKind.CANCELLED: 499,
    ErrorKind.INTERNAL: 500,
}
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               408: "timeout", 413: "too_large"}


class ErrorOut(BaseModel):
    error: str
    message: str


#: what an error status means, for the OpenAPI description of every operation that may answer it
MEANING = {
    400: "The request could not be read as HTTP (a request line or header over the server's limits, or bytes a "
         "header may not hold): answered by the HTTP server before the service sees it, in plain text.",
    401: "An API key is required (X-API-Key or Authorization: Bearer) and none or a wrong one was given.",
    404: "No such collection, item or source, or its media is not served.",
    408: "The request's headers or body did not arrive in time.",
    409: "The request clashes with the collection's state (another model; a file changed since it was indexed).",
    413: "Over a limit: the request body, or the uploaded media's pixels or seconds.",
    415: "The uploaded file is not a kind of media the service reads.",
    422: "The request is well formed but invalid: the message says where (e.g. filters.and[1].op).",
    503: "Not ready yet, or at capacity for uploaded media: retry after the Retry-After header's seconds.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route that may answer these error statuses."""
    return {s: {"description": MEANING[s], "content": {"text/plain": {"schema": {"type": "string"}}}} if s == 400
            else {"model": ErrorOut, "description": MEANING[s]} for s in statuses}


class SafeJSONResponse(JSONResponse):
    """JSON in UTF-8, or with ``\\u`` escapes when a string can't be encoded (a lone surrogate that a
    client sent in a JSON string and a message quotes back)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def error_response(request: Request | None, exc: XmodalError) -> SafeJSONResponse:
    status = STATUS[exc.kind]
    code = exc.code or exc.kind.value
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, BusyError) else None
    if request is not None:
        log.info("%s %s -> %d %s: %s", request.method, request.url.path, status, code, str(exc)[:300])
    return SafeJSONResponse(error_body(code, str(exc)), status_code=status, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p != "body")


def install(app: FastAPI) -> None:
    @app.exception_handler(XmodalError)
    async def _xmodal_error(request: Request, exc: XmodalError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:10]:
            where = _where(tuple(err.get("loc", ())))
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(request, XmodalError("; ".join(problems) or "invalid request", kind=ErrorKind.BAD_INPUT))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI or Starlette could not parse the body: a 422 that says why
            cause = exc.__cause__
            why = "JSON nested too deeply" if isinstance(cause, RecursionError) else (
                "not UTF-8 text" if isinstance(cause, UnicodeDecodeError) else str(exc.detail))
            return error_response(request, XmodalError(f"body: {why}", kind=ErrorKind.BAD_INPUT))
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status_code, code)
        return SafeJSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))


class CatchAll:
    """Pure ASGI middleware: an exception that reaches it is a bug. It is logged once, with its
    traceback, and answered 500 (if no response has started); it is not re-raised, so the server
    neither logs it again nor drops the keep-alive connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = SafeJSONResponse(error_body("internal", "internal error"), status_code=500)
                await response(scope, receive, send)
