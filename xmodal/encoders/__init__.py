"""Encoders: one protocol, a registry keyed by family name, and the families themselves."""

from xmodal.encoders.base import Encoder, ImageTransform, resolve_device
from xmodal.encoders.registry import families, load_encoder, register_family, resolve_model

__all__ = [
    "Encoder", "ImageTransform", "families", "load_encoder", "register_family", "resolve_device", "resolve_model",
]
