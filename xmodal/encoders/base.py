"""The protocol every encoder family implements, and the record that names a model exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from xmodal.spaces import AudioSpec

#: A picklable callable run in decode worker processes: RGB PIL image -> model input array.
ImageTransform = Callable[[Any], np.ndarray]


@runtime_checkable
class Encoder(Protocol):
    """An embedding model. Output vectors are float32, L2-normalised, shape (n, dim). Every family
    embeds text (the modality all spaces share); images and audio come with the protocols below."""

    family: str
    space: str
    dim: int
    modalities: frozenset[str]
    device: str
    record: dict[str, Any]  # the exact model identity, stored with the collection

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Encoder, Protocol):
    def image_transform(self) -> ImageTransform: ...

    def image_min_side(self) -> int: ...

    def embed_images(self, pixels: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class AudioEncoder(Encoder, Protocol):
    """Audio is cut into windows (``audio_spec``), each window embedded; an item's vector pools them."""

    def audio_spec(self) -> AudioSpec: ...  # the rate and window the model wants

    def audio_transform(self) -> Callable[[np.ndarray], np.ndarray]: ...  # one window -> model input, picklable

    def embed_audio(self, features: np.ndarray) -> np.ndarray: ...  # window inputs -> window vectors (one pass)

    def embed_windows(self, features: np.ndarray, batch: int,
                      stop: Callable[[], bool] | None = None) -> np.ndarray: ...  # in passes of ``batch``

    def pool(self, window_vectors: np.ndarray) -> np.ndarray: ...  # one item's window vectors -> its vector


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        from xmodal.errors import UserError

        raise UserError(f"device {requested!r} requested but CUDA is not available (use --device cpu or auto)")
    return requested


def autocast(device: str) -> Any:
    """CUDA autocast (bf16 where supported, else fp16) on a GPU; nothing on CPU (float32)."""
    import contextlib

    import torch

    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def unit_rows(out: Any) -> np.ndarray:
    """A model's output tensor (n, dim) as float32 numpy rows of unit length."""
    out = out.float()
    out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def pool_segments(vectors: np.ndarray, owner: np.ndarray, count: int,
                  pool: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A video's vectors (of its frames, or of its sound's windows) pooled per segment (``owner``: each one's
    segment of ``count``; ``pool``: how, by default the mean), each segment's made unit length, and the
    video's: the unit mean of its segments' (every shot counts the same, however long). Indexing and
    query clips pool the same way."""
    segs = np.stack([_unit(np.asarray(pool(vectors[owner == i]) if pool else vectors[owner == i].mean(axis=0),
                                      dtype=np.float32)) for i in range(count)]).astype(np.float32)
    return segs, _unit(segs.mean(axis=0)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
