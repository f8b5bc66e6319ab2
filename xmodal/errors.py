"""Exceptions that carry a message meant for the person running xmodal, and their kind.

Every error raised on purpose is an :class:`XmodalError` with a :class:`ErrorKind`: what went wrong,
independent of how it is reported. The CLI prints ``UserError`` messages on one line and exits 2;
the API maps each kind to one HTTP status (``xmodal.api.errors.STATUS``). Nothing decides a status
from a message's text.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """What an error is about; the API's ``error`` code in a JSON error body is this value."""

    BAD_INPUT = "invalid_request"  # malformed or out-of-range input: fix the request
    NOT_FOUND = "not_found"  # no such collection, item or file
    CONFLICT = "conflict"  # the request clashes with the state: another model, a file changed since indexing
    INVALID_MEDIA = "invalid_media"  # media that does not decode (corrupt, truncated, silent...)
    UNSUPPORTED_MEDIA = "unsupported_media"  # not a kind of media xmodal reads
    TOO_LARGE = "too_large"  # over a limit: bytes, pixels, seconds
    BUSY = "busy"  # at capacity now: try again later
    NOT_READY = "not_ready"  # still starting up
    UNAUTHORIZED = "unauthorized"  # no or a wrong API key
    TIMEOUT = "timeout"  # the client took too long to send its request
    CANCELLED = "cancelled"  # the client went away: the work was abandoned
    INTERNAL = "internal"  # a bug


class XmodalError(Exception):
    """Base class of every error xmodal raises on purpose. A class says its kind; one raise may name
    another (``XmodalError("...", kind=ErrorKind.BUSY)``) where no class of its own is worth it."""

    kind: ErrorKind = ErrorKind.INTERNAL
    #: the ``error`` code of a JSON error body, when it is more specific than the kind's
    code: str | None = None

    def __init__(self, message: str = "", *, kind: ErrorKind | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if code is not None:
            self.code = code


class UserError(XmodalError):
    """Bad input or configuration: the message says what is wrong and how to fix it."""

    kind = ErrorKind.BAD_INPUT


class NotFoundError(UserError):
    """A collection, item or file that does not exist (or is not served)."""

    kind = ErrorKind.NOT_FOUND


class ConflictError(UserError):
    """The request is well formed but clashes with what is there."""

    kind = ErrorKind.CONFLICT


class ModelLoadError(UserError):
    """A model could not be loaded (no network, missing file, unknown name). The message is one short line
    that says what to do; ``detail`` keeps the library's own words (shown under ``-v``)."""

    def __init__(self, message: str = "", *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class ModelMismatchError(ConflictError):
    """A collection was used with a model other than the one it was indexed with."""

    code = "model_mismatch"


class BusyError(XmodalError):
    """At capacity: the same request may succeed after ``retry_after`` seconds."""

    kind = ErrorKind.BUSY

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReadyError(XmodalError):
    """The service is still loading its models and indexes."""

    kind = ErrorKind.NOT_READY


class Cancelled(XmodalError):
    """Work abandoned because whoever asked for it has gone (a client that disconnected)."""

    kind = ErrorKind.CANCELLED


class MediaError(XmodalError):
    """A file could not be decoded. ``reason`` is short and recorded in the catalog; ``kind`` says
    whether it is over a limit (``TOO_LARGE``), not a kind of media xmodal reads
    (``UNSUPPORTED_MEDIA``), or damaged (``INVALID_MEDIA``)."""

    def __init__(self, reason: str, kind: ErrorKind = ErrorKind.INVALID_MEDIA) -> None:
        super().__init__(reason, kind=kind)
        self.reason = reason
