"""The encode step every engine runs: a group of decoded items of one modality through one space's
encoder, in batches. Embedders are registered by modality (as decoders are in ``indexer.decode``):
images and texts are one vector each, a windowed modality (audio) is every window embedded and an
item's vector their pool (the window vectors are kept for the best-window lookup); a video is its sampled
frames embedded as images, pooled per segment, and the segments pooled, and in an audio space its sound
track's windows embedded, pooled per segment, and the segments pooled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from xmodal.encoders import Encoder
from xmodal.encoders.base import AudioEncoder, ImageEncoder, pool_segments
from xmodal.indexer.decode import Decoded
from xmodal.storage.shards import Windows

Embedder = Callable[[Any, list[Decoded], int], tuple[np.ndarray, list[Windows | None]]]
#: modality -> (encoder, group, batch size) -> (one vector per item, window vectors per item or None)
EMBEDDERS: dict[str, Embedder] = {}


def register_embedder(modality: str, embedder: Embedder) -> None:
    EMBEDDERS[modality] = embedder


def encode_group(encoder: Encoder, modality: str, group: list[Decoded],
                 batch_size: int) -> tuple[np.ndarray, list[Windows | None]]:
    """The vectors of a group of decoded items of one modality (and, for windowed ones, their windows)."""
    return EMBEDDERS[modality](encoder, group, batch_size)


def waiting(group: list[Decoded]) -> int:
    """How much encoder work a group holds: windows for a windowed modality, else items."""
    return sum(d.windows for d in group)


def _embed_images(encoder: Any, group: list[Decoded], _batch: int) -> tuple[np.ndarray, list[Windows | None]]:
    return cast(ImageEncoder, encoder).embed_images(np.stack([d.inputs for d in group])), [None] * len(group)


def _embed_texts(encoder: Any, group: list[Decoded], _batch: int) -> tuple[np.ndarray, list[Windows | None]]:
    return cast(Encoder, encoder).embed_texts([d.inputs or "" for d in group]), [None] * len(group)


def _embed_windows(encoder: Any, group: list[Decoded], batch: int) -> tuple[np.ndarray, list[Windows | None]]:
    """Every window of every item in the group, in batches; an item's vector pools its windows."""
    enc = cast(AudioEncoder, encoder)
    feats = np.concatenate([d.inputs for d in group if d.inputs is not None])
    window_vecs = enc.embed_windows(feats, batch)
    vecs: list[np.ndarray] = []
    windows: list[Windows | None] = []
    at = 0
    for d in group:
        n = len(d.inputs) if d.inputs is not None else 0
        own = window_vecs[at : at + n]
        at += n
        vecs.append(enc.pool(own))
        windows.append(Windows(own, np.asarray(d.spans, dtype=np.float32).reshape(-1, 2)) if n > 1 else None)
    return np.stack(vecs), windows


def _embed_video(encoder: Any, group: list[Decoded], batch: int) -> tuple[np.ndarray, list[Windows | None]]:
    """Every sampled frame embedded as an image (in batches); a segment's vector is the normalised mean of
    its frames', the video's the normalised mean of its segments' (each shot counts the same, however long).
    The segment vectors are kept as the item's windows, even for a single shot."""
    if isinstance(encoder, AudioEncoder):
        return _embed_soundtracks(encoder, group, batch)
    enc = cast(ImageEncoder, encoder)
    frames = np.concatenate([d.inputs.frames for d in group])
    frame_vecs = np.concatenate([enc.embed_images(frames[at : at + batch]) for at in range(0, len(frames), batch)])
    vecs: list[np.ndarray] = []
    windows: list[Windows | None] = []
    at = 0
    for d in group:
        own = frame_vecs[at : at + len(d.inputs)]
        at += len(d.inputs)
        segs, vec = pool_segments(own, d.inputs.segment, len(d.spans or []))
        vecs.append(vec)
        windows.append(Windows(segs, np.asarray(d.spans, dtype=np.float32).reshape(-1, 2)))
    return np.stack(vecs).astype(np.float32), windows


def _embed_soundtracks(enc: AudioEncoder, group: list[Decoded], batch: int) -> tuple[np.ndarray, list[Windows | None]]:
    """A video's sound track in an audio space: every window of every segment embedded (in batches), a
    segment's vector the encoder's pool of its windows, the video's the normalised mean of its segments' (as
    for its frames); the segment vectors are the item's windows here too, with the same spans."""
    feats = np.concatenate([d.inputs.sound.windows for d in group])
    window_vecs = enc.embed_windows(feats, batch)
    vecs: list[np.ndarray] = []
    windows: list[Windows | None] = []
    at = 0
    for d in group:
        sound = d.inputs.sound
        own = window_vecs[at : at + len(sound)]
        at += len(sound)
        segs, vec = pool_segments(own, sound.segment, len(d.spans or []), enc.pool)
        vecs.append(vec)
        windows.append(Windows(segs, np.asarray(d.spans, dtype=np.float32).reshape(-1, 2)))
    return np.stack(vecs).astype(np.float32), windows


register_embedder("image", _embed_images)
register_embedder("text", _embed_texts)
register_embedder("audio", _embed_windows)
register_embedder("video", _embed_video)
