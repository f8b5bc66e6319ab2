"""Where decode and encode run, behind one interface (``engines.base.Engine``), chosen by name.

``local``: worker processes on this machine decode, this process encodes in batches. ``ray``: the same
stages on Ray Data across a Ray cluster (the ``ray`` extra). Both deliver to the same sink.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmodal.errors import UserError
from xmodal.indexer.engines.base import EmbedJob, Engine

__all__ = ["ENGINES", "EmbedJob", "Engine", "engine", "register_engine"]


def _local(**_: Any) -> Engine:
    from xmodal.indexer.engines.local import LocalEngine

    return LocalEngine()


def _ray(*, address: str | None = None, **_: Any) -> Engine:
    from xmodal.indexer.engines.raydata import RayEngine

    return RayEngine(address)


#: engine name -> factory(options) -> Engine (a factory fails fast on a missing dependency)
ENGINES: dict[str, Callable[..., Engine]] = {"local": _local, "ray": _ray}


def register_engine(name: str, factory: Callable[..., Engine]) -> None:
    ENGINES[name] = factory


def engine(name: str, **options: Any) -> Engine:
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r} (one of {', '.join(ENGINES)})")
    return ENGINES[name](**options)
