"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from xmodal.api.service import Service
from xmodal.errors import ErrorKind, XmodalError

_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of XMODAL_API_KEYS")
_bearer = HTTPBearer(auto_error=False, description="one of XMODAL_API_KEYS, as a bearer token")


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def require_api_key(
    service: ServiceDep,
    header_key: Annotated[str | None, Depends(_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """A request needs one of XMODAL_API_KEYS (X-API-Key, or Authorization: Bearer)."""
    keys = service.settings.api_key_list
    given = header_key or (bearer.credentials if bearer else None)
    if not given:
        raise XmodalError("an API key is required (header X-API-Key)", kind=ErrorKind.UNAUTHORIZED)
    supplied = given.encode("utf-8", "surrogateescape")
    match = False
    for key in keys:  # every key compared, in constant time each: no early exit to time
        match |= hmac.compare_digest(supplied, key.encode())
    if not match:
        raise XmodalError("unknown API key", kind=ErrorKind.UNAUTHORIZED)


def auth(keys: list[str]) -> list[Any]:
    """The dependencies that guard a router: the key check when keys are set (and only then does the
    OpenAPI document say the operations need one), else none."""
    return [Depends(require_api_key)] if keys else []
