"""The CLAP family (transformers ``ClapModel`` + ``ClapProcessor``): audio and text into the ``clap`` space.

A model is named the way transformers names it: a Hugging Face id (``laion/clap-htsat-unfused``, the
default) or a local folder written by ``save_pretrained`` (``--audio-model DIR``, env
``XMODAL_AUDIO_MODEL``). Installed by the ``audio`` extra; without it, asking for audio says so.

Audio reaches the model as fixed windows (see :mod:`xmodal.media.audio`): the feature extractor turns
each window into a log-mel spectrogram in the decode workers, the model embeds each window, and an
item's vector is the normalised mean of its window vectors. Windows are never longer than the
extractor's ``max_length_s``, so its random crop never runs, and ``is_longer`` is always false: the
same file always gives the same vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.digest import file_sha256
from xmodal.encoders.base import autocast, resolve_device, unit_rows
from xmodal.encoders.files import file_record, first_line, hub_mode, not_here
from xmodal.errors import Cancelled, ModelLoadError, UserError
from xmodal.spaces import SPACES, AudioSpec

log = logging.getLogger(__name__)

FAMILY = "clap"
SPACE = "clap"
FLAG_HINT = "pass a local CLAP folder (save_pretrained layout) with --audio-model DIR (or env XMODAL_AUDIO_MODEL)"
EXTRA_HINT = "audio needs the 'audio' extra: pip install 'xmodal[audio]'"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def audio_available() -> bool:
    """Whether the audio extra (transformers, soundfile, soxr) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "soundfile", "soxr"))


def _require_extra() -> None:
    if not audio_available():
        raise ModelLoadError(EXTRA_HINT)


def _folder_record(folder: Path, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    config = folder / "config.json"
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not config.is_file() or not weights:
        raise ModelLoadError(f"--audio-model {folder}: not a CLAP folder (needs config.json and "
                             f"{' or '.join(WEIGHT_FILES)}, as save_pretrained writes them)")
    ckpt = file_record(weights[0], cached)
    digest = hashlib.sha256(f"{file_sha256(config)}|{ckpt['sha256']}".encode()).hexdigest()
    return {"checkpoint": ckpt, "identity": f"clap-dir|sha256:{digest}"}


def resolve_record(model: str, pretrained: str | None = None) -> dict[str, Any]:
    """Validate the name and describe the model exactly (a folder's hashes, a Hub snapshot's commit)."""
    _require_extra()
    record: dict[str, Any] = {"family": FAMILY, "model": model, "pretrained": None}
    folder = Path(model.removeprefix("local-dir:")).expanduser()
    if folder.is_dir():
        folder = folder.absolute()
        record["model"] = str(folder)
        record.update(_folder_record(folder))
        return record
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"--audio-model {model}: no such folder, and not a Hugging Face id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        with hub_mode():
            path = Path(snapshot_download(model, allow_patterns=["*.json", "*.txt", *WEIGHT_FILES]))
    except Exception as exc:
        raise ModelLoadError(not_here(f"CLAP {model}", "--audio-model DIR"),
                             detail=f"{' '.join(str(exc).split())}; {FLAG_HINT}, or run once online to download it") from exc
    record.update(path=str(path), identity=f"hf:{model}@{path.name}")
    return record


class ClapEncoder:
    family = FAMILY
    space = SPACE
    modalities = SPACES[SPACE].modalities

    def __init__(self, record: dict[str, Any], device: str = "auto") -> None:
        _require_extra()
        import torch
        from transformers import ClapModel, ClapProcessor

        self.record = record
        self.device = resolve_device(device)
        source = record.get("path") or record["model"]
        try:
            with contextlib.nullcontext() if Path(source).is_dir() else hub_mode(), _quiet_loading():
                model = ClapModel.from_pretrained(source)
                processor = ClapProcessor.from_pretrained(source)
        except Exception as exc:
            first = first_line(exc)
            raise ModelLoadError(f"cannot load CLAP model {record['model']}: {first[:300]}. {FLAG_HINT}") from exc
        self._model = model.eval().to(self.device)
        self._tokenizer = processor.tokenizer
        self._extractor = processor.feature_extractor
        self._torch = torch
        self.dim = int(model.config.projection_dim)
        positions = int(getattr(model.config.text_config, "max_position_embeddings", 514))
        self._max_tokens = max(8, min(int(self._tokenizer.model_max_length or 512), positions - 2))

    def audio_spec(self) -> AudioSpec:
        fe = self._extractor
        return AudioSpec(sample_rate=int(fe.sampling_rate), window_s=float(fe.nb_max_samples) / fe.sampling_rate)

    def audio_transform(self) -> AudioTransform:
        return AudioTransform(self._extractor)

    def _autocast(self) -> Any:
        return autocast(self.device)

    def _finish(self, out: Any) -> np.ndarray:
        return unit_rows(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Through the text tower and its projection (the same in transformers 4 and 5)."""
        torch = self._torch
        tokens = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self._max_tokens,
                                 return_tensors="pt")
        with torch.inference_mode(), self._autocast():
            out = self._model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                         attention_mask=tokens["attention_mask"].to(self.device))
            return self._finish(self._model.text_projection(out.pooler_output))

    def embed_windows(self, features: np.ndarray, batch: int, stop: Callable[[], bool] | None = None) -> np.ndarray:
        return embed_windows(self, features, batch, stop)

    def pool(self, window_vectors: np.ndarray) -> np.ndarray:
        return pool_windows(window_vectors)

    def embed_audio(self, features: np.ndarray) -> np.ndarray:
        """Window features (n, channels, frames, mels) from :class:`AudioTransform` -> (n, dim) window vectors."""
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            batch = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
            longer = torch.zeros((batch.shape[0], 1), dtype=torch.bool, device=self.device)
            out = self._model.audio_model(input_features=batch, is_longer=longer)
            return self._finish(self._model.audio_projection(out.pooler_output))


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No transformers progress bar while the weights load: the index run says what it loads, and
    --no-progress means none."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


class AudioTransform:
    """One window of mono samples at the model's rate -> its log-mel features; picklable for the workers."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor

    def __call__(self, window: np.ndarray) -> np.ndarray:
        out = self.extractor(window, sampling_rate=self.extractor.sampling_rate, return_tensors="np")
        return np.asarray(out["input_features"][0], dtype=np.float32)


def embed_windows(encoder: Any, features: np.ndarray, batch: int, stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Window vectors of window features (from one clip or several), ``batch`` windows per forward pass;
    ``stop`` is asked before each pass (True: :class:`Cancelled`)."""
    out = []
    for i in range(0, len(features), batch):
        if stop is not None and stop():
            raise Cancelled("stopped while embedding audio")
        out.append(encoder.embed_audio(features[i : i + batch]))
    return np.concatenate(out)


def pool_windows(vectors: np.ndarray) -> np.ndarray:
    """An item's vector from its window vectors: the normalised mean (every window counts equally)."""
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:  # windows that cancel out: fall back to the first, rather than a zero vector
        return np.asarray(vectors[0], dtype=np.float32)
    return np.asarray(mean / norm, dtype=np.float32)


def load(record: dict[str, Any], device: str = "auto") -> ClapEncoder:
    """Load the encoder a record names, checking that a local folder still holds the same weights."""
    ckpt = record.get("checkpoint")
    if ckpt:
        folder = Path(record["model"])
        if not folder.is_dir():
            raise ModelLoadError(f"the collection's CLAP folder {folder} is missing: restore it, or pass the same "
                                 "model with --audio-model DIR")
        now = _folder_record(folder, cached=ckpt)
        if now["identity"] != record.get("identity"):
            raise UserError(f"CLAP folder {folder} changed since the collection was indexed (its hashes differ)")
    return ClapEncoder(record, device)
