"""The FastAPI app: routers, error bodies, request guards, request metrics, the web page and API docs.

Layers a request passes, outermost first: ``RequestMetrics`` (latency by route and final status, 499
for a client that left), ``CatchAll`` (a bug is a logged 500, never a dropped connection),
``RequestGuard`` (body size and pace), then FastAPI's routing and exception handlers. The API docs
(Swagger UI at /docs, ReDoc at /redoc) are served from files installed with the ``fastapi-offline``
package, under a Content-Security-Policy that allows the app's own origin only: they work without
internet and never reach out.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from xmodal import __version__
from xmodal.api import errors
from xmodal.api.deps import auth
from xmodal.api.errors import CatchAll, SafeJSONResponse
from xmodal.api.guard import RequestGuard
from xmodal.api.routes import items, search, sources, system
from xmodal.api.schemas import filter_components
from xmodal.api.service import Service

STATIC = Path(__file__).parent / "static"
DOCS_FILES = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI and ReDoc, installed with it


class RequestMetrics:
    """Pure ASGI middleware: request latency by route template, method and status."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(template, scope["method"], str(status[0])).observe(time.perf_counter() - t0)


#: the docs pages load only what the app serves (ReDoc's bundle would fetch a logo from a CDN)
DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
               "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'")


def _docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, from the files the ``fastapi-offline`` package installs."""
    app.mount("/static/docs", StaticFiles(directory=DOCS_FILES), name="docs-files")
    headers = {"Content-Security-Policy": DOCS_POLICY}

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="xmodal API", swagger_favicon_url=
                                   "/static/docs/favicon.png", swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css")
        return HTMLResponse(page.body, headers=headers)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url="/openapi.json", title="xmodal API", redoc_favicon_url=
                              "/static/docs/favicon.png", redoc_js_url="/static/docs/redoc.standalone.js",
                              with_google_fonts=False)
        return HTMLResponse(page.body, headers=headers)


def create_app(service: Service) -> FastAPI:
    settings = service.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="xmodal", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  default_response_class=SafeJSONResponse,
                  description="Cross-modal search: text, image, sound and item queries over indexed collections. "
                              "Every error is JSON {\"error\", \"message\"}.")
    app.state.service = service
    _docs(app)
    errors.install(app)
    keys = settings.api_key_list
    guarded = auth(keys)
    # RequestGuard answers these to any request; uvicorn answers 400 to what it can't parse as HTTP
    common = (400, 401, 408, 413) if keys else (400, 408, 413)
    probes = (400, 408, 413) if settings.public_metrics else common
    app.include_router(system.health_router())
    app.include_router(system.probes_router(errors=probes), dependencies=[] if settings.public_metrics else guarded)
    app.include_router(system.collections_router(errors=common), dependencies=guarded)
    app.include_router(search.router(settings, errors=common), dependencies=guarded)
    app.include_router(items.router(errors=common), dependencies=guarded)
    app.include_router(sources.router(errors=common), dependencies=guarded)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def page() -> FileResponse:
            return FileResponse(STATIC / "index.html", media_type="text/html")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(filter_components())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(RequestGuard, max_bytes=settings.max_upload_bytes, body_timeout=settings.request_body_timeout,
                       body_seconds=settings.request_body_seconds)
    app.add_middleware(CatchAll)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app
