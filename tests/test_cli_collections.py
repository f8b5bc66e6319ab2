"""``xmodal collections``: list, describe, rename and drop, through the CLI, on a real catalog."""

from __future__ import annotations

import pytest
from helpers import cli_json, write_photos, write_texts

from xmodal.cli import EXIT_BUSY, EXIT_USER_ERROR, main
from xmodal.indexer.lock import collection_lock


@pytest.fixture
def shop(env, tmp_path, capsys):
    media = tmp_path / "media"
    write_photos(media, 6)
    write_texts(media, {"boots.txt": "Red leather ankle boots."})
    cli_json(capsys, ["index", str(media), "-c", "shop", "--no-progress"])
    return media


@pytest.mark.backends  # rename and drop are catalog transactions
def test_list_describe_rename_drop(env, shop, capsys):
    (row,) = cli_json(capsys, ["collections", "list"])["collections"]
    assert row["name"] == "shop" and row["items"] == {"image": 6, "text": 1}
    assert row["versions"] == {"clip": 1} and row["disk_bytes"] > 0
    assert row["models"]["clip"].startswith(env.clip_model)

    d = cli_json(capsys, ["collections", "describe", "shop"])
    assert d["spaces"][0]["name"] == "clip" and d["spaces"][0]["model"] == env.clip_model
    assert d["items"]["status"] == {"ok": 7} and d["failed"] == 0 and d["index"]["clip"]["version"] == 1
    assert d["paths"]["collection"] == str(env.home / "collections" / "shop")
    assert main(["collections", "describe", "shop"]) == 0
    assert "space clip" in capsys.readouterr().out

    cli_json(capsys, ["collections", "rename", "shop", "store"])
    assert not (env.home / "collections" / "shop").exists() and (env.home / "collections" / "store").is_dir()
    found = cli_json(capsys, ["search", "-c", "store", "--image", str(shop / "photo_0003.jpg"), "-k", "1"])
    assert found["results"][0]["uri"] == str(shop / "photo_0003.jpg")
    assert main(["verify", "-c", "store"]) == 0  # shard and index paths moved with the folder
    assert main(["search", "-c", "shop", "--text", "x"]) == EXIT_USER_ERROR
    assert "no collection named 'shop'" in capsys.readouterr().err

    dropped = cli_json(capsys, ["collections", "drop", "store", "--yes"])
    assert dropped == {"dropped": "store", "items": 7, "disk_bytes": row["disk_bytes"]}
    assert cli_json(capsys, ["collections", "list"])["collections"] == []
    assert not (env.home / "collections" / "store").exists()
    # the name is free again, for another model too
    cli_json(capsys, ["index", str(shop), "-c", "store", "--no-progress"])


def test_drop_asks_first_and_refuses_while_an_index_runs(env, shop, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["collections", "drop", "shop"]) == EXIT_USER_ERROR
    assert "pass --yes" in capsys.readouterr().err
    with collection_lock(env.home, "shop", env.database_url):  # what `xmodal index` holds while it runs
        assert main(["collections", "drop", "shop", "--yes"]) == EXIT_BUSY
        assert main(["collections", "rename", "shop", "other"]) == EXIT_BUSY
    assert "in progress" in capsys.readouterr().err
    assert [r["name"] for r in cli_json(capsys, ["collections", "list"])["collections"]] == ["shop"]
    assert (env.home / "collections" / "shop").is_dir()


def test_rename_refuses_a_taken_name_and_bad_names(env, shop, capsys):
    cli_json(capsys, ["index", str(shop), "-c", "other", "--no-progress"])
    assert main(["collections", "rename", "shop", "other"]) == EXIT_USER_ERROR
    assert "exists already" in capsys.readouterr().err
    assert main(["collections", "rename", "shop", "../x"]) == EXIT_USER_ERROR
    assert "invalid collection name" in capsys.readouterr().err
    assert main(["collections", "drop", "nope", "--yes"]) == EXIT_USER_ERROR
    assert "no collection named 'nope'" in capsys.readouterr().err
