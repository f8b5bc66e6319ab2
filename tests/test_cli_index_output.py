"""What `xmodal index` says while and after it works, as a newcomer reads it: progress that counts, a
summary that agrees with the collection's totals, files it skipped, and a missing model said once."""

from __future__ import annotations

import json

import pytest
from helpers import cli_json, write_photos, write_texts

from xmodal.cli import main


@pytest.fixture
def env(settings, monkeypatch):
    monkeypatch.setenv("XMODAL_HOME", str(settings.home))
    monkeypatch.setenv("XMODAL_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("XMODAL_CLIP_MODEL", settings.clip_model)
    monkeypatch.setenv("XMODAL_CLIP_PRETRAINED", settings.clip_pretrained)
    monkeypatch.setenv("XMODAL_BATCH_SIZE", "16")
    return settings


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
    for name in ("a.m4a", "b.m4a", "c.M4A", "notes.docx", "clip.mp4"):
        (media / name).write_bytes(b"not indexed")
    (media / ".DS_Store").write_bytes(b"\0")  # hidden files are nobody's media: not counted
    report = tmp_path / "run.json"
    code, out, _ = run(capsys, ["index", str(media), "-c", "shop", "--no-progress", "--report", str(report)])
    assert code == 0
    assert "skipped: 3 .m4a, 1 .docx, 1 .mp4 (not indexed: unsupported type)" in out, out
    assert json.loads(report.read_text())["skipped"] == {".m4a": 3, ".docx": 1, ".mp4": 1}
    summary = cli_json(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    assert summary["skipped"] == {".m4a": 3, ".docx": 1, ".mp4": 1} and summary["scanned"] == 2


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
