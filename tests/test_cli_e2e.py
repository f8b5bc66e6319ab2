"""End to end through the command line, as a user runs it, on SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, free_port, photo, serving, write_photos, write_texts
from PIL import Image

from xmodal.cli import main

TEXTS = {
    "boots.txt": "Red leather ankle boots with a low heel.",
    "beach.md": "# Beach day\n\nWaves breaking on a sandy shore under a blue sky.",
    "kettle.txt": "A stainless steel electric kettle, 1.7 litres.",
}


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    write_photos(root / "photos", 40)
    write_photos(root / "photos" / "png", 4, start=100, ext="png")
    write_texts(root / "notes", TEXTS)
    return root


def index(capsys, media: Path, *extra: str) -> dict:
    return cli_json(capsys, ["index", str(media), "--collection", "shop", "--no-progress", *extra])


def search(capsys, *args: str) -> list[dict]:
    return cli_json(capsys, ["search", "--collection", "shop", *args])["results"]


@pytest.mark.backends  # the catalog's SQL matters here
def test_index_then_search_by_image_text_and_item(env, media, capsys):
    summary = index(capsys, media)
    assert summary["scanned"] == 47 and summary["ok"] == 47 and summary["failed"] == 0
    assert summary["index"]["clip"]["vectors"] == 47 and summary["index"]["clip"]["built"] is True

    target = media / "photos" / "photo_0007.jpg"
    results = search(capsys, "--image", str(target), "-k", "5")
    assert results[0]["uri"] == str(target)
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert {"id", "uri", "modality", "score", "metadata", "space"} <= results[0].keys()
    assert results[0]["metadata"]["width"] == 160

    texts = search(capsys, "--text", "red leather boots", "--target", "text", "-k", "10")
    assert {r["modality"] for r in texts} == {"text"} and len(texts) == 3
    images = search(capsys, "--text", "a photo", "--target", "image", "-k", "7")
    assert len(images) == 7 and {r["modality"] for r in images} == {"image"}

    item_id = results[0]["id"]
    similar = search(capsys, "--item", str(item_id), "-k", "3")
    assert item_id not in [r["id"] for r in similar] and len(similar) == 3


def test_plain_output_lists_ranked_results(env, media, capsys):
    index(capsys, media)
    capsys.readouterr()
    assert main(["search", "-c", "shop", "--image", str(media / "photos" / "photo_0002.jpg"), "-k", "2"]) == 0
    header, *rows, legend = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:3] == ["rank", "relev.", "score"] and legend.startswith("(lists of several targets")
    assert len(rows) == 2 and rows[0].split()[0] == "1" and "photo_0002.jpg" in rows[0]
    assert float(rows[0].split()[1]) > float(rows[1].split()[1])  # ranked by relevance


def test_resized_copy_finds_its_original(env, media, capsys, tmp_path):
    index(capsys, media)
    for i in (3, 11, 25):
        original = media / "photos" / f"photo_{i:04d}.jpg"
        copy = tmp_path / f"copy_{i}.png"
        img = Image.open(original)
        img.resize((img.width * 3 // 5, img.height * 3 // 5), Image.Resampling.LANCZOS).save(copy)
        assert search(capsys, "--image", str(copy), "-k", "3")[0]["uri"] == str(original)


def test_rerun_on_unchanged_sources_embeds_nothing(env, media, capsys):
    first = index(capsys, media)
    shards = sorted((env.home / "collections" / "shop" / "shards").rglob("*.parquet"))
    second = index(capsys, media)
    assert second["embedded"] == 0 and second["new"] == 0 and second["unchanged"] == 47
    assert second["index"]["clip"]["built"] is False and second["index"]["clip"]["version"] == first["index"]["clip"]["version"]
    assert sorted((env.home / "collections" / "shop" / "shards").rglob("*.parquet")) == shards
    # touching a file (new mtime, same bytes) re-hashes it but does not re-embed it
    os.utime(media / "photos" / "photo_0001.jpg", ns=(1, 1))
    third = index(capsys, media)
    assert third["embedded"] == 0 and third["unchanged"] == 47


def test_changed_file_is_reembedded_and_deleted_file_disappears(env, media, capsys):
    index(capsys, media)
    changed = media / "photos" / "photo_0005.jpg"
    before = search(capsys, "--image", str(changed), "-k", "1")[0]
    photo(999).save(changed)  # new content under the same name
    deleted = media / "photos" / "photo_0006.jpg"
    deleted_id = search(capsys, "--image", str(deleted), "-k", "1")[0]["id"]
    deleted.unlink()

    summary = index(capsys, media)
    assert summary["embedded"] == 1 and summary["deleted"] == 1 and summary["index"]["clip"]["built"] is True
    after = search(capsys, "--image", str(changed), "-k", "1")[0]
    assert after["uri"] == str(changed) and after["id"] == before["id"]  # ids are stable
    assert after["score"] == pytest.approx(1.0, abs=1e-4)
    everything = search(capsys, "--text", "anything", "-k", "100")
    assert deleted_id not in {r["id"] for r in everything} and len(everything) == 46

    stats = cli_json(capsys, ["stats", "--collection", "shop"])
    assert stats["items"]["status"].get("deleted") == 1 and stats["items"]["status"]["ok"] == 46

    # the file comes back: same id again
    photo(6).save(deleted)
    index(capsys, media)
    assert search(capsys, "--image", str(deleted), "-k", "1")[0]["id"] == deleted_id


@pytest.mark.backends  # the catalog's SQL matters here
def test_a_deleted_source_file_is_hidden_before_any_rebuild(env, media, capsys):
    """Search hydrates from the catalog: an item marked deleted never shows, whatever the index holds."""
    from xmodal.storage.catalog import STATUS_DELETED, Catalog

    index(capsys, media)
    hit = search(capsys, "--image", str(media / "photos" / "photo_0009.jpg"), "-k", "1")[0]
    catalog = Catalog(env.database_url)
    catalog.set_status([hit["id"]], STATUS_DELETED)
    catalog.close()
    assert hit["id"] not in {r["id"] for r in search(capsys, "--text", "x", "-k", "100")}


def write_bad_files(root: Path) -> dict[str, str]:
    """Every kind of damage, and the words its failure reason must contain."""
    root.mkdir(parents=True, exist_ok=True)
    good = root / "good.jpg"
    photo(1).save(good)
    data = good.read_bytes()
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes-named.png").write_text("this is not an image at all\n")
    (root / "noise.webp").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    Image.new("1", (12_000, 12_000)).save(root / "bomb.png")  # 144 Mpx, a few KB on disk
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (root / "blank.md").write_text("   \n\n")
    os.symlink(root / "missing-target.jpg", root / "dangling.jpg")
    os.mkfifo(root / "pipe.jpg")
    (root / "folder.jpg").mkdir()  # a directory with a media name is not a file: skipped
    os.symlink(root, root / "loop")  # a symlink loop must not hang the scan
    return {
        "empty.jpg": "empty", "truncated.jpg": "truncated", "notes-named.png": "not a recognised image",
        "noise.webp": "not a recognised image", "bomb.png": "too large", "latin1.txt": "utf-8",
        "blank.md": "empty", "dangling.jpg": "broken symlink", "pipe.jpg": "not a regular file",
    }


def test_every_kind_of_bad_file_is_recorded_and_the_run_goes_on(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XMODAL_MAX_IMAGE_PIXELS", "100000000")
    root = tmp_path / "bad"
    expected = write_bad_files(root)
    summary = cli_json(capsys, ["index", str(root), "--collection", "shop", "--no-progress"], code=3)
    assert summary["ok"] == 1 and summary["failed"] == len(expected)
    stats = cli_json(capsys, ["stats", "--collection", "shop"])
    reasons = {Path(uri).name: g["reason"] for g in stats["failed"]["by_reason"] for uri in g["examples"]}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words.lower() in reasons[name].lower(), (name, reasons[name])
    assert stats["items"]["status"] == {"ok": 1, "failed": len(expected)}
    # an unchanged broken file is not retried; --retry-failed tries again
    again = cli_json(capsys, ["index", str(root), "--collection", "shop", "--no-progress"])
    assert again["embedded"] == 0 and again["failed"] == 0 and again["unchanged"] == len(expected) + 1
    fixed = root / "truncated.jpg"
    photo(77).save(fixed)
    third = cli_json(capsys, ["index", str(root), "--collection", "shop", "--no-progress"])
    assert third["embedded"] == 1


def test_odd_file_names(env, tmp_path, capsys):
    root = tmp_path / "odd"
    root.mkdir()
    names = ["with space.jpg", "ünïcödé 写真.JPG", "new\nline.png", "percent%20and#hash?.jpeg", "-dash.gif",
             ".hidden.bmp", "semi;colon'quote\".tiff"]
    for i, name in enumerate(names):
        photo(200 + i).save(root / name)
    raw = os.fsencode(str(root)) + b"/bad-\xff-bytes.jpg"
    photo(300).save(raw.decode("utf-8", "surrogateescape"))
    summary = cli_json(capsys, ["index", str(root), "--collection", "shop", "--no-progress"])
    assert summary["ok"] == len(names) + 1 and summary["failed"] == 0
    for name in names:
        assert search(capsys, "--image", str(root / name), "-k", "1")[0]["uri"] == str(root / name)
    hit = search(capsys, "--image", os.fsdecode(raw), "-k", "1")[0]
    assert hit["uri"].startswith("file://") and hit["uri"].endswith("bad-%FF-bytes.jpg")


def test_ivfpq_above_the_threshold_agrees_with_exact_search(env, tmp_path, capsys, monkeypatch):
    root = tmp_path / "many"
    write_photos(root, 260)
    exact = cli_json(capsys, ["index", str(root), "--collection", "exact", "--no-progress"])
    monkeypatch.setenv("XMODAL_EXACT_THRESHOLD", "100")
    approx = cli_json(capsys, ["index", str(root), "--collection", "approx", "--no-progress"])
    assert exact["index"]["clip"]["kind"] == "flat" and approx["index"]["clip"]["kind"] == "ivfpq"
    # a new threshold rebuilds an unchanged collection with the recipe it now calls for
    switched = cli_json(capsys, ["index", str(root), "--collection", "exact", "--no-progress"])
    assert switched["embedded"] == 0 and switched["index"]["clip"]["built"] and switched["index"]["clip"]["kind"] == "ivfpq"
    monkeypatch.setenv("XMODAL_EXACT_THRESHOLD", "1000")
    assert cli_json(capsys, ["index", str(root), "--collection", "exact", "--no-progress"])["index"]["clip"]["kind"] == "flat"
    monkeypatch.setenv("XMODAL_EXACT_THRESHOLD", "100")
    stats = cli_json(capsys, ["stats", "--collection", "approx"])
    part = stats["index"]["clip"]["parts"]["image"]
    assert part["kind"] == "ivfpq" and part["nlist"] >= 2 and part["recall@10"] >= 0.9

    agree = 0
    queries = [root / f"photo_{i:04d}.jpg" for i in range(0, 260, 13)]
    for q in queries:
        copy = tmp_path / "q.png"
        Image.open(q).resize((120, 90)).save(copy)  # a near-duplicate, not the indexed vector itself
        a = cli_json(capsys, ["search", "-c", "exact", "--image", str(copy), "-k", "1"])["results"][0]["uri"]
        b = cli_json(capsys, ["search", "-c", "approx", "--image", str(copy), "-k", "1"])["results"][0]["uri"]
        agree += a == b
    assert agree >= 0.9 * len(queries)


def test_eval_reports_recall_mrr_latency_and_carries_extra_keys(env, media, capsys, tmp_path, monkeypatch):
    index(capsys, media)
    import xmodal.search.engine as engine

    loads = []
    real_load = engine.load_encoder
    monkeypatch.setattr(engine, "load_encoder", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))
    queries = tmp_path / "queries.jsonl"
    lines = [
        {"image": str(media / "photos" / f"photo_{i:04d}.jpg"), "expected": [str(media / "photos" / f"photo_{i:04d}.jpg")],
         "target": "image", "case": f"self-{i}"}
        for i in range(5)
    ]
    lines.append({"text": "boots", "expected": [str(media / "notes" / "boots.txt")], "target": "text", "case": "t"})
    queries.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    report = cli_json(capsys, ["eval", "--collection", "shop", "--queries", str(queries), "-k", "3", "--no-progress"])
    assert report["queries"] == 6
    assert {"recall@1", "recall@k", "mrr", "queries", "latency_ms_p50", "per_query"} <= report.keys()
    assert report["recall@k"] == 1.0  # only 3 texts: with k=3 the text query must hit
    assert report["recall@1"] >= 5 / 6 and report["mrr"] >= report["recall@1"]
    assert [p["case"] for p in report["per_query"]] == [line["case"] for line in lines]
    assert all(p["rank"] == 1 for p in report["per_query"][:5])
    assert len(loads) == 1  # one model load for all the queries


def test_stats_reports_counts_spaces_and_index(env, media, capsys, monkeypatch):
    index(capsys, media)
    stats = cli_json(capsys, ["stats", "--collection", "shop"])
    assert stats["items"]["status"] == {"ok": 47}
    assert stats["items"]["modality"] == {"image": 44, "text": 3}
    assert stats["failed"] == {"count": 0, "by_reason": []}
    (space,) = stats["spaces"]
    assert space["name"] == "clip" and space["dim"] == 64 and space["model"] == env.clip_model
    assert stats["index"]["clip"]["version"] == 1 and stats["index"]["clip"]["vectors"] == 47
    assert main(["--device", "cpu", "stats", "--collection", "shop"]) == 0  # the device in words, not a dict
    assert "  device: cpu (torch), FAISS on " in capsys.readouterr().out
    # the command says which catalog it used, on stderr (stdout is the JSON)
    assert capsys.readouterr().err == "" and main(["stats", "-c", "shop", "--json"]) == 0
    assert f"catalog: {env.catalog_label} (collection shop)\n" in capsys.readouterr().err
    for argv in (["search", "-c", "shop", "--text", "x", "--json"], ["index", str(media), "-c", "shop", "--json"]):
        assert main(argv) == 0
        assert capsys.readouterr().err.endswith(f"catalog: {env.catalog_label} (collection shop)\n")
    # --home and --database-url work before the command too, and beat the environment
    monkeypatch.setenv("XMODAL_HOME", str(env.home.parent / "elsewhere"))
    monkeypatch.delenv("XMODAL_DATABASE_URL")
    flags = ["--home", str(env.home), "--database-url", env.database_url]
    assert cli_json(capsys, [*flags, "stats", "--collection", "shop"])["items"] == stats["items"]


def test_collection_remembers_its_model(env, media, capsys, tmp_path, monkeypatch):
    index(capsys, media)
    # search needs no model flags: drop them from the environment
    monkeypatch.delenv("XMODAL_CLIP_MODEL")
    monkeypatch.delenv("XMODAL_CLIP_PRETRAINED")
    assert search(capsys, "--text", "kettle", "-k", "1")
    # indexing with other weights into the same collection is refused
    import torch

    other = tmp_path / "other.pt"
    state = torch.load(env.clip_pretrained, weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, other)
    code = main(["index", str(media), "-c", "shop", "--clip-model", env.clip_model, "--clip-pretrained", str(other),
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "indexed with" in err
    # the ways out: another collection, dropping this one, or the recorded model
    assert "-c NEW" in err and "xmodal collections drop shop" in err
    assert f"--clip-model {env.clip_model} --clip-pretrained {env.clip_pretrained}" in err
    assert main(["search", "-c", "shop", "--text", "x", "--clip-pretrained", str(other)]) == 2
    assert "indexed with" in capsys.readouterr().err

    # the checkpoint moves (a data dir copied to another machine): say so, and accept the new place
    moved = tmp_path / "moved.pt"
    os.rename(env.clip_pretrained, moved)
    try:
        assert main(["search", "-c", "shop", "--text", "kettle"]) == 2
        assert "is missing" in capsys.readouterr().err
        assert search(capsys, "--text", "kettle", "-k", "1", "--clip-pretrained", str(moved))
    finally:
        os.rename(moved, env.clip_pretrained)


def test_user_errors_are_one_line_with_status_2(env, media, capsys, tmp_path):
    index(capsys, media)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    cases = [
        (["search", "-c", "nope", "--text", "x"], "no collection named 'nope'"),
        (["search", "-c", "shop", "--item", "999999"], "no item with id 999999"),
        (["search", "-c", "shop", "--image", str(bad)], "cannot use"),
        (["search", "-c", "shop", "--image", str(tmp_path / "missing.jpg")], "cannot use"),
        (["search", "-c", "shop", "--text", "   "], "empty text query"),
        (["index", str(tmp_path / "not-there"), "-c", "shop"], "does not exist"),
        (["index", str(media), "-c", "bad name!"], "invalid collection name"),
        (["eval", "-c", "shop", "--queries", str(tmp_path / "none.jsonl")], "not found"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)


def test_missing_source_deletes_nothing(env, media, capsys, tmp_path):
    index(capsys, media)
    moved = tmp_path / "moved"
    shutil.move(media, moved)
    assert main(["index", str(media), "-c", "shop", "--no-progress"]) == 2
    assert cli_json(capsys, ["stats", "-c", "shop"])["items"]["status"] == {"ok": 47}


@pytest.mark.slow  # subprocesses and worker processes
def test_console_script_offline_default_model_names_the_flag(tmp_path):
    """With no network and no cached weights, the default model fails at once, naming the flag."""
    media = tmp_path / "m"
    write_photos(media, 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XMODAL_HOME=str(tmp_path / "home"))
    xmodal = Path(sys.executable).with_name("xmodal")
    proc = subprocess.run([str(xmodal), "index", str(media), "-c", "demo", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--clip-pretrained" in lines[0] and "laion2b_s34b_b79k" in lines[0]
    assert len(lines[0]) <= 100, lines[0]  # a terminal shows it whole


@pytest.mark.slow  # subprocesses and worker processes
def test_console_script_index_and_search(tiny_clip, tmp_path):
    """The installed `xmodal` script, in a fresh process, with only env settings: the README path."""
    media = tmp_path / "m"
    write_photos(media, 6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(tmp_path / "home"), XMODAL_CLIP_MODEL=tiny_clip[0],
               XMODAL_CLIP_PRETRAINED=tiny_clip[1])
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    run = subprocess.run([xmodal, "index", str(media), "-c", "demo"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ok 6" in run.stdout and "index clip: version 1" in run.stdout
    found = subprocess.run([xmodal, "search", "-c", "demo", "--image", str(media / "photo_0004.jpg"), "--json"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"][0]["uri"] == str(media / "photo_0004.jpg")


def test_bench_reports_both_rates_and_their_ratio(tiny_clip, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("XMODAL_HOME", raising=False)
    report = cli_json(capsys, ["bench", "--images", "8", "--clip-model", tiny_clip[0], "--clip-pretrained",
                               tiny_clip[1], "--work-dir", str(tmp_path)])
    assert report["items"] == 8 and report["failed"] == 0
    e2e, model = report["end_to_end_items_per_s"], report["model_only_items_per_s"]
    assert e2e > 0 and model > 0
    assert report["ratio_end_to_end_over_model"] == pytest.approx(e2e / model, rel=0.02)
    assert list(tmp_path.iterdir()) == []  # scratch data removed


def test_run_report_for_schedulers(env, media, capsys, tmp_path):
    report = tmp_path / "reports" / "run.json"
    assert main(["index", str(media), "-c", "shop", "--no-progress", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["status"] == "ok" and data["ok"] == 47 and data["failed"] == 0
    assert data["seconds"]["total"] > 0 and data["items_per_second"] > 0 and data["totals"] == {"ok": 47}
    assert data["finished_at"] >= data["started_at"]
    assert main(["index", str(tmp_path / "gone"), "-c", "shop", "--report", str(report)]) == 2
    failed = json.loads(report.read_text())
    assert failed["status"] == "error" and "does not exist" in failed["message"]
    assert [p.name for p in report.parent.iterdir()] == ["run.json"]  # no temp file left
    # a run that finishes with failed files: exit 3 (partial), status "partial", the failures listed
    (media / "notes" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code = main(["index", str(media), "-c", "shop", "--no-progress", "--report", str(report)])
    assert code == 3, report.read_text()
    partial = json.loads(report.read_text())
    assert partial["status"] == "partial" and partial["exit_code"] == 3 and partial["failed"] == 1
    assert partial["failures"][0]["uri"].endswith("broken.jpg")


@pytest.mark.slow  # a real `xmodal serve` subprocess
def test_serve_says_where_the_page_and_the_docs_are(env, media, capsys, tmp_path):
    """Once it listens, `xmodal serve` prints the page's and the API docs' URLs, reachable ones when it
    listens on every interface; a port in use is a one-line error that names --port."""
    index(capsys, media)
    log = tmp_path / "serve.log"
    with serving(dict(os.environ), log, "shop") as base:
        lines = [line for line in log.read_text().splitlines() if line.startswith("xmodal:")]
    assert lines == [f"xmodal: serving collection shop at {base}/ (API docs {base}/docs); searches answer once "
                     f"models and indexes are loaded; Ctrl-C stops"]
    with serving(dict(os.environ), log, "shop", host="0.0.0.0") as base:
        text = log.read_text()
    port = base.rsplit(":", 1)[1]
    assert f"at http://127.0.0.1:{port}/ (API docs http://127.0.0.1:{port}/docs)" in text
    assert f"other machines: http://{socket.gethostname()}:{port}/" in text

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port := free_port()))
        busy.listen()
        proc = subprocess.run([str(Path(sys.executable).with_name("xmodal")), "serve", "-c", "shop", "--port",
                               str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"xmodal serve: error: cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr
