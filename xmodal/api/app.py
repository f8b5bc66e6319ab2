"""The FastAPI app: routers, error bodies, body-size limit, request metrics, the web page."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from xmodal import __version__
from xmodal.api import errors
from xmodal.api.limits import BodySizeLimit
from xmodal.api.routes import items, search, system
from xmodal.api.service import Service

STATIC = Path(__file__).parent / "static"


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


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="xmodal", version=__version__, lifespan=lifespan,
                  description="Cross-modal search: text, image and item queries over indexed collections.")
    app.state.service = service
    errors.install(app)
    app.include_router(system.router)
    app.include_router(search.router)
    app.include_router(items.router)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def page() -> FileResponse:
            return FileResponse(STATIC / "index.html", media_type="text/html")

    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.add_middleware(BodySizeLimit, max_bytes=service.settings.max_upload_bytes)
    return app
