from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from xmodal.api.deps import ServiceDep, require_api_key
from xmodal.api.schemas import CollectionsOut

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(service: ServiceDep) -> JSONResponse:
    ready, body = service.readiness()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=service.metrics.content_type)


@router.get("/v1/collections", response_model=CollectionsOut, dependencies=[Depends(require_api_key)])
def collections(service: ServiceDep) -> dict[str, Any]:
    return {"collections": service.collections()}
