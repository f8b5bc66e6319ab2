"""The open_clip family: images and text into the ``clip`` space.

A model is named the way open_clip names it:

- ``--clip-model ViT-B-32 --clip-pretrained laion2b_s34b_b79k`` (a built-in config and a tag),
- ``--clip-pretrained /path/to/checkpoint.{pt,bin,safetensors}`` (a local checkpoint file),
- ``--clip-pretrained hf-hub:org/repo`` or ``--clip-model hf-hub:org/repo`` (config and weights from the Hub),
- ``--clip-model local-dir:/path`` (a folder with ``open_clip_config.json`` and weights),
- ``--clip-model /path/to/config.json`` (an architecture config of your own, registered with open_clip).

Checkpoints load with ``weights_only=True`` (or from safetensors). Offline, a tag that is not in the
Hugging Face cache fails at once with a one-line error naming the flag.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.digest import file_sha256
from xmodal.encoders.base import ImageTransform, autocast, resolve_device, unit_rows
from xmodal.encoders.files import file_record, first_line, hub_mode, not_here
from xmodal.errors import ModelLoadError, UserError
from xmodal.spaces import SPACES

log = logging.getLogger(__name__)

FAMILY = "open_clip"
SPACE = "clip"
FLAG_HINT = "pass a local checkpoint with --clip-pretrained PATH (or env XMODAL_CLIP_PRETRAINED)"


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def resolve_record(model: str, pretrained: str | None) -> dict[str, Any]:
    """Validate the names and describe the model exactly, without loading any weights."""
    import open_clip

    record: dict[str, Any] = {"family": FAMILY, "model": model, "pretrained": pretrained or None}
    if model.startswith("hf-hub:") or (pretrained or "").startswith("hf-hub:"):
        hub_id = model if model.startswith("hf-hub:") else str(pretrained)
        record.update(model=hub_id, pretrained=None, identity=hub_id)
        return record
    if model.startswith("local-dir:") or Path(model).is_dir():
        folder = Path(model.removeprefix("local-dir:")).expanduser().absolute()
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise ModelLoadError(f"--clip-model {model}: no open_clip_config.json in {folder}")
        record.update(model=f"local-dir:{folder}", pretrained=None,
                      identity=f"local-dir:{file_sha256(config)}")
        return record
    if model.endswith(".json"):
        config = Path(model).expanduser().absolute()
        if not config.is_file():
            raise ModelLoadError(f"--clip-model {model}: config file not found")
        record["model"] = str(config)
        arch = f"config:{file_sha256(config)}"
    else:
        if open_clip.get_model_config(model) is None:
            raise ModelLoadError(
                f"--clip-model {model!r} is not an open_clip architecture; "
                f"known ones include {', '.join(open_clip.list_models()[:12])}, ... "
                "(or pass hf-hub:ID, local-dir:PATH or a config .json)"
            )
        arch = model
    if not pretrained:
        raise ModelLoadError(f"--clip-model {model}: no weights given; {FLAG_HINT}")
    candidate = Path(pretrained).expanduser()
    if candidate.is_file():
        ckpt = file_record(candidate.absolute())
        record.update(pretrained=ckpt["path"], checkpoint=ckpt, identity=f"{arch}|sha256:{ckpt['sha256']}")
        return record
    if _looks_like_path(pretrained):
        raise ModelLoadError(f"--clip-pretrained {pretrained}: checkpoint file not found")
    if arch.startswith("config:"):
        raise ModelLoadError(f"--clip-model {model} is a config file: give its weights as a file path")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained not in tags:
        raise ModelLoadError(
            f"--clip-pretrained {pretrained!r} is not a tag of {model} (tags: {', '.join(tags) or 'none'}) "
            "nor an existing file"
        )
    record["identity"] = f"{model}|{pretrained}"
    return record


class OpenClipEncoder:
    family = FAMILY
    space = SPACE
    modalities = SPACES[SPACE].modalities

    def __init__(self, record: dict[str, Any], device: str = "auto") -> None:
        import open_clip
        import torch

        self.record = record
        self.device = resolve_device(device)
        name = record["model"]
        pretrained = record.get("pretrained")
        if name.endswith(".json"):
            open_clip.add_model_config(name)
            name = Path(name).stem
        local = bool(record.get("checkpoint")) or name.startswith("local-dir:")
        try:
            with contextlib.nullcontext() if local else hub_mode(), _no_random_init(torch):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, device=self.device, weights_only=True,
                    require_pretrained=True,
                )
                self._tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # a bad checkpoint fails in pickle, zip, safetensors or torch: any type
            first = first_line(exc)
            if not isinstance(exc, (RuntimeError, OSError, ValueError)):
                kind = type(exc)  # name it: "struct.error: unpack requires ...", "IndexError: pop from ..."
                module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
                first = f"{module}{kind.__qualname__}: {first}"
            if pretrained and not Path(str(pretrained)).is_file():
                raise ModelLoadError(
                    not_here(f"{record['model']}/{pretrained}", "--clip-pretrained FILE"),
                    detail=f"{' '.join(str(exc).split())}; the flag's env var is XMODAL_CLIP_PRETRAINED, or run once online to "
                           "download the weights into the Hugging Face cache",
                ) from exc
            raise ModelLoadError(f"cannot load open_clip model {record['model']}: {first[:300]}",
                                 detail=str(exc)) from exc
        model.eval()
        self._model = model
        self._preprocess = preprocess
        self._torch = torch
        size = model.visual.image_size
        self._image_side = int(min(size) if isinstance(size, (tuple, list)) else size)
        with torch.inference_mode():
            probe = self._tokenizer(["probe"]).to(self.device)
            self.dim = int(model.encode_text(probe).shape[-1])

    def image_transform(self) -> ImageTransform:
        return _Transform(self._preprocess)

    def image_min_side(self) -> int:
        return self._image_side

    def _autocast(self) -> Any:
        return autocast(self.device)

    def _finish(self, out: Any) -> np.ndarray:
        return unit_rows(out)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
            return self._finish(self._model.encode_image(batch))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), self._autocast():
            tokens = self._tokenizer(list(texts)).to(self.device)
            return self._finish(self._encode_tokens(tokens))

    def _encode_tokens(self, tokens: Any) -> Any:
        """The text tower over the real tokens only: a 3-word query costs 5 positions, not 77.

        CLIP's text transformer is causal, so the positions before the longest sequence's end-of-text
        token do not see the padding after it: cutting the padding gives the same embedding. Models
        whose text tower is not open_clip's own causal one (``CustomTextCLIP``, HF towers) take the
        library's full path.
        """
        model = self._model
        if not all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "attn_mask")) or (
            getattr(model, "text_pool_type", "argmax") != "argmax"
        ):
            return model.encode_text(tokens)
        from open_clip.transformer import text_global_pool

        nonzero = (tokens != 0).int()
        length = int((nonzero.shape[1] - nonzero.flip(1).argmax(dim=1)).max()) if tokens.numel() else 1
        length = max(1, min(length, tokens.shape[1]))
        text = tokens[:, :length]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        x = model.ln_final(model.transformer(x, attn_mask=mask))
        x = text_global_pool(x, text, "argmax", eos_token_id=getattr(model, "text_eos_id", None))
        projection: Any = model.text_projection
        return projection(x) if isinstance(projection, self._torch.nn.Linear) else x @ projection


class _Transform:
    """open_clip's own preprocessing, picklable for the decode workers."""

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __call__(self, image: Any) -> np.ndarray:
        return np.asarray(self.preprocess(image).numpy(), dtype=np.float32)


_INIT_LOCK = threading.Lock()
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def _no_random_init(torch: Any) -> Iterator[None]:
    """Build the model without drawing random initial weights (``torch.nn.init`` does nothing meanwhile):
    the checkpoint then overwrites every parameter (open_clip loads it with ``strict=True``, and
    ``require_pretrained`` fails the load without one). Drawing them was 2.2 s of a ViT-B-32 load on CPU,
    an eighth of a cold search (``benchmarks/bench_cold_search.py``)."""
    init = torch.nn.init
    with _INIT_LOCK:
        saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
        try:
            for name in saved:
                setattr(init, name, _unchanged)
            yield
        finally:
            for name, fn in saved.items():
                setattr(init, name, fn)


def _unchanged(tensor: Any, *_args: Any, **_kwargs: Any) -> Any:
    return tensor


def load(record: dict[str, Any], device: str = "auto") -> OpenClipEncoder:
    """Load the encoder a record names, checking that a local checkpoint is still the same file."""
    ckpt = record.get("checkpoint")
    if ckpt:
        path = Path(ckpt["path"])
        if not path.is_file():
            raise ModelLoadError(
                f"the collection's checkpoint {path} is missing: restore it, or pass the same weights with "
                "--clip-pretrained PATH"
            )
        now = file_record(path, cached=ckpt)
        if now["sha256"] != ckpt["sha256"]:
            raise UserError(f"checkpoint {path} changed since the collection was indexed (sha256 differs)")
    return OpenClipEncoder(record, device)

