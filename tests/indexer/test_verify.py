"""`xmodal verify` finds what disagrees between catalog, shards and index; `--repair` fixes what can be
fixed and says what cannot; every run starts by removing what a killed run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cli_json, write_photos, write_texts

from xmodal.cli import EXIT_PROBLEMS
from xmodal.config import Settings
from xmodal.indexer.pipeline import index_sources
from xmodal.storage.catalog import Catalog


@pytest.fixture
def indexed(env: Settings, tmp_path: Path) -> tuple[Settings, Path]:
    media = tmp_path / "m"
    write_photos(media, 12)
    write_texts(media, {"a.txt": "red boots", "b.txt": "a steel kettle"})
    index_sources(env, [media], "c", progress=False)
    return env, media


def _shards(settings: Settings) -> list[Path]:
    return sorted((settings.home / "collections" / "c" / "shards").rglob("*.parquet"))


def test_a_fresh_collection_is_consistent(indexed: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report = cli_json(capsys, ["verify", "-c", "c"])
    assert report["ok"] is True and report["problems"] == []
    assert report["counts"]["clip_live_vectors"] == 14 and report["counts"]["orphans"] == 0


@pytest.mark.backends  # the catalog's SQL matters here
def test_missing_shard_is_found_and_repaired(indexed: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]) -> None:
    settings, media = indexed
    victim = _shards(settings)[0]
    victim.unlink()
    report = cli_json(capsys, ["verify", "-c", "c"], code=EXIT_PROBLEMS)
    assert any("missing" in p for p in report["problems"])
    repaired = cli_json(capsys, ["verify", "-c", "c", "--repair"])
    assert any("pending" in line for line in repaired["repaired"])
    assert any("rebuilt index clip" in line for line in repaired["repaired"])
    # the lost vectors can only come back from the media: until then the items wait, pending
    assert repaired["ok"] is True and repaired["counts"]["clip_live_vectors"] < 14
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        assert "pending" in catalog.counts(catalog.collection_id("c"))["status"]
    finally:
        catalog.close()
    index_sources(settings, [media], "c", progress=False)  # re-embeds the pending items
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        status = catalog.counts(catalog.collection_id("c"))["status"]
    finally:
        catalog.close()
    assert status == {"ok": 14}
    assert cli_json(capsys, ["verify", "-c", "c"])["counts"]["clip_live_vectors"] == 14


def test_damaged_shard_and_orphans(indexed: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = indexed
    shard = _shards(settings)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    orphan = shard.parent / "shard-orphan.parquet"
    orphan.write_bytes(b"left by a killed run")
    tmp = shard.parent / ".shard-x.parquet.tmp-123"
    tmp.write_bytes(b"half a shard")
    unpublished = settings.home / "collections" / "c" / "indexes" / "clip" / "v000099"
    unpublished.mkdir(parents=True)
    report = cli_json(capsys, ["verify", "-c", "c"], code=EXIT_PROBLEMS)
    text = "\n".join(report["problems"])
    assert "size and sha256" in text and "files no catalog row names" in text
    assert report["counts"]["orphans"] == 3
    repaired = cli_json(capsys, ["verify", "-c", "c", "--repair"])
    assert not orphan.exists() and not tmp.exists() and not unpublished.exists() and not shard.exists()
    assert repaired["counts"]["orphans"] == 0 and repaired["ok"] is True


def test_an_index_older_than_the_catalog_is_reported(indexed: tuple[Settings, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = indexed
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        cid = catalog.collection_id("c")
        gone = catalog.live_vectors(cid, "clip")[0][0]
        from xmodal.storage.catalog import STATUS_DELETED

        catalog.set_status([gone], STATUS_DELETED)
    finally:
        catalog.close()
    report = cli_json(capsys, ["verify", "-c", "c"], code=EXIT_PROBLEMS)
    assert any("not live items" in p and str(gone) in p for p in report["problems"])
    assert cli_json(capsys, ["verify", "-c", "c", "--repair"])["ok"] is True


def test_an_index_run_sweeps_what_a_killed_run_left(indexed: tuple[Settings, Path]) -> None:
    settings, media = indexed
    shard_dir = _shards(settings)[0].parent
    orphan = shard_dir / "shard-deadbeef.parquet"
    orphan.write_bytes(b"x")
    summary = index_sources(settings, [media], "c", progress=False)
    assert not orphan.exists()
    assert summary.swept == [str(orphan.relative_to(settings.home))]


@pytest.mark.backends  # the catalog's SQL matters here
def test_gc_removes_superseded_versions_and_unreferenced_shards_after_the_grace(
        indexed: tuple[Settings, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import photo

    settings, media = indexed
    first_shards = _shards(settings)
    for i, p in enumerate(sorted(media.glob("*.jpg"))):
        photo(500 + i).save(p)  # every photo changes: the old image vectors are superseded
    (media / "a.txt").write_text("brown boots")
    (media / "b.txt").write_text("a copper kettle")
    index_sources(settings, [media], "c", progress=False)
    versions = settings.home / "collections" / "c" / "indexes" / "clip"
    assert sorted(p.name for p in versions.iterdir()) == ["v000001", "v000002"]
    kept = cli_json(capsys, ["gc", "-c", "c"])  # default grace: an hour; all of this is minutes old
    assert kept["removed"] == []
    done = cli_json(capsys, ["gc", "-c", "c", "--grace", "0s"])
    assert sorted(p.name for p in versions.iterdir()) == ["v000002"]
    assert all(not p.exists() for p in first_shards)
    assert any(r.endswith("v000001") for r in done["removed"])
    report = cli_json(capsys, ["verify", "-c", "c"])
    assert report["ok"] is True and report["counts"]["clip_live_vectors"] == 14
    from xmodal.search.engine import Searcher

    searcher = Searcher(settings, "c")
    try:
        assert searcher.run(text="brown boots", k=3).results
    finally:
        searcher.close()
    from xmodal.cli import main

    assert main(["gc", "-c", "c", "--grace", "soon"]) == 2


def test_dry_run_says_what_would_change_and_changes_nothing(indexed: tuple[Settings, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import photo

    settings, media = indexed
    photos = sorted(media.glob("*.jpg"))
    photo(900).save(photos[0])  # changed
    photos[1].unlink()  # deleted
    write_photos(media, 2, start=50)  # new
    catalog_file = Path(settings.resolved_database_url.removeprefix("sqlite:///")) if settings.resolved_database_url.startswith(
        "sqlite") else None
    before = catalog_file.read_bytes() if catalog_file else None
    home_files = sorted(p for p in settings.home.rglob("*") if p.is_file() and p != catalog_file)
    plan = cli_json(capsys, ["index", str(media), "-c", "c", "--dry-run"])
    assert (plan["new"], plan["changed"], plan["deleted"], plan["unchanged"]) == (2, 1, 1, 12)
    assert plan["examples"]["deleted"] == [str(photos[1])] and plan["would_rebuild_index"] is True
    assert sorted(p for p in settings.home.rglob("*") if p.is_file() and p != catalog_file) == home_files
    if catalog_file:
        assert catalog_file.read_bytes() == before
    fresh = cli_json(capsys, ["index", str(media), "-c", "brand-new", "--dry-run"])
    assert fresh["collection_exists"] is False and fresh["new"] == 15
    summary = index_sources(settings, [media], "c", progress=False)
    assert (summary.new, summary.deleted, summary.embedded) == (2, 1, 3)
    assert cli_json(capsys, ["index", str(media), "-c", "c", "--dry-run"])["would_rebuild_index"] is False
