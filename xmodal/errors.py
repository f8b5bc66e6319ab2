"""Exceptions that carry a message meant for the person running xmodal.

The CLI prints ``UserError`` messages on one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class XmodalError(Exception):
    """Base class of every error xmodal raises on purpose."""


class UserError(XmodalError):
    """Bad input or configuration: the message says what is wrong and how to fix it."""


class ModelLoadError(UserError):
    """A model could not be loaded (no network, missing file, unknown name)."""


class ModelMismatchError(UserError):
    """A collection was used with a model other than the one it was indexed with."""


class MediaError(XmodalError):
    """A file could not be decoded. ``reason`` is short and recorded in the catalog."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
