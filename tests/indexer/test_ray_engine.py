"""The Ray engine (``--engine ray``) against the local engine, on a real Ray head node started for these
tests: the same items, vectors, shards, indexes and search results; reruns; the CLI; a missing Ray.

The head runs as a subprocess in its own session; teardown kills that session's processes by id and
nothing else (``ray stop`` would stop every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    Crash,
    CrashOnWidth,
    cli_json,
    crash_once_at,
    free_port,
    photo,
    sound,
    write_photos,
    write_sounds,
    write_texts,
    write_video,
)

from xmodal.errors import UserError
from xmodal.indexer import run as run_module
from xmodal.indexer.engines import raydata as ray_engine
from xmodal.indexer.engines.raydata import PoolPlan, plan_pool
from xmodal.indexer.pipeline import index_sources
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import Catalog
from xmodal.storage.shards import read_shard, read_windows

pytestmark = pytest.mark.slow  # a Ray head node and its workers

RAY = Path(sys.executable).with_name("ray")
HEAD_START_SECONDS = 120


def _session_pids(sid: int) -> list[int]:
    """Processes of one session (the head started with ``start_new_session`` leads its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


def _running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _stop_head(proc: subprocess.Popen[bytes]) -> None:
    """Kill the head and every process of its session (Ray workers have their own process groups but
    stay in the session), by id."""
    for pid in [proc.pid, *(p for p in _session_pids(proc.pid) if p != proc.pid)]:
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_running(p) for p in _session_pids(proc.pid)):
        assert time.monotonic() < deadline, "Ray processes of the test head survived SIGKILL"
        time.sleep(0.2)  # the kernel takes a moment to end them


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """The address of a 2-CPU Ray head node that lives for this module's tests."""
    # Ray's unix sockets live under the temp dir, and a socket path has at most 107 characters
    temp = Path(tempfile.mkdtemp(prefix="xr", dir="/tmp"))
    port = free_port()
    ports = [f"--{flag}={free_port()}" for flag in ("dashboard-port", "dashboard-agent-listen-port",
                                                     "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                                     "metrics-export-port")]
    cmd = [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
           f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
           "--node-ip-address=127.0.0.1", *ports]
    log = temp / "head.log"
    # a throwaway local cluster: no token to hand around (recent Ray turns token auth on for `ray start`)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_SECONDS
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed (exit {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)  # polling interval while the head starts
        yield f"127.0.0.1:{port}"
    finally:
        _stop_head(proc)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def av_settings(settings, tiny_clap, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the head: the driver joins it without a token
    return settings.model_copy(update={"audio_model": tiny_clap})


TEXTS = {
    "rain.txt": "rain on a tin roof",
    "boots.txt": "Red leather ankle boots with a low heel.",
    "beach.md": "# Beach day\n\nWaves breaking on a sandy shore.",
}


def _media(root: Path) -> Path:
    """Images, texts, short and long audio clips, and broken files of each kind."""
    write_photos(root / "photos", 24)
    write_photos(root / "photos", 2, start=50, ext="png")
    write_texts(root / "notes", TEXTS)
    write_sounds(root / "sounds", 3, seconds=1.0)
    sf.write(root / "sounds" / "long.wav", sound(9, 23.0), 48_000)  # three windows
    good = (root / "photos" / "photo_0000.jpg").read_bytes()
    (root / "broken").mkdir()
    (root / "broken" / "cut.jpg").write_bytes(good[: len(good) // 3])
    (root / "broken" / "empty.png").write_bytes(b"")
    (root / "broken" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return root


def _home(settings, tmp_path: Path, name: str):
    home = tmp_path / name
    home.mkdir()
    return settings.model_copy(update={"home": home, "database_url": f"sqlite:///{home / 'catalog.sqlite'}"})


def _items(settings) -> dict[str, tuple]:
    catalog = Catalog(settings.resolved_database_url)
    try:
        states = catalog.item_states(catalog.collection_id("c"))
        return {uri: (st.id, st.status, st.reason, st.content_hash, st.size) for uri, st in states.items()}
    finally:
        catalog.close()


def _shard_rows(settings) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every row of every shard the catalog records, by space."""
    catalog = Catalog(settings.resolved_database_url)
    try:
        out: dict[str, list[tuple[int, np.ndarray]]] = {}
        for shard in catalog.shard_records(catalog.collection_id("c")):
            ids, vectors, meta = read_shard(settings.home / shard.path)
            assert meta["space"] == shard.space
            out.setdefault(shard.space, []).extend(zip(ids.tolist(), vectors, strict=True))
        return out
    finally:
        catalog.close()


def _shard_paths(settings) -> set[str]:
    catalog = Catalog(settings.resolved_database_url)
    try:
        return {s.path for s in catalog.shard_records(catalog.collection_id("c"))}
    finally:
        catalog.close()


def _live(settings) -> dict[str, list[tuple[int, str, int]]]:
    """space -> (item id, shard path, row) of every live vector."""
    catalog = Catalog(settings.resolved_database_url)
    try:
        cid = catalog.collection_id("c")
        return {sp: [(i, path, row) for i, _m, _s, row, path in catalog.live_vectors(cid, sp)]
                for sp in ("clip", "clap")}
    finally:
        catalog.close()


def _searches(settings, media: Path) -> list[list[tuple[str, str, float]]]:
    s = Searcher(settings, "c")
    try:
        queries = [{"text": "rain on a roof"}, {"text": "boots", "target": "image"},
                   {"image": media / "photos" / "photo_0003.jpg"}, {"audio": media / "sounds" / "sound_0001.wav"},
                   {"text": "waves", "target": "audio"}]
        return [[(r.uri, r.method, round(r.score, 4)) for r in s.search(**q, k=40)] for q in queries]
    finally:
        s.close()


def test_the_ray_engine_gives_what_the_local_engine_gives(av_settings, ray_head, tmp_path):
    media = _media(tmp_path / "media")
    local = _home(av_settings, tmp_path, "local")
    on_ray = av_settings  # the test's catalog (SQLite, or PostgreSQL where the suite has one)
    a = index_sources(local, [media], "c", progress=False, engine="local")
    b = index_sources(on_ray, [media], "c", progress=False, engine="ray", ray_address=ray_head)

    assert (b.scanned, b.ok, b.embedded, b.failed, b.unchanged) == (a.scanned, a.ok, a.embedded, a.failed, a.unchanged)
    assert a.ok == 24 + 2 + 3 + 4 and a.failed == 3
    assert sorted(b.failures) == sorted(a.failures)
    # the same items: ids, status, failure reason, content hash, size
    items_a, items_b = _items(local), _items(on_ray)
    assert items_b == items_a
    reasons = {Path(uri).name: r for uri, (_i, status, r, *_rest) in items_b.items() if status == "failed"}
    assert set(reasons) == {"cut.jpg", "empty.png", "latin1.txt"}

    rows_a, rows_b = _shard_rows(local), _shard_rows(on_ray)
    live_b = _live(on_ray)
    assert set(rows_b) == set(rows_a) == {"clip", "clap"}
    for space in rows_a:
        # every live item exactly once in the shards (a fresh run: no stale rows either)
        counts = Counter(i for i, _ in rows_b[space])
        assert set(counts.values()) == {1}
        assert set(counts) == {i for i, *_ in live_b[space]}
        # the same vector for each item id (same catalog ids on both sides, checked above)
        va, vb = dict(rows_a[space]), dict(rows_b[space])
        assert vb.keys() == va.keys()
        for item_id, vec in vb.items():
            np.testing.assert_allclose(vec, va[item_id], atol=1e-5, err_msg=f"{space} vector of item {item_id}")
    assert len(rows_b["clip"]) == 24 + 2 + 3 and len(rows_b["clap"]) == 4 + 3  # images + texts; audio + texts

    # the long clip's window vectors and spans too
    long_id = items_b[str(media / "sounds" / "long.wav")][0]
    (where_b,) = [(p, r) for i, p, r in live_b["clap"] if i == long_id]
    (where_a,) = [(p, r) for i, p, r in _live(local)["clap"] if i == long_id]
    win_b = read_windows(on_ray.home / where_b[0], [where_b[1]])[where_b[1]]
    win_a = read_windows(local.home / where_a[0], [where_a[1]])[where_a[1]]
    assert len(win_b.vectors) == 3
    np.testing.assert_allclose(win_b.vectors, win_a.vectors, atol=1e-5)
    np.testing.assert_array_equal(win_b.spans, win_a.spans)

    # the same published indexes and the same answers
    for space in ("clip", "clap"):
        assert b.index[space]["vectors"] == a.index[space]["vectors"]
    assert b.index["clip"]["vectors"] == 24 + 2 + 3 + 4  # the audio, aligned into clip
    assert _searches(on_ray, media) == _searches(local, media)


def test_videos_get_the_same_segments_and_vectors_on_ray(av_settings, ray_head, tmp_path):
    """Two tiny videos (one with sound, one silent): the same segments and vectors in clip and, for the one with
    sound, in clap, from both engines."""
    media = tmp_path / "media"
    shots = [(photo(60 + s), secs) for s, secs in enumerate((1.5, 2.0))]
    write_video(media / "loud.mp4", shots, audio=sound(12, 3.5))
    write_video(media / "mute.webm", shots[::-1], codec="libvpx-vp9")
    fast = av_settings.model_copy(update={"video_fps": 2.0})
    local = _home(fast, tmp_path, "local")
    a = index_sources(local, [media], "c", progress=False, engine="local")
    b = index_sources(fast, [media], "c", progress=False, engine="ray", ray_address=ray_head)
    assert (a.ok, a.failed) == (b.ok, b.failed) == (2, 0)
    assert _items(fast) == _items(local)
    live_a, live_b = _live(local), _live(fast)
    loud = _items(fast)[str(media / "loud.mp4")][0]
    assert [i for i, *_ in live_b["clap"]] == [loud]  # the silent video has no sound vector
    for space in ("clip", "clap"):
        assert [i for i, *_ in live_b[space]] == [i for i, *_ in live_a[space]]
        for (item, path_a, row_a), (_, path_b, row_b) in zip(live_a[space], live_b[space], strict=True):
            win_a = read_windows(local.home / path_a, [row_a])[row_a]
            win_b = read_windows(fast.home / path_b, [row_b])[row_b]
            assert len(win_a.vectors) == 2, (space, item)  # two shots, two segments
            np.testing.assert_array_equal(win_b.spans, win_a.spans)
            np.testing.assert_allclose(win_b.vectors, win_a.vectors, atol=1e-5)
    rows_a, rows_b = _shard_rows(local), _shard_rows(fast)
    for space in ("clip", "clap"):
        va, vb = dict(rows_a[space]), dict(rows_b[space])
        assert vb.keys() == va.keys()
        for item_id, vec in vb.items():
            np.testing.assert_allclose(vec, va[item_id], atol=1e-5, err_msg=f"{space} vector of item {item_id}")


def test_a_killed_run_resumes_exactly_once_and_reruns_embed_only_what_changed(av_settings, ray_head, tmp_path):
    import ray

    media = tmp_path / "media"
    write_photos(media, 20)
    write_texts(media, {"a.txt": "rain on a tin roof", "b.txt": "a kettle"})
    write_sounds(media, 2, seconds=1.0)
    settings = av_settings.model_copy(update={"shard_rows": 4})  # shards commit while results still arrive
    with pytest.raises(Crash):  # the driver dies after its first shard commit, Ray still working
        index_sources(settings, [media], "c", progress=False, engine="ray", ray_address=ray_head,
                      crash_at=crash_once_at("after-shard-commit"))
    assert not ray.is_initialized()  # it left the cluster on its way out
    kept = sum(len(v) for v in _live(settings).values())
    assert 0 < kept < 20 + 2 * 2 + 2

    first = index_sources(settings, [media], "c", progress=False, engine="ray", ray_address=ray_head)
    assert first.failed == 0 and 0 < first.embedded < 24
    live = _live(settings)
    for space, n in (("clip", 22), ("clap", 4)):  # every item once: nothing lost, nothing twice
        assert sorted(i for i, *_ in live[space]) == sorted({i for i, *_ in live[space]}) and len(live[space]) == n
    assert {st[1] for st in _items(settings).values()} == {"ok"}
    shards_before = _shard_paths(settings)

    again = index_sources(settings, [media], "c", progress=False, engine="ray", ray_address=ray_head)
    assert again.embedded == 0 and again.unchanged == 24 and again.failed == 0
    assert _shard_paths(settings) == shards_before  # no shard written

    items_before = _items(av_settings)
    changed_photo = media / "photo_0004.jpg"
    photo(999).save(changed_photo)
    (media / "a.txt").write_text("waves on a pebble beach", encoding="utf-8")
    touched = media / "photo_0007.jpg"  # same bytes, new mtime: hashed on Ray, found unchanged
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = index_sources(settings, [media], "c", progress=False, engine="ray", ray_address=ray_head)
    assert third.embedded == 2 and third.unchanged == 22 and third.failed == 0

    items_after = _items(av_settings)
    for path in (changed_photo, media / "a.txt"):
        before, after = items_before[str(path)], items_after[str(path)]
        assert after[0] == before[0] and after[1] == "ok" and after[3] != before[3]  # same id, new content
    assert items_after[str(touched)][3] == items_before[str(touched)][3]
    live = _live(av_settings)
    assert len(live["clip"]) == 22 and len(live["clap"]) == 4
    # the new vectors are the ones the local engine computes for the new content
    ref = _home(av_settings, tmp_path, "ref")
    index_sources(ref, [media], "c", progress=False, engine="local")
    for space in ("clip", "clap"):
        ours = _live_vectors(av_settings, space)
        theirs = _live_vectors(ref, space)
        uris = {i: u for u, (i, *_r) in items_after.items()}
        ref_uris = {i: u for u, (i, *_r) in _items(ref).items()}
        assert {uris[i] for i in ours} == {ref_uris[i] for i in theirs}
        by_uri = {ref_uris[i]: v for i, v in theirs.items()}
        for i, vec in ours.items():
            np.testing.assert_allclose(vec, by_uri[uris[i]], atol=1e-5)


def _live_vectors(settings, space: str) -> dict[int, np.ndarray]:
    """item id -> its current vector in ``space``, read at the catalog's (shard, row)."""
    out = {}
    for item_id, path, row in _live(settings)[space]:
        ids, vectors, _meta = read_shard(settings.home / path)
        assert ids[row] == item_id
        out[item_id] = vectors[row]
    return out


def test_the_cli_indexes_on_a_ray_cluster(av_settings, ray_head, tmp_path, capsys, monkeypatch):
    media = tmp_path / "media"
    write_photos(media, 6)
    write_texts(media, {"a.txt": "rain on a tin roof"})
    (media / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    monkeypatch.setenv("XMODAL_HOME", str(av_settings.home))
    monkeypatch.setenv("XMODAL_DATABASE_URL", av_settings.database_url)
    monkeypatch.setenv("XMODAL_CLIP_MODEL", av_settings.clip_model)
    monkeypatch.setenv("XMODAL_CLIP_PRETRAINED", av_settings.clip_pretrained)
    out = cli_json(capsys, ["index", str(media), "-c", "cli", "--engine", "ray", "--ray-address", ray_head,
                            "--no-progress"], code=3)  # 3: finished, with a failed file
    assert out["ok"] == out["embedded"] == 7 and out["failed"] == 1
    assert out["failures"][0]["uri"].endswith("bad.jpg") and out["index"]["clip"]["vectors"] == 7
    hits = cli_json(capsys, ["search", "--collection", "cli", "--image", str(media / "photo_0002.jpg"), "-k", "1"])
    assert hits["results"][0]["uri"] == str(media / "photo_0002.jpg")


def test_a_file_that_kills_its_decoder_is_recorded_failed_alone(av_settings, ray_head, tmp_path, monkeypatch):
    import helpers
    import ray.cloudpickle

    media = tmp_path / "media"
    write_photos(media, 30)
    poison = media / "poison.jpg"
    photo(5, size=(133, 100)).save(poison)
    from xmodal.indexer.decode import ImagePrep

    real = run_module.preparations

    def crashing(encoders):  # a transform that kills its process on this one image, as a segfault would
        prep = real(encoders)
        prep["image"] = ImagePrep(CrashOnWidth(prep["image"].transform, 133), prep["image"].min_side)
        return prep

    monkeypatch.setattr(run_module, "preparations", crashing)
    monkeypatch.setattr(ray_engine, "STALL_SECONDS", 20.0)  # a pass that left a block out ends sooner
    monkeypatch.setattr(ray_engine, "START_SECONDS", 300.0)  # but its actors may take long to start (a busy CI)
    ray.cloudpickle.register_pickle_by_value(helpers)  # Ray's workers cannot import the tests' helpers
    try:
        summary = index_sources(av_settings, [media], "c", progress=False, engine="ray", ray_address=ray_head)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(helpers)
    # Ray retries a dead worker's block once, then the passes narrow it down to the file (not forever)
    assert summary.failures == [(str(poison), "the decoder crashed on this file")]  # the local engine's reason
    assert summary.ok == summary.embedded == 30
    assert len(_live(av_settings)["clip"]) == 30


def test_a_model_the_workers_cannot_load_is_a_clear_error(av_settings, ray_head, tmp_path, monkeypatch):
    import ray

    ckpt = tmp_path / "clip.pt"
    shutil.copy(av_settings.clip_pretrained, ckpt)
    settings = av_settings.model_copy(update={"clip_pretrained": str(ckpt)})
    media = tmp_path / "media"
    write_texts(media, TEXTS)
    real_plan = ray_engine.plan_pool

    def plan_then_lose_the_checkpoint(nodes, device):  # the driver has loaded it; the actor will not find it
        ckpt.rename(tmp_path / "elsewhere.pt")
        return real_plan(nodes, device)

    monkeypatch.setattr(ray_engine, "plan_pool", plan_then_lose_the_checkpoint)
    with pytest.raises(UserError, match=f"on a Ray worker: the collection's checkpoint {re.escape(str(ckpt))} is missing"):
        index_sources(settings, [media], "c", progress=False, engine="ray", ray_address=ray_head)
    assert not ray.is_initialized()
    assert {st[1] for st in _items(settings).values()} == {"pending"}  # redone by the next run


def test_an_address_where_no_ray_listens_fails_fast(av_settings, tmp_path):
    media = tmp_path / "media"
    write_texts(media, TEXTS)
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=f"cannot reach the Ray cluster at {re.escape(address)}"):
        index_sources(av_settings, [media], "c", progress=False, engine="ray", ray_address=address)
    assert time.monotonic() - t0 < 60  # ray.init alone would retry for minutes


def test_without_an_address_a_local_ray_is_started_and_shut_down(av_settings, tmp_path):
    import ray

    media = tmp_path / "media"
    write_texts(media, TEXTS)
    summary = index_sources(av_settings, [media], "c", progress=False, engine="ray")
    assert summary.ok == summary.embedded == 3
    assert not ray.is_initialized()  # what this run started, it stopped


def test_a_missing_ray_says_what_to_install(av_settings, tmp_path, monkeypatch, capsys):
    media = tmp_path / "media"
    write_texts(media, TEXTS)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` (and ray.data) now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'xmodal\[ray\]'"):
        index_sources(av_settings, [media], "c", progress=False, engine="ray")
    monkeypatch.setenv("XMODAL_HOME", str(av_settings.home))
    monkeypatch.setenv("XMODAL_DATABASE_URL", av_settings.database_url)
    monkeypatch.setenv("XMODAL_CLIP_MODEL", av_settings.clip_model)
    monkeypatch.setenv("XMODAL_CLIP_PRETRAINED", av_settings.clip_pretrained)
    from xmodal.cli import main

    capsys.readouterr()
    assert main(["index", str(media), "-c", "c", "--engine", "ray", "--no-progress"]) == 2
    assert "pip install 'xmodal[ray]'" in capsys.readouterr().err


@pytest.mark.parametrize(("nodes", "device", "want"), [
    ([{"CPU": 2}], "auto", PoolPlan(1, "cpu", 1.5, 0.0, 2, 0.25)),
    ([{"CPU": 1}], "cpu", PoolPlan(1, "cpu", 0.5, 0.0, 1, 0.25)),
    ([{"CPU": 16}], "auto", PoolPlan(2, "cpu", 7.5, 0.0, 8, 0.25)),
    ([{"CPU": 16}, {"CPU": 4}, {"CPU": 4}], "auto", PoolPlan(2, "cpu", 7.5, 0.0, 8, 0.25)),  # only the big one fits
    ([{"CPU": 16, "GPU": 4}, {"CPU": 8, "GPU": 2}, {"CPU": 8}], "auto", PoolPlan(6, "cuda", 1.0, 1.0, 0, 1.0)),
    ([{"CPU": 16, "GPU": 4}], "cuda:1", PoolPlan(4, "cuda", 1.0, 1.0, 0, 1.0)),
    ([{"CPU": 4, "GPU": 1}], "cpu", PoolPlan(1, "cpu", 3.5, 0.0, 4, 0.25)),
])
def test_the_encoder_pool_follows_the_cluster(nodes, device, want):
    assert plan_pool(nodes, device) == want


def test_a_gpu_device_on_a_cluster_without_gpus_is_an_error():
    with pytest.raises(UserError, match="no GPU"):
        plan_pool([{"CPU": 8}], "cuda")


def test_payloads_stay_on_the_workers():
    from xmodal.indexer.decode import Decoded

    d = Decoded(7, "h", 10, modality="image", inputs=np.ones((3, 8, 8), np.float32), meta={"width": 8})
    light = ray_engine._without_payload(d)
    assert light.inputs is None and light.spans is None and light.meta == {"width": 8}
    assert light.modality == "image"


def test_a_slow_start_is_not_taken_for_a_stall_but_a_stall_after_results_ends_the_pass():
    """The stall limit that ends a pass whose crashed block Ray Data waits on forever counts between results;
    before the first, the actors load their models, and a busy machine may take longer than any gap."""
    def pass_results() -> Iterator[int]:
        time.sleep(1.0)  # the actors start: longer than the stall limit
        yield 1
        yield 2
        time.sleep(30)  # a block left out: Ray's iterator waits on it
        yield 3

    t0 = time.monotonic()
    assert list(ray_engine._with_stall_limit(pass_results(), 0.3, 10.0)) == [1, 2]
    assert time.monotonic() - t0 < 10  # ended by the stall after the results, not by the start allowance

    def never() -> Iterator[int]:
        time.sleep(30)
        yield 1

    with pytest.raises(RuntimeError, match="stay pending"):  # nothing at all: the cluster's fault, not the files'
        list(ray_engine._with_stall_limit(never(), 0.3, 1.0))


class _Cluster:
    """What ``_wait_for_resources`` asks of Ray: the resources free now (an aborted pass's actor holds some)."""

    def __init__(self, cpus: float, gpus: float = 0.0) -> None:
        self.free = {"CPU": cpus, "GPU": gpus}

    def available_resources(self) -> dict[str, float]:
        return dict(self.free)


def test_a_pass_whose_predecessor_keeps_its_cpus_runs_one_actor_on_what_is_free():
    plan = ray_engine.plan_pool([{"CPU": 2.0}], "cpu")  # one actor of 1.5 CPUs, decode tasks of 0.25
    assert (plan.size, plan.num_cpus) == (1, 1.5)
    assert ray_engine._wait_for_resources(_Cluster(2.0), plan, 31, timeout=0.2) == plan  # given back: as planned
    smaller = ray_engine._wait_for_resources(_Cluster(0.5), plan, 31, timeout=0.2)  # the old actor holds 1.5
    assert (smaller.size, smaller.num_cpus, smaller.decode_cpus) == (1, 0.25, 0.25)
    with pytest.raises(RuntimeError, match="31 file"):  # no room even for a decode task: pending, not failed
        ray_engine._wait_for_resources(_Cluster(0.25), plan, 31, timeout=0.2)
    gpu = ray_engine.plan_pool([{"CPU": 8.0, "GPU": 1.0}], "auto")
    assert ray_engine._wait_for_resources(_Cluster(8.0, 0.0), gpu, 3, timeout=0.2) == gpu  # a GPU can't shrink
