"""The decode stage, run in worker processes: read, hash, decode, validate, preprocess.

Only plain data crosses the process boundary: paths in, arrays or text and metadata out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xmodal.encoders.base import ImageTransform
from xmodal.errors import MediaError
from xmodal.media.image import decode_image_with_info
from xmodal.media.read import read_file
from xmodal.media.text import decode_text, text_metadata
from xmodal.media.types import MediaLimits

if TYPE_CHECKING:
    from xmodal.media.audio import AudioSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeTask:
    item_id: int
    path: str
    modality: str
    known_hash: str | None  # content already embedded: skip decoding when the bytes still hash to it


@dataclass
class Decoded:
    item_id: int
    content_hash: str | None = None
    size: int | None = None
    error: str | None = None
    unchanged: bool = False
    pixels: np.ndarray | None = None
    text: str | None = None
    audio: np.ndarray | None = None  # per window: the model's input features
    spans: list[tuple[float, float]] | None = None  # per window: (start, end) seconds
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecodeConfig:
    limits: MediaLimits
    transform: ImageTransform | None
    min_side: int | None
    audio_spec: AudioSpec | None = None
    audio_transform: Callable[[np.ndarray], np.ndarray] | None = None


def init_worker() -> None:
    """Process-pool initializer: one torch thread per worker (the cores are the pool's)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def warm_up() -> None:
    """A first task that makes the pool start its processes now (they import torch meanwhile)."""


def decode_many(tasks: list[DecodeTask], config: DecodeConfig) -> list[Decoded]:
    return [decode_one(task, config) for task in tasks]


def decode_one(task: DecodeTask, config: DecodeConfig) -> Decoded:
    out = Decoded(item_id=task.item_id)
    try:
        data = read_file(task.path, config.limits)
        out.size = len(data)
        out.content_hash = hashlib.sha256(data).hexdigest()
        if task.known_hash is not None and out.content_hash == task.known_hash:
            out.unchanged = True
            return out
        if task.modality == "image":
            if config.transform is None:
                raise MediaError("no image encoder in this collection")
            info = decode_image_with_info(data, config.limits, min_side=config.min_side)
            out.pixels = config.transform(info.image)
            out.meta = {"width": info.width, "height": info.height, "format": info.format}
        elif task.modality == "text":
            out.text = decode_text(data, config.limits)
            out.meta = text_metadata(out.text)
        elif task.modality == "audio":
            if config.audio_spec is None or config.audio_transform is None:
                raise MediaError("no audio encoder in this collection")
            from xmodal.media.audio import audio_metadata, decode_audio

            spec = dataclasses.replace(config.audio_spec, max_seconds=config.limits.max_audio_seconds)
            audio = decode_audio(data, spec, config.audio_transform)
            out.audio, out.spans = audio.windows, audio.spans
            out.meta = audio_metadata(audio)
        else:
            raise MediaError(f"unsupported modality {task.modality!r}")
    except MediaError as exc:
        out.error = exc.reason
    except MemoryError:
        out.error = "out of memory while decoding"
    except Exception as exc:  # a decoder bug must not stop the run: record it and go on
        log.warning("unexpected error decoding %s", task.path, exc_info=True)
        out.error = f"internal decode error: {type(exc).__name__}: {exc}"[:500]
    return out
