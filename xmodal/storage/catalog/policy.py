"""Naming and model-identity rules of the catalog.

A collection name becomes file and folder names, so it is checked before use. A collection is only
ever used with the model it was indexed with: ``check_same_model`` compares encoder records (family and
identity) and raises :class:`~xmodal.errors.ModelMismatchError` naming both models otherwise.
"""

from __future__ import annotations

import re
from typing import Any

from xmodal.errors import ModelMismatchError, UserError

COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_collection_name(name: str) -> str:
    """Collection names become file and folder names: letters, digits, '_', '-', '.', nothing else."""
    if not COLLECTION_NAME_RE.match(name):
        raise UserError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def check_same_model(recorded: dict[str, Any], given: dict[str, Any], *, collection: str | None = None) -> None:
    """A collection is only ever used with the model it was indexed with (family and identity)."""
    if recorded.get("family", given.get("family")) == given.get("family", recorded.get("family")) and (
        recorded.get("identity") == given.get("identity")
    ):
        return
    which = f"collection {collection!r}" if collection else "this collection"
    drop = f"xmodal collections drop {collection}" if collection else "xmodal collections drop NAME"
    raise ModelMismatchError(
        f"{which} was indexed with {describe_model(recorded)}, not {describe_model(given)}: index into another "
        f"collection (-c NEW), drop this one ({drop}), or pass the recorded model ({model_flags(recorded)})"
    )


#: the command-line flags that name a family's model and its weights
_FLAGS = {"open_clip": ("--clip-model", "--clip-pretrained"), "clap": ("--audio-model", None)}


def model_flags(model: dict[str, Any]) -> str:
    """The flags that name this model, e.g. ``--clip-model ViT-B-32 --clip-pretrained laion2b_s34b_b79k``."""
    model_flag, pretrained_flag = _FLAGS.get(str(model.get("family")), ("--clip-model", "--clip-pretrained"))
    out = f"{model_flag} {model.get('model', '?')}"
    if pretrained_flag and model.get("pretrained"):
        out += f" {pretrained_flag} {model['pretrained']}"
    return out


def describe_model(model: dict[str, Any]) -> str:
    """One short phrase for an encoder record, for error messages."""
    name = model.get("model", "?")
    pretrained = model.get("pretrained")
    return f"{name} ({pretrained})" if pretrained else str(name)
