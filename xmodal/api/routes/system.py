from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from xmodal.api.deps import ServiceDep
from xmodal.api.errors import responses
from xmodal.api.schemas import CollectionsOut, ReadyOut


def health_router() -> APIRouter:
    r = APIRouter(tags=["system"])

    @r.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process answers (always open, no key)."""
        return {"status": "ok"}

    return r


def probes_router(*, errors: tuple[int, ...]) -> APIRouter:
    """/readyz and /metrics: behind the API key when keys are set, unless XMODAL_PUBLIC_METRICS."""
    r = APIRouter(tags=["system"])

    @r.get("/readyz", response_model=ReadyOut, responses={
        503: {"model": ReadyOut, "description": "Still loading, or loading failed (the message says why)."},
        **responses(*errors)})
    def readyz(service: ServiceDep) -> JSONResponse:
        """Whether models and indexes are loaded, with each collection's served index version."""
        ready, body = service.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @r.get("/metrics", response_class=Response, responses={
        200: {"description": "Prometheus metrics, in the Prometheus text format.",
              "content": {"text/plain": {"schema": {"type": "string"}}}}, **responses(*errors)})
    def metrics(service: ServiceDep) -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return r


def collections_router(*, errors: tuple[int, ...]) -> APIRouter:
    r = APIRouter(tags=["system"])

    @r.get("/v1/collections", response_model=CollectionsOut, responses=responses(*errors))
    def collections(service: ServiceDep) -> dict[str, Any]:
        """The served collections: item counts, modalities, filterable fields and their types."""
        return {"collections": service.collections()}

    return r
