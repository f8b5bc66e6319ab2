"""Encoder families keyed by name. An unknown name fails with the list of valid ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmodal.encoders.base import Encoder
from xmodal.errors import UserError

#: family -> loader(record, device) -> Encoder
Loader = Callable[[dict[str, Any], str], Encoder]
#: family -> resolver(model, pretrained) -> record (validates names and paths, hashes checkpoints)
Resolver = Callable[[str, str | None], dict[str, Any]]

_LOADERS: dict[str, Loader] = {}
_RESOLVERS: dict[str, Resolver] = {}


def register_family(name: str, *, resolve: Resolver, load: Loader) -> None:
    _RESOLVERS[name] = resolve
    _LOADERS[name] = load


def _builtin() -> None:
    if "open_clip" not in _LOADERS:
        from xmodal.encoders import openclip

        register_family("open_clip", resolve=openclip.resolve_record, load=openclip.load)
    if "clap" not in _LOADERS:
        from xmodal.encoders import clap  # imports nothing of the audio extra until a model is resolved

        register_family("clap", resolve=clap.resolve_record, load=clap.load)


def families() -> list[str]:
    _builtin()
    return sorted(_LOADERS)


def _check(family: str) -> None:
    _builtin()
    if family not in _LOADERS:
        raise UserError(f"unknown encoder family {family!r}; known: {', '.join(sorted(_LOADERS))}")


def resolve_model(family: str, model: str, pretrained: str | None) -> dict[str, Any]:
    """The exact record of a model as the user named it (without loading weights)."""
    _check(family)
    return _RESOLVERS[family](model, pretrained)


def load_encoder(family: str, record: dict[str, Any], device: str = "auto") -> Encoder:
    _check(family)
    return _LOADERS[family](record, device)
