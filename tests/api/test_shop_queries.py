"""A shop's collection (a products manifest) served in-process: what a shop's search engineer met (issue 15,
points 5 and 6): a column added by a metadata-only rerun is filterable without a restart, "more like this"
over GET honours filters as POST does, and the CLI's search takes a filter and an offset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import MEDIA, cli_json, live_app, products, write_csv

from xmodal.cli import EXIT_USER_ERROR, main
from xmodal.config import Settings
from xmodal.indexer.pipeline import index_manifest


@pytest.fixture
def shop(settings: Settings, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path, list[dict[str, Any]], Settings]]:
    rows = products(tmp_path, 12)
    manifest = write_csv(tmp_path / "products.csv", rows)
    index_manifest(settings, manifest, "shop", media=MEDIA, progress=False)
    served = settings.model_copy(update={"index_poll_seconds": 0.2})
    with live_app(served, "shop") as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        yield client, manifest, rows, settings


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.backends  # the catalog's last change and its JSON metadata: SQL that differs by dialect
def test_a_column_added_by_a_metadata_only_rerun_is_filterable_without_a_restart(shop) -> None:
    client, manifest, rows, settings = shop
    color = {"field": "color", "op": "eq", "value": "green"}
    before = client.post("/v1/search", json={"collection": "shop", "text": "boot", "filters": color})
    assert before.status_code == 422 and "unknown field 'color'" in before.json()["message"]

    for i, row in enumerate(rows):
        row["color"] = "green" if i % 3 == 0 else "black"
    write_csv(manifest, rows)
    summary = index_manifest(settings, manifest, "shop", media=MEDIA, progress=False)
    assert summary.embedded == 0  # metadata only: nothing re-embedded

    body = _ok(client.post("/v1/search", json={"collection": "shop", "text": "boot", "k": 50, "filters": color,
                                               "group_by": "none"}))
    assert {r["source"]["id"] for r in body["results"]} == {r["id"] for r in rows if r["color"] == "green"}
    assert all(r["metadata"]["color"] == "green" for r in body["results"])
    listed = _ok(client.get("/v1/collections"))["collections"]
    assert listed[0]["metadata_fields"]["color"] == "string"
    still = client.post("/v1/search", json={"collection": "shop", "text": "boot", "filters":
                                            {"field": "colour", "op": "eq", "value": "green"}})
    assert still.status_code == 422 and "unknown field 'colour'" in still.json()["message"]


@pytest.mark.backends  # filters compile per dialect
def test_get_similar_honours_filters_and_offset_as_post_does(shop) -> None:
    client, _, _, _ = shop
    bags = {"field": "category", "op": "eq", "value": "bags"}
    seed = _ok(client.post("/v1/search", json={"collection": "shop", "text": "boot", "k": 1}))["results"][0]["best"]["id"]
    post = _ok(client.post("/v1/search", json={"collection": "shop", "item_id": seed, "k": 5, "offset": 2,
                                               "filters": bags, "group_by": "none"}))
    get = _ok(client.get(f"/v1/items/{seed}/similar", params={"k": 5, "offset": 2, "filters": json.dumps(bags),
                                                             "group_by": "none"}))
    assert [r["id"] for r in get["results"]] == [r["id"] for r in post["results"]]
    assert get["results"] and all(r["metadata"]["category"] == "bags" for r in get["results"])
    unfiltered = _ok(client.get(f"/v1/items/{seed}/similar", params={"k": 20, "group_by": "none"}))
    assert {r["metadata"]["category"] for r in unfiltered["results"]} == {"bags", "shoes"}
    bad = client.get(f"/v1/items/{seed}/similar", params={"filters": '{"field": "nope", "op": "eq", "value": 1}'})
    assert bad.status_code == 422 and "unknown field 'nope'" in bad.json()["message"]
    broken = client.get(f"/v1/items/{seed}/similar", params={"filters": "{not json"})
    assert broken.status_code == 422


def test_cli_search_takes_a_filter_and_an_offset_and_answers_as_http_does(shop, capsys) -> None:
    client, _, _, settings = shop
    bags = {"field": "category", "op": "eq", "value": "bags"}
    argv = ["search", "-c", "shop", "--home", str(settings.home), "--database-url", settings.resolved_database_url,
            "--text", "leather boot", "-k", "3", "--offset", "2", "--group", "none", "--filter", json.dumps(bags)]
    got = cli_json(capsys, argv)
    http = _ok(client.post("/v1/search", json={"collection": "shop", "text": "leather boot", "k": 3, "offset": 2,
                                               "filters": bags, "group_by": "none"}))
    assert [r["id"] for r in got["results"]] == [r["id"] for r in http["results"]] and len(got["results"]) == 3
    assert all(r["metadata"]["category"] == "bags" for r in got["results"])
    assert got["offset"] == 2 and got["filter"] == bags and set(got["timings_ms"]) == {"encode", "ann", "sql"}
    main(argv[:-2])  # the table counts ranks from the offset
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:4]]
    assert [int(r[0]) for r in rows] == [3, 4, 5]
    assert main([*argv[:-1], '{"field": "colour", "op": "eq", "value": 1}']) == EXIT_USER_ERROR
    assert "unknown field 'colour'" in capsys.readouterr().err
    assert main([*argv[:-1], "{oops"]) == EXIT_USER_ERROR
    assert "filters: not valid JSON" in capsys.readouterr().err


@pytest.mark.backends  # the lookup by source id is SQL
def test_a_product_is_found_by_its_own_id_and_more_like_it_by_that_id(shop) -> None:
    client, _, rows, _ = shop
    sku = rows[3]["id"]
    row = _ok(client.get(f"/v1/sources/{sku}"))
    assert row["source_id"] == sku and row["collection"] == "shop"
    assert row["metadata"]["category"] == rows[3]["category"] and row["metadata"]["price"] == 13.5
    assert sorted((it["column"], it["modality"]) for it in row["items"]) == [("image", "image"), ("title", "text")]
    image = next(it for it in row["items"] if it["column"] == "image")
    assert image["thumbnail_url"] == f"/v1/items/{image['id']}/thumbnail"
    assert client.get(image["media_url"]).status_code == 200

    like = _ok(client.get(f"/v1/sources/{sku}/similar", params={"k": 6, "target": "image", "group_by": "none"}))
    by_item = _ok(client.get(f"/v1/items/{image['id']}/similar", params={"k": 7, "target": "image",
                                                                         "group_by": "none"}))
    assert sku not in {r["source"]["id"] for r in like["results"]} and len(like["results"]) == 6
    assert [r["id"] for r in like["results"]] == [r["id"] for r in by_item["results"] if r["source"]["id"] != sku][:6]
    shoes = {"field": "category", "op": "eq", "value": "shoes"}
    filtered = _ok(client.get(f"/v1/sources/{sku}/similar", params={"filters": json.dumps(shoes), "k": 20,
                                                                    "group_by": "none"}))
    assert filtered["results"] and {r["metadata"]["category"] for r in filtered["results"]} == {"shoes"}
    assert sku not in {r["source"]["id"] for r in filtered["results"]}
    by_title = _ok(client.get(f"/v1/sources/{sku}/similar", params={"column": "title", "target": "text", "k": 3,
                                                                    "group_by": "none"}))
    assert by_title["results"] and all(r["modality"] == "text" for r in by_title["results"])

    missing = client.get("/v1/sources/SKU-999")
    assert missing.status_code == 404 and "SKU-999" in missing.json()["message"]
    assert client.get(f"/v1/sources/{sku}/similar", params={"column": "photo"}).status_code == 404
    assert client.get(f"/v1/sources/{sku}", params={"collection": "elsewhere"}).status_code == 404
