"""What `xmodal index` says while and after it works, as a newcomer reads it: progress that counts, a
summary that agrees with the collection's totals, files it skipped, and a missing model said once."""

from __future__ import annotations

import json

import pytest
from helpers import cli_json, write_photos, write_texts

from xmodal.cli import main


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_scan_progress_counts_the_files_it_scanned(env, tmp_path, capsys):
    media = tmp_path / "m"
    write_photos(media, 12)
    code, _, err = run(capsys, ["index", str(media), "-c", "shop"])
    assert code == 0
    assert "scan: 12 files" in err, err


def test_unchanged_failed_files_are_said_to_be_still_failed(env, tmp_path, capsys):
    media = tmp_path / "m"
    write_photos(media, 3)
    (media / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (media / "empty.png").write_bytes(b"")
    code, _, _ = run(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    assert code == 3
    code, out, _ = run(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    first = out.splitlines()[0]
    assert "unchanged 5 (2 still failed" in first, out
    totals = next(line for line in out.splitlines() if line.startswith("collection now:"))
    assert "failed 2" in totals and "ok 3" in totals
    summary = cli_json(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    assert summary["unchanged"] == 5 and summary["still_failed"] == 2
    assert sum(g["count"] for g in summary["still_failed_reasons"]) == 2


def test_unsupported_files_are_counted_by_extension(env, tmp_path, capsys):
    media = tmp_path / "m"
    write_photos(media, 2)
    for name in ("a.wma", "b.wma", "c.WMA", "notes.docx", "clip.flv"):
        (media / name).write_bytes(b"not indexed")
    (media / ".DS_Store").write_bytes(b"\0")  # hidden files are nobody's media: not counted
    report = tmp_path / "run.json"
    code, out, _ = run(capsys, ["index", str(media), "-c", "shop", "--no-progress", "--report", str(report)])
    assert code == 0
    assert "skipped: 3 .wma, 1 .docx, 1 .flv (not indexed: unsupported type)" in out, out
    assert json.loads(report.read_text())["skipped"] == {".wma": 3, ".docx": 1, ".flv": 1}
    summary = cli_json(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    assert summary["skipped"] == {".wma": 3, ".docx": 1, ".flv": 1} and summary["scanned"] == 2


def test_stats_groups_failures_by_reason(env, tmp_path, capsys):
    media = tmp_path / "m"
    write_photos(media, 1)
    for i in range(5):
        (media / f"empty{i}.png").write_bytes(b"")
    write_texts(media, {"blank.txt": "  \n"})
    run(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    stats = cli_json(capsys, ["stats", "-c", "shop"])
    groups = stats["failed"]["by_reason"]
    assert stats["failed"]["count"] == 6 and [g["count"] for g in groups] == [5, 1]
    assert len(groups[0]["examples"]) == 3 and all(e.endswith(".png") for e in groups[0]["examples"])
    code, out, _ = run(capsys, ["stats", "-c", "shop"])
    assert len([line for line in out.splitlines() if ".png" in line]) == 3, out  # a few examples, not all 5
    assert "5 x empty file" in out and "... and 2 more" in out, out


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, as on a fresh machine without internet."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("XMODAL_AUDIO_MODEL", raising=False)


def test_a_missing_audio_model_is_said_once_before_the_work_and_on_every_rerun(env, offline, tmp_path, capsys):
    from helpers import write_sounds

    media = tmp_path / "m"
    write_photos(media, 2)
    write_sounds(media, 3, seconds=0.5)
    for attempt in range(2):
        code, out, err = run(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
        assert code == 3, (attempt, out, err)
        said = [line for line in err.splitlines() if "laion/clap-htsat-unfused" in line]
        assert len(said) == 1 and len(said[0]) <= 160 and "--audio-model" in said[0], err
        failed = [line for line in out.splitlines() if line.startswith("  failed: ")]
        assert len(failed) == 3 and all(len(line.split(".wav: ")[1]) <= 100 for line in failed), out
        assert any(line.startswith("  warning: audio unavailable: ") for line in out.splitlines()), out
        assert "HF_HUB_OFFLINE" not in out + err
    summary = cli_json(capsys, ["index", str(media), "-c", "shop", "--no-progress"], code=3)
    assert summary["failed"] == 3 and summary["ok"] == 0
    stats = cli_json(capsys, ["stats", "-c", "shop"])
    (group,) = stats["failed"]["by_reason"]
    assert group["count"] == 3 and group["reason"].startswith("audio unavailable: ")


def test_a_missing_default_clip_model_says_what_to_do_in_one_short_line(env, offline, tmp_path, capsys, monkeypatch):
    media = tmp_path / "m"
    write_photos(media, 1)
    monkeypatch.delenv("XMODAL_CLIP_MODEL")
    monkeypatch.delenv("XMODAL_CLIP_PRETRAINED")
    code, _, err = run(capsys, ["index", str(media), "-c", "demo", "--no-progress"])
    assert code == 2
    (line,) = err.splitlines()
    assert len(line) <= 100 and "--clip-pretrained" in line and "laion2b_s34b_b79k" in line, line
    code, _, err = run(capsys, ["-v", "index", str(media), "-c", "demo", "--no-progress"])
    assert code == 2 and "  detail: " in err and "XMODAL_CLIP_PRETRAINED" in err  # the rest, for who asks


@pytest.mark.slow  # a subprocess with decode workers
def test_ctrl_c_keeps_what_was_committed_and_exits_130_without_a_traceback(tiny_clip, tmp_path, capsys, monkeypatch):
    """Ctrl-C in a terminal reaches the whole process group: the run and its decode workers."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time
    from pathlib import Path

    from xmodal.bench import generate_photos

    n = 160
    media = tmp_path / "m"
    generate_photos(media, n, size=(512, 384))
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(home), XMODAL_CLIP_MODEL=tiny_clip[0], XMODAL_CLIP_PRETRAINED=tiny_clip[1],
               XMODAL_WORKERS="2", XMODAL_DECODE_POOL_MIN_BYTES="0", XMODAL_BATCH_SIZE="8", XMODAL_SHARD_ROWS="8")
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    argv = [xmodal, "index", str(media), "-c", "demo", "--no-progress"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    catalog = home / "catalog.sqlite"

    def committed() -> int:
        try:
            with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as db:
                return int(db.execute("select count(*) from items where status = 'ok'").fetchone()[0])
        except sqlite3.Error:
            return 0

    try:
        deadline = time.monotonic() + 240
        while committed() == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finally:  # never leave the run (its own process group) behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    kept = committed()
    assert 0 < kept < n
    for key, value in env.items():  # the rerun: the same command in this process (torch is imported already)
        if key.startswith("XMODAL_"):
            monkeypatch.setenv(key, value)
    code, out, err = run(capsys, [*argv[1:], "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["embedded"] == n - kept and summary["unchanged"] == kept


def test_long_steps_say_what_runs_unless_asked_not_to(env, tiny_clap, tmp_path, capsys, monkeypatch):
    from helpers import write_sounds

    monkeypatch.setenv("XMODAL_AUDIO_MODEL", tiny_clap)
    media = tmp_path / "m"
    write_photos(media, 2)
    write_sounds(media, 2, seconds=0.5)
    code, out, err = run(capsys, ["index", str(media), "-c", "shop", "--json"])
    assert code == 0 and json.loads(out)["ok"] == 4  # machine output stays clean: notes go to stderr
    assert "loading clip model " in err and "loading clap model " in err, err
    assert "aligning audio to the clip space: embedding " in err and "align:" in err, err
    (media / "sound_0000.wav").unlink()
    write_sounds(media, 1, start=5, seconds=0.5)
    code, _, err = run(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    assert code == 0 and [line for line in err.splitlines() if not line.startswith("catalog: ")] == [], err
