"""What every encoder family needs to name a model exactly: checkpoint file records and Hub access."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from xmodal.digest import file_sha256

log = logging.getLogger(__name__)


def file_record(path: Path, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """Path, size, mtime and sha256 of a checkpoint; the hash is reused when size and mtime match."""
    st = path.stat()
    if cached and cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns and cached.get("sha256"):
        digest = cached["sha256"]
    else:
        digest = file_sha256(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline() -> bool:
    """Whether the Hugging Face Hub is out of reach (HF_HUB_OFFLINE set, or no connection to it)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip and transformers depend on it
        return not hub_reachable()
    return bool(constants.HF_HUB_OFFLINE) or not hub_reachable()


def not_here(what: str, flag: str) -> str:
    """The one line for a named model that is neither cached nor downloadable: what to do first."""
    why = "not cached, offline" if offline() else "not cached, download failed"
    return f"{what} {why}: pass {flag}"


@contextlib.contextmanager
def hub_mode() -> Iterator[None]:
    """Use only the local Hugging Face cache when the Hub can't be reached (fail fast, not in minutes)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip and transformers depend on it
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    if not previous and not hub_reachable():
        log.info("Hugging Face Hub not reachable: using the local cache only")
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
