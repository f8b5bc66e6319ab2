"""Exactly once after SIGKILL: the indexer, a real `xmodal index` process, is killed (SIGKILL to its
whole process group, decode workers included) at every fault-hook point and at seeded random moments of
its work, 17 times over 500+ real files that change between runs; each time a rerun finishes the job.

After every completed rerun: `verify` finds catalog, shards and index in agreement (every good item
embedded once, in a recorded shard, at the recorded row, with a non-zero vector; the published index
holds each live item once and nothing else; no file that no catalog row names). After every kill: the
previously published version still loads and answers. At the end: search results equal those of an
uninterrupted run over the same files.

Only the killed runs are processes of their own (what a kill must hit); the rerun after each is the same
``index_sources`` called in this process, which spares it the 8-10 s an `xmodal index` process spends
importing torch and open_clip. A random kill lands at a seeded moment of the killed run's work: a timer
started by the fault hook when the scan is done (``XMODAL_FAULT_AT=after-scan+seconds``), within the time a
rerun took.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import photo, write_photos, write_texts

from xmodal.config import Settings
from xmodal.indexer.maintenance import verify
from xmodal.indexer.pipeline import FAULT_ENV, index_sources
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import STATUS_OK, Catalog
from xmodal.storage.layout import Layout

POINTS = ["after-scan", "after-encode-batch", "before-shard-write", "before-shard-commit", "after-shard-commit",
          "before-index-write", "before-publish"]
RANDOM_KILLS = 10  # beside the 7 named points: 17 kills
SEED = 20261123


def _start(env: dict[str, str], media: Path, log: Path, fault: str) -> subprocess.Popen[bytes]:
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    run_env = {**env, FAULT_ENV: fault}
    with log.open("ab") as out:
        return subprocess.Popen([xmodal, "index", str(media), "-c", "shop", "--no-progress"], env=run_env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _killed(proc: subprocess.Popen[bytes]) -> bool:
    """Wait for the run's fault hook to kill it; True when it died by SIGKILL rather than finishing."""
    code = proc.wait(timeout=300)
    # the decode workers share the group: make sure none outlives the kill
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return code == -signal.SIGKILL


def _mutate(media: Path, rnd: random.Random, round_: int) -> None:
    """New files, changed contents and deletions, so that every run has work to be killed in."""
    start = 1000 + 20 * round_
    write_photos(media / "photos", 12, start=start)
    write_texts(media / "notes", {f"note_{start + i}.txt": f"note {round_} {i}: red boots size {i}" for i in range(3)})
    files = sorted(p for p in (media / "photos").iterdir() if p.suffix == ".jpg")
    picked = rnd.sample(files, 6)
    for p in picked[:3]:
        photo(rnd.randrange(10**6)).save(p)  # new content, same name
    for p in picked[3:]:
        p.unlink()


def _check(settings: Settings, media: Path) -> None:
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        report = verify(catalog, Layout(settings.home), "shop")
        assert report.ok, report.problems
        assert report.counts["orphans"] == 0
        cid = catalog.collection_id("shop")
        on_disk = sum(1 for p in media.rglob("*") if p.is_file())
        status = catalog.counts(cid)["status"]
        assert {k: v for k, v in status.items() if k != "deleted"} == {"ok": on_disk}, status
        live = catalog.live_vectors(cid, "clip")
        assert len(live) == on_disk and len({row[0] for row in live}) == on_disk
        # exactly once: an item's rows in the shards are all different contents (a file that changed
        # has its old vector in an older shard); the same content twice would be a duplicate embedding
        ids, vectors = _shard_rows(catalog, settings)
        seen: dict[int, set[bytes]] = {}
        for item_id, vector in zip(ids.tolist(), vectors, strict=True):
            key = np.round(vector, 4).tobytes()
            assert key not in seen.setdefault(item_id, set()), f"item {item_id} embedded twice with one content"
            seen[item_id].add(key)
        assert not np.any(np.linalg.norm(vectors, axis=1) < 0.5), "zero vectors in the shards"
    finally:
        catalog.close()


def _shard_rows(catalog: Catalog, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    from xmodal.storage.shards import read_shard

    cid = catalog.collection_id("shop")
    ids, vecs = [], []
    for shard in catalog.shard_records(cid):
        i, v, _ = read_shard(Layout(settings.home).absolute(shard.path))
        ids.append(i)
        vecs.append(v)
    return np.concatenate(ids), np.concatenate(vecs)


def _serves(settings: Settings) -> None:
    """The published version (if any) loads and answers while a run lies dead."""
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        published = catalog.published_index(catalog.collection_id("shop"), "clip")
    finally:
        catalog.close()
    if published is None:
        return
    searcher = Searcher(settings, "shop")
    try:
        assert searcher.run(text="red boots", k=5).results
    finally:
        searcher.close()


def _results(settings: Settings, queries: list[Path]) -> list[list[tuple[str, float]]]:
    """The vector lists in order; the full-text index's matches of a word as a set (equal scores are ordered
    by item id, and ids differ between a run that was killed and one that was not)."""
    searcher = Searcher(settings, "shop")
    try:
        return [[(r.uri, round(r.score, 4)) for r in searcher.run(image=q, k=10).results] for q in queries] + [
            [(r.uri, round(r.score, 4)) for r in searcher.run(text="red boots size 2", k=10, mode="vector").results],
            sorted((r.uri, round(r.score, 4)) for r in searcher.run(text="2", k=100, mode="lexical").results)]
    finally:
        searcher.close()


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_gives_exactly_once(tiny_clip: tuple[str, str], tmp_path: Path) -> None:
    media = tmp_path / "media"
    write_photos(media / "photos", 480)
    write_texts(media / "notes", {f"note_{i}.txt": f"product {i}: leather boots, size {i % 12}" for i in range(40)})
    home = tmp_path / "home"
    settings = Settings(home=home, clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1], batch_size=8,
                        shard_rows=40, workers=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(home), XMODAL_CLIP_MODEL=tiny_clip[0], XMODAL_CLIP_PRETRAINED=tiny_clip[1],
               XMODAL_BATCH_SIZE="8", XMODAL_SHARD_ROWS="40", XMODAL_WORKERS="1")
    log = tmp_path / "runs.log"
    rnd = random.Random(SEED)
    # a random kill: a seeded fraction of the last rerun's duration after the run's scan (its fault hook's
    # timer fires wherever the run is then)
    plan: list[tuple[str | None, float | None]] = [(p, None) for p in POINTS]
    plan += [(None, rnd.uniform(0.05, 0.9)) for _ in range(RANDOM_KILLS)]
    rnd.shuffle(plan)
    kills = 0
    started = time.monotonic()
    t0 = time.monotonic()
    index_sources(settings, [media], "shop", progress=False)  # the first run indexes all 520 files
    last_run_s = time.monotonic() - t0
    for round_, (fault, fraction) in enumerate(plan):
        _mutate(media, rnd, round_ + 1)
        if _killed(_start(env, media, log, fault or f"after-scan+{fraction * last_run_s:.3f}")):
            kills += 1
            _serves(settings)
        t0 = time.monotonic()
        index_sources(settings, [media], "shop", progress=False)  # the rerun finishes what the kill left
        last_run_s = max(0.5, time.monotonic() - t0)
        _check(settings, media)
    assert kills >= len(plan) - 3, f"only {kills} of {len(plan)} runs were killed (runs finish too fast for the delays)"
    assert sum(1 for p in media.rglob("*") if p.is_file()) >= 500

    # the same files, indexed once without interruption, answer the same
    reference = tmp_path / "reference"
    shutil.copytree(media, reference / "media")
    ref_settings = settings.model_copy(update={"home": reference / "home"})
    index_sources(ref_settings, [reference / "media"], "shop", progress=False)
    queries = sorted((media / "photos").iterdir())[:5]
    got = _results(settings, queries)
    want = [[(uri.replace(str(reference / "media"), str(media)), s) for uri, s in rows]
            for rows in _results(ref_settings, [reference / "media" / "photos" / q.name for q in queries])]
    assert got == want
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        assert catalog.counts(catalog.collection_id("shop"))["status"].get(STATUS_OK, 0) >= 500
    finally:
        catalog.close()
    print(f"{kills} kills over {len(plan)} rounds in {time.monotonic() - started:.0f}s")
