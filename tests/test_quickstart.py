"""scripts/quickstart.sh as a newcomer runs it: the demo first, then their own folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, load_script, write_photos


@pytest.mark.slow  # two runs of the script: subprocesses, a CLAP model
def test_demo_then_a_real_run_with_another_model(tmp_path):
    """The demo's random-weights models live in their own collection, so the next run (another model, the
    default collection) indexes and searches instead of failing with a model mismatch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(tmp_path / "home"), XMODAL_PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    script = str(ROOT / "scripts" / "quickstart.sh")
    demo = subprocess.run([script, "--demo"], env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "xmodal search --collection demo" in demo.stdout

    model, ckpt = load_script("make_tiny_clip").make_clip(tmp_path / "mine", seed=1)  # other weights
    photos = tmp_path / "Pictures"
    write_photos(photos, 5)
    env.update(XMODAL_CLIP_MODEL=str(model), XMODAL_CLIP_PRETRAINED=str(ckpt))
    real = subprocess.run([script, str(photos)], env=env, capture_output=True, text=True, timeout=600)
    assert real.returncode == 0, real.stderr[-3000:]
    assert "xmodal search --collection media" in real.stdout and "photo_0000.jpg" in real.stdout
