"""The CLAP family through the path a user's folder takes: resolve, load, embed; and its errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import sound

from xmodal.encoders import clap, load_encoder, resolve_model
from xmodal.errors import ModelLoadError, UserError
from xmodal.media.audio import decode_audio


@pytest.fixture(scope="module")
def encoder(tiny_clap):
    return load_encoder("clap", resolve_model("clap", tiny_clap, None), "cpu")


def test_a_saved_folder_resolves_to_its_hashes_and_loads(tiny_clap, encoder):
    record = resolve_model("clap", tiny_clap, None)
    assert record["family"] == "clap" and record["model"] == str(Path(tiny_clap).absolute())
    assert record["identity"].startswith("clap-dir|sha256:") and len(record["checkpoint"]["sha256"]) == 64
    assert resolve_model("clap", f"local-dir:{tiny_clap}", None)["identity"] == record["identity"]
    assert encoder.space == "clap" and encoder.modalities == {"audio", "text", "video"} and encoder.dim == 48  # a video: its sound


def test_text_and_audio_vectors_are_unit_length_and_deterministic(encoder):
    texts = encoder.embed_texts(["glass shattering", "a dog barking", "glass shattering"])
    assert texts.shape == (3, 48) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    assert np.allclose(texts[0], texts[2], atol=1e-6) and not np.allclose(texts[0], texts[1], atol=1e-3)
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, sound(3, 12.0), 48_000, format="WAV")
    spec = encoder.audio_spec()
    assert spec.sample_rate == 48_000 and spec.window_s == 10.0
    runs = [decode_audio(buf.getvalue(), spec, encoder.audio_transform()) for _ in range(2)]
    assert runs[0].spans == [(0.0, 10.0), (2.0, 12.0)]
    vecs = [encoder.embed_audio(r.windows) for r in runs]
    assert vecs[0].shape == (2, 48) and np.array_equal(vecs[0], vecs[1])  # no random crop anywhere
    pooled = clap.pool_windows(vecs[0])
    assert abs(float(np.linalg.norm(pooled)) - 1) < 1e-5
    assert np.allclose(pooled, (vecs[0].mean(0) / np.linalg.norm(vecs[0].mean(0))), atol=1e-6)


def test_a_folder_whose_weights_changed_is_refused(tiny_clap, tmp_path):
    copy = tmp_path / "clap"
    shutil.copytree(tiny_clap, copy)
    record = resolve_model("clap", str(copy), None)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="changed since the collection was indexed"):
        load_encoder("clap", record, "cpu")
    shutil.rmtree(copy)
    with pytest.raises(ModelLoadError, match="CLAP folder .* is missing"):
        load_encoder("clap", record, "cpu")


def test_bad_names_fail_with_the_flag_to_use(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a CLAP folder"):
        resolve_model("clap", str(tmp_path / "empty"), None)
    with pytest.raises(ModelLoadError, match="no such folder"):
        resolve_model("clap", str(tmp_path / "missing" / "clap"), None)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as here: no network, nothing cached
    with pytest.raises(ModelLoadError, match="--audio-model DIR"):
        resolve_model("clap", "xmodal-tests/no-such-clap", None)


def test_without_the_audio_extra_the_error_names_it(tiny_clap, monkeypatch):
    monkeypatch.setattr(clap, "audio_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"pip install 'xmodal\[audio\]'"):
        resolve_model("clap", tiny_clap, None)
