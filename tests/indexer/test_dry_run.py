"""A dry run says what the run will do: at every step of a folder and a manifest scenario (new, changed,
touched, deleted, unreadable, linked out, failed and retried files; a space added later; manifest
inserts, media and metadata updates, a local file changed in place, deletes), the plan ``--dry-run``
reports equals the plan the real run then records (``RunSummary.plan``), kind by kind, with its examples.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from helpers import MEDIA, photo, products, write_csv, write_photos, write_sounds, write_texts

from xmodal.config import Settings
from xmodal.indexer.pipeline import index_manifest, index_sources, plan_manifest, plan_sources


def agree(settings: Settings, media: Path, **kw: Any) -> dict[str, Any]:
    dry = plan_sources(settings, [media], "c", **kw)
    run = index_sources(settings, [media], "c", progress=False, **kw)
    assert dry["plan"] == run.plan, (dry["plan"], run.plan)
    assert run.scanned == dry["scanned"] and run.deleted == dry["deleted"]
    return run.plan


def test_folders(settings: Settings, tmp_path: Path, tiny_clap: str) -> None:
    media = tmp_path / "m"
    write_photos(media, 6)
    write_texts(media, {"a.txt": "rain on a tin roof", "b.md": "# Kettle"})
    (media / "gone.png").symlink_to(media / "nowhere.png")  # a broken link: failed
    outside = tmp_path / "outside"
    write_texts(outside, {"far.txt": "not a source"})
    (media / "far.txt").symlink_to(outside / "far.txt")  # links out: failed
    first = agree(settings, media)
    assert (first["new"], first["failed"]) == (8, 2)

    photo(500).save(media / "photo_0000.jpg")  # new content
    os.utime(media / "photo_0001.jpg")  # touched: changed, same content
    (media / "photo_0002.jpg").unlink()
    write_photos(media, 1, start=40)
    plan = agree(settings, media)
    assert (plan["new"], plan["changed"], plan["deleted"], plan["unchanged"]) == (1, 2, 1, 7)  # 3 photos, 2 texts, 2 failed

    assert agree(settings, media, retry_failed=True)["retry"] == 0  # the two failures fail the same way again
    write_sounds(media, 1)  # the collection gains the clap space: its texts lack a clap vector
    audio = settings.model_copy(update={"audio_model": tiny_clap})
    plan = agree(audio, media)
    assert (plan["new"], plan["missing_vectors"]) == (1, 2)
    assert agree(audio, media)["unchanged"] == 11  # and then nothing is left to do
    shutil.rmtree(media)
    media.mkdir()
    assert agree(audio, media)["deleted"] == 11


def test_manifests(settings: Settings, tmp_path: Path) -> None:
    rows = products(tmp_path, 5)
    manifest = write_csv(tmp_path / "p.csv", rows)

    def step() -> dict[str, Any]:
        dry = plan_manifest(settings, manifest, "c", media=MEDIA)
        run = index_manifest(settings, manifest, "c", media=MEDIA, progress=False)
        assert dry["plan"] == run.plan, (dry["plan"], run.plan)
        for key in ("inserted", "updated", "metadata_updated", "unchanged"):
            assert dry[key] == run.manifest[key], key
        assert dry["deleted"] == run.deleted
        return run.manifest

    assert step()["inserted"] == 10
    photo(99).save(tmp_path / "img" / "other.jpg")
    rows[1]["image"] = "img/other.jpg"  # new media
    rows[2]["price"] = "99.00"  # metadata only
    rows[3]["title"] = "suede boot"  # inline text changed
    del rows[4]
    write_csv(manifest, rows)
    photo(123).save(tmp_path / "img" / "photo_0000.jpg")  # a local file changed in place, the manifest as it was
    m = step()
    # metadata only: row 2's two items (price) and row 3's image (the row's title is one of its fields)
    assert (m["updated"], m["metadata_updated"], m["deleted"]) == (3, 3, 2)
    assert step()["unchanged"] == 8
