"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from xmodal.api.errors import ApiError
from xmodal.api.service import Service

_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_api_key(
    service: ServiceDep,
    header_key: Annotated[str | None, Depends(_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When XMODAL_API_KEYS is set, a request needs one of them (X-API-Key, or Authorization: Bearer)."""
    keys = service.settings.api_key_list
    if not keys:
        return
    given = header_key or (bearer.credentials if bearer else None)
    if not given:
        raise ApiError(401, "unauthorized", "an API key is required (header X-API-Key)")
    supplied = given.encode()
    match = False
    for key in keys:  # every key compared, in constant time each: no early exit to time
        match |= hmac.compare_digest(supplied, key.encode())
    if not match:
        raise ApiError(401, "unauthorized", "unknown API key")
