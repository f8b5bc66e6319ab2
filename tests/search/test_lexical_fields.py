"""The manifest chooses the lexical fields (issue 15: ``--lexical title,brand,description``; default: the text
media columns plus string metadata), and the source id is always in. The choice is a collection setting that
later runs keep; a new choice writes every item's words again without re-embedding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_json, write_csv, write_photos

from xmodal.cli import EXIT_USER_ERROR, main
from xmodal.config import Settings
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import Catalog

N = 12


def rows(folder: Path) -> list[dict[str, Any]]:
    """N products: an image and a title (text media) each; brand, a description, an EAN typed as an int."""
    photos = write_photos(folder / "img", N)
    return [{"id": f"SKU-{i:06d}", "image": f"img/{p.name}", "title": f"boot model {i}",
             "brand": "Tyrell" if i == 5 else "Acme", "description": "zanzibar weave" if i == 3 else "plain",
             "ean": str(4006381333900 + i), "price": f"{10 + i}.50"}
            for i, p in enumerate(photos)]


def argv(settings: Settings, manifest: Path, *extra: str) -> list[str]:
    return ["index", "--manifest", str(manifest), "--media", "image", "--media", "title=text", "-c", "shop",
            "--home", str(settings.home), "--database-url", settings.resolved_database_url, "--no-progress", *extra]


def found(settings: Settings, query: str) -> set[str]:
    searcher = Searcher(settings, "shop")
    try:
        return {r.source["id"] for r in searcher.run(text=query, k=50, mode="lexical").results}
    finally:
        searcher.close()


@pytest.mark.backends
def test_the_chosen_columns_are_found_and_the_others_not_and_a_new_choice_rewrites_the_words(
        env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = env  # the CLI reads the tiny model from the environment
    manifest = write_csv(tmp_path / "products.csv", rows(tmp_path))
    first = cli_json(capsys, argv(settings, manifest, "--lexical", "Title, brand"))
    assert first["manifest"]["lexical_fields"] == ["title", "brand"] and first["embedded"] == 2 * N
    assert found(settings, "Tyrell") == {"SKU-000005"}  # chosen
    assert found(settings, "zanzibar") == set()  # left out
    assert found(settings, "boot") == {f"SKU-{i:06d}" for i in range(N)}
    assert found(settings, "SKU-000007") == {"SKU-000007"} and found(settings, "000007") == {"SKU-000007"}

    # a dry run says what a new choice would do, and changes nothing
    plan = cli_json(capsys, argv(settings, manifest, "--lexical", "description,ean", "--dry-run"))
    assert plan["lexical_fields"] == ["description", "ean"] and plan["would_refill_words"] is True
    assert found(settings, "zanzibar") == set()

    # another choice: the words are written again, nothing is embedded again
    second = cli_json(capsys, argv(settings, manifest, "--lexical", "description,ean"))
    assert second["embedded"] == 0 and second["manifest"]["words_refilled"] is True
    assert second["manifest"]["lexical_fields"] == ["description", "ean"]
    assert found(settings, "zanzibar") == {"SKU-000003"}
    assert found(settings, "4006381333904") == {"SKU-000004"}  # a whole number of a chosen column
    assert found(settings, "Tyrell") == set()
    assert found(settings, "SKU-000007") == {"SKU-000007"}  # the id stays
    # the title's own text items are still found by their text (bodies do not follow the choice)
    assert found(settings, "boot") == {f"SKU-{i:06d}" for i in range(N)}

    # a later run without --lexical keeps the choice, and a metadata change uses it at once
    changed = rows(tmp_path)
    changed[8]["description"] = "zanzibar knot"
    write_csv(manifest, changed)
    third = cli_json(capsys, argv(settings, manifest))
    assert third["manifest"]["lexical_fields"] == ["description", "ean"] and third["manifest"]["words_refilled"] is False
    assert third["manifest"]["metadata_updated"] == 2 and third["embedded"] == 0
    assert found(settings, "zanzibar") == {"SKU-000003", "SKU-000008"} and found(settings, "Tyrell") == set()

    stats = cli_json(capsys, ["stats", "-c", "shop", "--home", str(settings.home),
                              "--database-url", settings.resolved_database_url])
    assert stats["lexical"] == {"fields": ["description", "ean"], "indexed": True}
    assert main(["stats", "-c", "shop", "--home", str(settings.home),
                 "--database-url", settings.resolved_database_url]) == 0
    assert "lexical fields: id, description, ean" in capsys.readouterr().out

    # '*': back to the default, every string column
    fourth = cli_json(capsys, argv(settings, manifest, "--lexical", "*"))
    assert fourth["manifest"]["lexical_fields"] is None and fourth["manifest"]["words_refilled"] is True
    assert found(settings, "Tyrell") == {"SKU-000005"} and found(settings, "zanzibar") == {"SKU-000003", "SKU-000008"}
    assert found(settings, "4006381333904") == set()  # an int column is not a string column


@pytest.mark.backends
def test_an_unknown_column_is_a_clear_error_that_changes_nothing(
        env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = env  # the CLI reads the tiny model from the environment
    manifest = write_csv(tmp_path / "products.csv", rows(tmp_path))
    assert main(argv(settings, manifest, "--lexical", "title,colour")) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "--lexical: no column 'colour'" in err
    assert "known columns: 'brand', 'description', 'ean', 'price', 'title'" in err  # not the image column
    assert main(argv(settings, manifest, "--lexical", "image")) == EXIT_USER_ERROR  # a column of images has no words
    assert "no column 'image'" in capsys.readouterr().err

    cli_json(capsys, argv(settings, manifest, "--lexical", "brand"))
    assert main(argv(settings, manifest, "--lexical", "colour")) == EXIT_USER_ERROR
    capsys.readouterr()
    catalog = Catalog(settings.resolved_database_url)
    try:
        assert catalog.lexical_fields(catalog.collection_id("shop")) == ["brand"]
    finally:
        catalog.close()
    assert found(settings, "Tyrell") == {"SKU-000005"}

    # JSONL has no header: its lines' keys are the known columns
    jsonl = tmp_path / "products.jsonl"
    jsonl.write_text("".join(json.dumps({**r, "colour": "red"} if i == 4 else r) + "\n"
                             for i, r in enumerate(rows(tmp_path))), encoding="utf-8")
    assert main(argv(settings, jsonl, "--lexical", "color", "--dry-run")) == EXIT_USER_ERROR
    assert "known columns: 'brand', 'colour', 'description'" in capsys.readouterr().err
    assert cli_json(capsys, argv(settings, jsonl, "--lexical", "colour", "--dry-run"))["lexical_fields"] == ["colour"]

    # --lexical is a manifest's: folders have no columns
    assert main(["index", str(tmp_path / "img"), "-c", "pics", "--home", str(settings.home), "--database-url",
                 settings.resolved_database_url, "--lexical", "title"]) == EXIT_USER_ERROR
    assert "--lexical chooses a manifest's columns" in capsys.readouterr().err
