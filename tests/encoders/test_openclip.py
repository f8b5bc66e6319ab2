"""The open_clip family through the registry, with a tiny random-weights model (nothing downloaded)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import photo

import xmodal.encoders.registry as registry
from xmodal.encoders import Encoder, families, load_encoder, register_family, resolve_device, resolve_model
from xmodal.errors import ModelLoadError, UserError

TEXTS = ["a red leather boot", "a photo of a cat", "quarterly report", ""]


def load(record: dict[str, Any]) -> Encoder:
    return load_encoder("open_clip", record, "cpu")


@pytest.fixture(scope="module")
def encoder(tiny_clip: tuple[str, str]) -> Encoder:
    return load(resolve_model("open_clip", *tiny_clip))


@pytest.fixture(scope="module")
def pixels(encoder: Encoder) -> np.ndarray:
    transform = encoder.image_transform()
    return np.stack([transform(photo(i)) for i in range(3)])


@pytest.fixture
def private_ckpt(tiny_clip: tuple[str, str], tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint that a test may change."""
    return Path(shutil.copy(tiny_clip[1], tmp_path / "weights.pt"))


def assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.dtype == np.float32 and x.shape == (n, dim) and x.flags.c_contiguous
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# loading and embedding ------------------------------------------------------------------------


def test_encoder_shape_and_record(encoder: Encoder, tiny_clip: tuple[str, str]) -> None:
    assert isinstance(encoder, Encoder)
    assert (encoder.family, encoder.space, encoder.dim, encoder.device) == ("open_clip", "clip", 64, "cpu")
    assert encoder.modalities == frozenset({"image", "text", "video"})  # video: its frames, as images
    assert encoder.image_min_side() == 64
    record = encoder.record
    assert record["model"] == str(Path(tiny_clip[0]).absolute())
    assert record["pretrained"] == str(Path(tiny_clip[1]).absolute())
    assert record["checkpoint"]["sha256"] in record["identity"]
    assert record["identity"].startswith("config:")
    json.dumps(record)  # stored in the catalog as JSON


def test_image_vectors_are_unit_float32(encoder: Encoder, pixels: np.ndarray) -> None:
    assert pixels.dtype == np.float32 and pixels.shape == (3, 3, 64, 64)
    out = encoder.embed_images(pixels)
    assert_unit_rows(out, 3, encoder.dim)
    assert not np.allclose(out[0], out[1])  # different photos, different vectors


def test_text_vectors_are_unit_float32(encoder: Encoder) -> None:
    out = encoder.embed_texts(TEXTS)
    assert_unit_rows(out, len(TEXTS), encoder.dim)
    assert len({row.tobytes() for row in out}) == len(TEXTS)
    long = encoder.embed_texts(["word " * 500])  # longer than the context: truncated, not an error
    assert_unit_rows(long, 1, encoder.dim)


def test_same_input_same_vector(encoder: Encoder, pixels: np.ndarray) -> None:
    assert np.array_equal(encoder.embed_images(pixels), encoder.embed_images(pixels))
    assert np.array_equal(encoder.embed_texts(TEXTS), encoder.embed_texts(TEXTS))
    # batching does not change a vector beyond float noise
    np.testing.assert_allclose(encoder.embed_images(pixels[1:2])[0], encoder.embed_images(pixels)[1], atol=1e-5)
    np.testing.assert_allclose(encoder.embed_texts([TEXTS[2]])[0], encoder.embed_texts(TEXTS)[2], atol=1e-5)


def test_image_transform_is_picklable(encoder: Encoder) -> None:
    transform = encoder.image_transform()
    clone = pickle.loads(pickle.dumps(transform))
    for seed, size in [(7, (160, 120)), (8, (50, 300)), (9, (64, 64))]:
        image = photo(seed, size)
        want = transform(image)
        assert want.dtype == np.float32 and want.shape == (3, 64, 64)
        assert np.array_equal(clone(image), want)


def test_pt_and_safetensors_checkpoints_agree(
    encoder: Encoder, tiny_clip: tuple[str, str], pixels: np.ndarray, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    state = torch.load(tiny_clip[1], map_location="cpu", weights_only=True)
    st_path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    record = resolve_model("open_clip", tiny_clip[0], str(st_path))
    assert record["checkpoint"]["path"] == str(st_path)
    assert record["identity"] != encoder.record["identity"]  # other bytes, other identity
    other = load(record)
    assert other.dim == encoder.dim
    assert np.array_equal(other.embed_images(pixels), encoder.embed_images(pixels))
    assert np.array_equal(other.embed_texts(TEXTS), encoder.embed_texts(TEXTS))


class _Unsafe:
    """Not a tensor: a weights_only load must refuse to unpickle it."""


def bad_checkpoint(kind: str, tiny_clip: tuple[str, str], folder: Path) -> Path:
    good = Path(tiny_clip[1]).read_bytes()
    if kind == "garbage":
        path = folder / "broken.pt"
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "empty":
        path = folder / "empty.bin"
        path.write_bytes(b"")
    elif kind == "four-bytes":
        path = folder / "junk.pt"
        path.write_bytes(b"junk")
    elif kind == "truncated":
        path = folder / "truncated.pt"
        path.write_bytes(good[: len(good) // 2])
    elif kind == "truncated-safetensors":
        from safetensors.torch import save_file

        state = torch.load(tiny_clip[1], map_location="cpu", weights_only=True)
        path = folder / "t.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        path.write_bytes(path.read_bytes()[:4096])
    elif kind == "unsafe-pickle":
        path = folder / "unsafe.pt"
        torch.save({"weights": _Unsafe()}, path)
    elif kind == "other-architecture":
        path = folder / "other.pt"
        torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["garbage", "empty", "four-bytes", "truncated", "truncated-safetensors", "unsafe-pickle",
                                  "other-architecture"])
def test_a_bad_checkpoint_is_a_model_load_error(tiny_clip: tuple[str, str], tmp_path: Path, kind: str) -> None:
    path = bad_checkpoint(kind, tiny_clip, tmp_path)
    record = resolve_model("open_clip", tiny_clip[0], str(path))
    with pytest.raises(ModelLoadError, match="cannot load open_clip model") as info:
        load(record)
    assert "\n" not in str(info.value)  # one line for the CLI


# identity of a checkpoint ---------------------------------------------------------------------


def rewrite(path: Path, data: bytes) -> None:
    """New content with an mtime that surely differs (coarse file system clocks)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_identity_follows_bytes_not_location(tiny_clip: tuple[str, str], private_ckpt: Path, tmp_path: Path) -> None:
    config = tiny_clip[0]
    original = resolve_model("open_clip", config, str(private_ckpt))
    elsewhere = tmp_path / "moved" / "renamed.pt"
    elsewhere.parent.mkdir()
    shutil.copy(private_ckpt, elsewhere)
    copied = resolve_model("open_clip", config, str(elsewhere))
    assert copied["identity"] == original["identity"]
    assert copied["checkpoint"]["path"] != original["checkpoint"]["path"]
    config_copy = tmp_path / "same-arch.json"
    shutil.copy(config, config_copy)
    assert resolve_model("open_clip", str(config_copy), str(private_ckpt))["identity"] == original["identity"]

    data = bytearray(private_ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the weights
    rewrite(private_ckpt, bytes(data))
    changed = resolve_model("open_clip", config, str(private_ckpt))
    assert changed["checkpoint"]["size"] == original["checkpoint"]["size"]
    assert changed["checkpoint"]["sha256"] != original["checkpoint"]["sha256"]
    assert changed["identity"] != original["identity"]

    other_arch = json.loads(Path(config).read_text())
    other_arch["embed_dim"] = 32
    (tmp_path / "other.json").write_text(json.dumps(other_arch))
    assert resolve_model("open_clip", str(tmp_path / "other.json"), str(elsewhere))["identity"] != original["identity"]


def test_load_refuses_a_changed_checkpoint(tiny_clip: tuple[str, str], private_ckpt: Path) -> None:
    record = resolve_model("open_clip", tiny_clip[0], str(private_ckpt))
    data = private_ckpt.read_bytes()
    rewrite(private_ckpt, data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(UserError, match="changed since the collection was indexed"):
        load(record)
    rewrite(private_ckpt, data + b"\0")
    with pytest.raises(UserError, match="changed since"):
        load(record)
    rewrite(private_ckpt, data)  # the same bytes again, only touched: accepted
    assert load(record).dim == 64


def test_load_refuses_a_missing_checkpoint(tiny_clip: tuple[str, str], private_ckpt: Path) -> None:
    record = resolve_model("open_clip", tiny_clip[0], str(private_ckpt))
    private_ckpt.unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        load(record)


# naming errors --------------------------------------------------------------------------------


def test_unknown_architecture_lists_known_ones() -> None:
    import open_clip

    with pytest.raises(ModelLoadError) as info:
        resolve_model("open_clip", "ViT-Z-99", "laion2b_s34b_b79k")
    message = str(info.value)
    assert "'ViT-Z-99' is not an open_clip architecture" in message
    assert open_clip.list_models()[0] in message and "known ones include" in message
    assert "\n" not in message


def test_unknown_tag_lists_tags() -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_model("open_clip", "ViT-B-32", "laion9000")
    message = str(info.value)
    assert "'laion9000' is not a tag of ViT-B-32" in message
    assert "laion2b_s34b_b79k" in message and "openai" in message


@pytest.mark.parametrize("pretrained", ["/no/such/weights.pt", "./missing.bin", "gone.safetensors", "x/y"])
def test_missing_checkpoint_path(pretrained: str) -> None:
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        resolve_model("open_clip", "ViT-B-32", pretrained)


def test_config_json_needs_weights(tiny_clip: tuple[str, str], tmp_path: Path) -> None:
    config = tiny_clip[0]
    for pretrained in (None, ""):
        with pytest.raises(ModelLoadError, match="no weights given") as info:
            resolve_model("open_clip", config, pretrained)
        assert "--clip-pretrained" in str(info.value)
    with pytest.raises(ModelLoadError, match="is a config file: give its weights as a file path"):
        resolve_model("open_clip", config, "laion2b_s34b_b79k")
    with pytest.raises(ModelLoadError, match="config file not found"):
        resolve_model("open_clip", str(tmp_path / "nope.json"), tiny_clip[1])


def test_local_dir_needs_a_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no open_clip_config.json"):
        resolve_model("open_clip", f"local-dir:{tmp_path}", None)
    (tmp_path / "open_clip_config.json").write_text("{}")
    record = resolve_model("open_clip", str(tmp_path), None)
    assert record["model"] == f"local-dir:{tmp_path}" and record["identity"].startswith("local-dir:")


def test_names_resolve_without_network_or_weights() -> None:
    assert resolve_model("open_clip", "ViT-B-32", "laion2b_s34b_b79k")["identity"] == "ViT-B-32|laion2b_s34b_b79k"
    hub = resolve_model("open_clip", "ViT-B-32", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert hub["identity"] == hub["model"] == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


# registry and devices -------------------------------------------------------------------------


def test_families_and_unknown_family(monkeypatch: pytest.MonkeyPatch) -> None:
    assert families() == ["clap", "open_clip"]
    with pytest.raises(UserError, match=r"unknown encoder family 'whisper'; known: clap, open_clip"):
        resolve_model("whisper", "x", None)
    with pytest.raises(UserError, match="known: clap, open_clip"):
        load_encoder("whisper", {}, "cpu")
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))
    monkeypatch.setattr(registry, "_RESOLVERS", dict(registry._RESOLVERS))
    register_family("fake", resolve=lambda m, p: {"family": "fake", "model": m}, load=lambda r, d: r)  # type: ignore[arg-type,return-value]
    assert families() == ["clap", "fake", "open_clip"]
    assert resolve_model("fake", "m", None) == {"family": "fake", "model": "m"}
    with pytest.raises(UserError, match="known: clap, fake, open_clip"):
        resolve_model("nope", "m", None)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
        assert resolve_device("auto") == "cuda"
    else:
        for device in ("cuda", "cuda:0"):
            with pytest.raises(UserError, match="CUDA is not available") as info:
                resolve_device(device)
            assert "--device cpu" in str(info.value)
        assert resolve_device("auto") == "cpu"


# offline --------------------------------------------------------------------------------------

OFFLINE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from xmodal.encoders import load_encoder, resolve_model
    from xmodal.errors import ModelLoadError
    record = resolve_model("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    start = time.monotonic()
    try:
        load_encoder("open_clip", record, "cpu")
        out = {"error": None}
    except ModelLoadError as exc:
        out = {"error": type(exc).__name__, "message": str(exc)}
    out["seconds"] = time.monotonic() - start
    print("RESULT " + json.dumps(out))
""")


def test_default_tag_offline_fails_fast(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache / "hf"), "XDG_CACHE_HOME": str(cache),
           "TORCH_HOME": str(cache / "torch"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["error"] == "ModelLoadError"
    assert "--clip-pretrained" in result["message"]
    assert "ViT-B-32/laion2b_s34b_b79k" in result["message"]
    assert "\n" not in result["message"]
    assert result["seconds"] < 60
    downloaded = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    assert downloaded == []


def test_text_encoding_over_real_tokens_equals_the_full_context(encoder: Encoder) -> None:
    """Short queries run only their own tokens through the causal text tower: same vectors as 77."""
    import torch

    texts = ["boots", "red leather ankle boots with a low heel", "word " * 120, ""]
    model: Any = encoder._model  # type: ignore[attr-defined]
    tokens = encoder._tokenizer(texts)  # type: ignore[attr-defined]
    with torch.inference_mode():
        full = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1).numpy()
    np.testing.assert_allclose(encoder.embed_texts(texts), full, atol=1e-5)
    # one short query is cut to its own length: the trimmed path really ran
    calls: list[int] = []
    original = model.transformer.forward
    model.transformer.forward = lambda x, **kw: calls.append(x.shape[1]) or original(x, **kw)
    try:
        encoder.embed_texts(["boots"])
    finally:
        del model.transformer.forward
    assert calls == [3]  # start-of-text, "boots", end-of-text


def test_loading_skips_the_random_init_and_gives_the_checkpoints_model(tiny_clip):
    """The encoder builds the model without drawing random weights (the checkpoint overwrites them all):
    its vectors are those of the model open_clip loads the ordinary way, and torch's init is itself again."""
    import open_clip

    init_before = {name: getattr(torch.nn.init, name) for name in ("uniform_", "normal_", "kaiming_uniform_")}
    enc = load(resolve_model("open_clip", *tiny_clip))
    assert {name: getattr(torch.nn.init, name) for name in init_before} == init_before
    texts = ["a red bicycle", "waves on a beach at night"]
    ours = enc.embed_texts(texts)
    name = Path(tiny_clip[0]).stem
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=tiny_clip[1], weights_only=True)
    model.eval()
    with torch.inference_mode():
        plain = model.encode_text(open_clip.get_tokenizer(name)(texts)).numpy()
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, plain, atol=1e-5)
    probe = torch.empty(4)
    assert torch.nn.init.ones_(probe).eq(1).all()  # init works again after the load
