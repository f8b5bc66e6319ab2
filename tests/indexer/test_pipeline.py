"""The indexing pipeline in-process: worker deaths, crashes at each commit point, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import Crash, CrashOnWidth, crash_once_at, photo, write_photos

from xmodal.encoders import load_encoder, resolve_model
from xmodal.indexer.decode import DecodeConfig, DecodeTask, ImagePrep
from xmodal.indexer.pipeline import DecodePool, index_sources
from xmodal.media.types import MediaLimits
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import STATUS_DELETED, Catalog


@pytest.mark.slow  # subprocesses and worker processes
def test_a_worker_that_dies_costs_only_its_own_file(settings, tmp_path):
    paths = write_photos(tmp_path / "m", 40)
    poison = tmp_path / "m" / "poison.jpg"
    photo(5, size=(133, 100)).save(poison)
    paths.insert(17, poison)
    record = resolve_model("open_clip", settings.clip_model, settings.clip_pretrained)
    enc = load_encoder("open_clip", record, "cpu")
    config = DecodeConfig(MediaLimits.from_settings(settings), {"image": ImagePrep(CrashOnWidth(enc.image_transform(), 133), 64)})
    tasks = [DecodeTask(i, str(p), "image", None) for i, p in enumerate(paths)]
    pool = DecodePool(1)  # one worker (each start imports torch): the other chunks in flight still break with it
    try:
        out = list(pool.decode(tasks, config, max_inflight=4))
    finally:
        pool.close()
    assert [d.item_id for d in out if d.error is None] == [i for i in range(len(paths)) if i != 17]
    (dead,) = [d for d in out if d.error is not None]
    assert dead.item_id == 17 and "crashed" in dead.error
    assert len(out) == len(paths)


def _search_all(settings, collection: str, n: int) -> list[tuple[str, float]]:
    s = Searcher(settings, collection)
    try:
        res = s.search(text="anything", k=n)
        return [(r.uri, round(r.score, 5)) for r in res]
    finally:
        s.close()


@pytest.mark.parametrize("point", ["after-scan", "before-shard-write", "before-shard-commit", "after-shard-commit",
                                   "before-index-write", "before-publish"])
@pytest.mark.backends  # the catalog's SQL matters here
def test_crash_at_any_commit_point_then_rerun_finishes_exactly_once(settings, tmp_path, point):
    media = tmp_path / "m"
    write_photos(media, 30)
    settings = settings.model_copy(update={"shard_rows": 8})  # several shards: crash between them
    with pytest.raises(Crash):
        index_sources(settings, [media], "c", progress=False, crash_at=crash_once_at(point))
    summary = index_sources(settings, [media], "c", progress=False)
    assert summary.failed == 0

    catalog = Catalog(settings.resolved_database_url)
    cid = catalog.collection_id("c")
    live = catalog.live_vectors(cid, "clip")
    assert sorted(i for i, *_ in live) == sorted(catalog.item_states(cid)[str(p)].id for p in media.iterdir())
    assert len({i for i, *_ in live}) == 30  # each item exactly once
    published = catalog.published_index(cid, "clip")
    assert published is not None and published.n_vectors == 30
    catalog.close()
    # the same results as a run that was never interrupted
    clean = settings.model_copy(update={"home": tmp_path / "clean",
                                        "database_url": f"sqlite:///{tmp_path / 'clean.sqlite'}"})
    index_sources(clean, [media], "c", progress=False)
    assert _search_all(settings, "c", 30) == _search_all(clean, "c", 30)


def test_searcher_refresh_swaps_in_a_newly_published_version(settings, tmp_path):
    media = tmp_path / "m"
    write_photos(media, 10)
    index_sources(settings, [media], "c", progress=False)
    searcher = Searcher(settings, "c")
    assert len(searcher.search(text="x", k=50)) == 10
    write_photos(media, 5, start=10)
    index_sources(settings, [media], "c", progress=False)
    assert len(searcher.search(text="x", k=50)) == 10  # still the loaded version
    assert searcher.refresh() is True and searcher.refresh() is False
    hits = searcher.search(image=media / "photo_0012.jpg", k=1)
    assert hits[0].uri == str(media / "photo_0012.jpg")
    assert len(searcher.search(text="x", k=50)) == 15
    searcher.close()


def test_search_looks_past_many_hidden_items(settings, tmp_path):
    media = tmp_path / "m"
    write_photos(media, 60)
    index_sources(settings, [media], "c", progress=False)
    searcher = Searcher(settings, "c")
    query = media / "photo_0000.jpg"
    ranked = searcher.search(image=query, k=60)
    catalog = Catalog(settings.resolved_database_url)
    catalog.set_status([r.id for r in ranked[:40]], STATUS_DELETED)  # hide the 40 best matches
    catalog.close()
    after = searcher.search(image=query, k=10)
    assert [r.id for r in after] == [r.id for r in ranked[40:50]]
    searcher.close()


def test_changed_content_with_same_size_and_mtime_is_caught_by_nothing_but_is_by_rehash(settings, tmp_path):
    """Size+mtime is the fast path; a file rewritten with the same size and mtime keeps its old vector
    until its stat changes. This documents the rsync-style trade-off and that a stat change is enough."""
    media = tmp_path / "m"
    (a,) = write_photos(media, 1)
    index_sources(settings, [media], "c", progress=False)
    st = a.stat()
    photo(50).save(a)
    import os

    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    summary = index_sources(settings, [media], "c", progress=False)
    assert summary.embedded == 1
    s = Searcher(settings, "c")
    vec = s.item_vector(s.search(image=a, k=1)[0].id)
    assert np.allclose(vec, s.image_vector(Path(a)), atol=1e-5)
    s.close()


def test_deleting_every_file_publishes_an_empty_version(settings, tmp_path):
    media = tmp_path / "m"
    paths = write_photos(media, 5)
    index_sources(settings, [media], "c", progress=False)
    for p in paths:
        p.unlink()
    summary = index_sources(settings, [media], "c", progress=False)
    assert summary.deleted == 5 and summary.index["clip"]["built"] is True and summary.index["clip"]["vectors"] == 0
    s = Searcher(settings, "c")
    assert s.search(text="anything", k=5) == []
    s.close()


_INDEX_TWICE = """
import os, stat, sys
from pathlib import Path
from xmodal.cli import main
locked, home, argv = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
assert main(argv) == 0  # the first run also imports everything while the interpreter's files are readable
os.chmod(locked, 0)
if os.geteuid() == 0:  # root lists anything: become nobody, who may write the catalog but not list `locked`
    for path in [home, *home.rglob("*")]:
        os.chmod(path, os.stat(path).st_mode | stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
sys.exit(main(argv))
"""


def test_a_folder_that_cannot_be_listed_keeps_its_items(tiny_clip):
    """Permissions or a network mount gone away must not read as 'every file in it was deleted'."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    top = Path(tempfile.mkdtemp(dir="/tmp"))
    locked = top / "media" / "locked"
    try:
        os.chmod(top, 0o755)
        write_photos(top / "media" / "open", 3)
        write_photos(locked, 4, start=10)
        home = top / "home"
        (top / "model").mkdir()
        model = [shutil.copy(src, top / "model") for src in tiny_clip]  # readable by nobody, unlike tmp_path
        argv = ["index", str(top / "media"), "-c", "c", "--home", str(home), "--no-progress", "--json",
                "--clip-model", model[0], "--clip-pretrained", model[1]]
        done = subprocess.run([sys.executable, "-c", _INDEX_TWICE, str(locked), str(home), *argv],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        decoder = json.JSONDecoder()
        first, end = decoder.raw_decode(done.stdout)
        second, _ = decoder.raw_decode(done.stdout[end:].lstrip())
        assert first["ok"] == 7
        assert second["deleted"] == 0 and second["unlisted"] == [str(locked)]
        assert second["totals"] == {"ok": 7}
    finally:
        if locked.exists():
            os.chmod(locked, 0o755)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.backends  # the catalog's SQL matters here
def test_two_runs_on_one_collection_never_interleave(settings, tmp_path):
    import subprocess
    import sys

    from xmodal.errors import UserError
    from xmodal.indexer.lock import CollectionBusy, collection_lock

    media = tmp_path / "m"
    write_photos(media, 3)
    holder = subprocess.Popen(  # another process holds the lock, as a running indexer would
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from xmodal.indexer.lock import "
         "collection_lock\nwith collection_lock(Path(sys.argv[1]), 'c'):\n print('held', flush=True); time.sleep(60)",
         str(settings.home)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(CollectionBusy, match=rf"pid {holder.pid}"):
            index_sources(settings, [media], "c", progress=False)
        from xmodal.cli import EXIT_BUSY, main  # a scheduler sees "busy, try later", not a failure

        assert main(["index", str(media), "-c", "c", "--no-progress", "--home", str(settings.home),
                     "--database-url", settings.resolved_database_url]) == EXIT_BUSY == 75
        index_sources(settings, [media], "other", progress=False)  # another collection is free
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, no stale lock remains
        holder.wait()
    assert index_sources(settings, [media], "c", progress=False).embedded == 3
    with pytest.raises(UserError, match="invalid collection name"), collection_lock(settings.home, "../escape"):
        pass
    assert not (settings.home / "escape.lock").exists()


@pytest.mark.backends  # the catalog's SQL matters here
def test_runs_on_other_machines_are_held_off_by_the_catalog(settings, tmp_path):
    """Two data dirs (two machines) on one PostgreSQL catalog: the advisory lock keeps a second run out,
    and a run holding it that dies releases it. SQLite catalogs live in one data dir: the file lock is
    the whole story there."""
    import subprocess
    import sys

    from xmodal.indexer.lock import CollectionBusy

    media = tmp_path / "m"
    write_photos(media, 2)
    url = settings.resolved_database_url
    other_machine = settings.model_copy(update={"home": tmp_path / "other-home"})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from xmodal.indexer.lock import "
         "collection_lock\nwith collection_lock(Path(sys.argv[1]), 'c', sys.argv[2]):\n print('held', flush=True); "
         "time.sleep(60)", str(tmp_path / "holder-home"), url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        if url.startswith("postgresql"):
            with pytest.raises(CollectionBusy, match="another machine"):
                index_sources(other_machine, [media], "c", progress=False)
        else:
            assert index_sources(other_machine, [media], "c", progress=False).embedded == 2
    finally:
        holder.kill()
        holder.wait()
    import time

    deadline = time.monotonic() + 30
    while True:  # the server notices the dead connection and drops its session lock
        try:
            summary = index_sources(other_machine, [media], "c", progress=False)
            break
        except CollectionBusy:
            assert time.monotonic() < deadline, "the killed holder's advisory lock was never released"
            time.sleep(0.2)
    assert summary.scanned == 2
