"""Products, not items (issue 15, point 2): on a shop whose products have two images and a title each, a
product appeared twice in the top 10, ``target: any`` text queries returned bare titles, and image items
carried no title (``/v1/items/245`` had brand and price but no ``title``; a ``title`` filter found no image).
``group_by: "source"`` (the default for a manifest collection) answers one result per product."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import module_database_url
from helpers import cli_json, live_app, photo, write_csv, write_photos

from xmodal.cli import EXIT_USER_ERROR, main
from xmodal.config import Settings
from xmodal.errors import UserError
from xmodal.indexer.pipeline import index_manifest, index_sources
from xmodal.search import products
from xmodal.search.engine import Searcher
from xmodal.search.filters import compile_filter, metadata_fields

N = 16
MEDIA = {"image": "image", "back": "image", "title": "text"}
KINDS = ("boot", "bag", "hat", "scarf")


database_url = pytest.fixture(scope="module", name="database_url")(module_database_url)  # one shop per backend


def shop_rows(folder: Path) -> list[dict[str, Any]]:
    """N products, each with two near-identical photos (a front and a smaller back view) and a title."""
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(N):
        front = photo(i)
        front.save(folder / "img" / f"p{i}-front.jpg", quality=92)
        front.resize((150, 112)).save(folder / "img" / f"p{i}-back.jpg", quality=92)
        rows.append({"id": f"SKU-{i:03d}", "image": f"img/p{i}-front.jpg", "back": f"img/p{i}-back.jpg",
                     "title": f"{('red', 'black', 'tan')[i % 3]} {KINDS[i % 4]} model {i}",
                     "category": "shoes" if i % 2 else "bags", "price": f"{10 + i}.50", "brand": "Acme"})
    return rows


@pytest.fixture(scope="module")
def shop(database_url: str, tiny_clip: tuple[str, str],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Searcher, list[dict[str, Any]]]]:
    """The shop (48 items) and a folder collection of 4 photos, in one catalog."""
    root = tmp_path_factory.mktemp("shop")
    settings = Settings(home=root / "home", database_url=database_url, clip_model=tiny_clip[0],
                        clip_pretrained=tiny_clip[1], batch_size=16, exact_threshold=1000)
    rows = shop_rows(root)
    index_manifest(settings, write_csv(root / "products.csv", rows), "shop", media=MEDIA, progress=False)
    write_photos(root / "photos", 4, start=50)
    index_sources(settings, [root / "photos"], "photos", progress=False)
    searcher = Searcher(settings, "shop")
    try:
        yield searcher, rows
    finally:
        searcher.close()


def grouped(searcher: Searcher, text: str = "leather boot", **kw: Any) -> products.Grouped:
    kw.setdefault("mode", "vector")
    return products.search(searcher, group_by=kw.pop("group_by", None), text=text, **kw)


def skus(g: products.Grouped) -> list[str]:
    assert g.products is not None
    return [p["source_id"] for p in g.products]


@pytest.mark.backends  # the row's fields live in the catalog's JSON metadata: filters compile per dialect
def test_an_image_carries_its_rows_title_and_a_title_filter_finds_it(shop) -> None:
    searcher, rows = shop
    title = rows[5]["title"]
    where = compile_filter({"field": "title", "op": "eq", "value": title},
                           metadata_fields(searcher.catalog, searcher.collection_id))
    found = searcher.run(text="anything", target="image", k=10, where=where, mode="vector").results
    assert sorted((r.source["column"], r.metadata["title"]) for r in found) == [("back", title), ("image", title)]
    assert all(r.source["id"] == rows[5]["id"] for r in found)
    assert all(r.metadata["brand"] == "Acme" and r.metadata["price"] == 15.5 for r in found)


@pytest.mark.backends
def test_a_product_with_two_images_appears_once(shop) -> None:
    searcher, _ = shop
    items = products.search(searcher, group_by="none", text="red boot", target="image", k=10, mode="vector")
    by_item = [r.source["id"] for r in items.outcome.results]
    assert len(set(by_item)) < len(by_item)  # the report: near-identical images put a product twice in the top 10

    page = grouped(searcher, "red boot", target="image", k=10)
    assert page.group_by == "source" and len(skus(page)) == 10 == len(set(skus(page)))
    assert skus(page)[:3] == list(dict.fromkeys(by_item))[:3]  # best item: a product ranks where its best image does
    for p in page.products or []:
        assert p["best"]["modality"] == "image" and p["best"]["column"] in ("image", "back")
        assert sorted((it["column"], it["modality"]) for it in p["items"]) == [
            ("back", "image"), ("image", "image"), ("title", "text")]
        assert p["metadata"]["title"].endswith(f"model {int(p['source_id'][4:])}")
        assert p["score"] == p["best"]["score"] and p["relevance"] == p["best"]["relevance"]  # one list: raw order
        image = next(it for it in p["items"] if it["column"] == "image")
        assert image["thumbnail_url"] == f"/v1/items/{image['id']}/thumbnail"


@pytest.mark.backends
def test_target_any_text_queries_return_products_not_bare_titles(shop) -> None:
    searcher, _ = shop
    for mode in ("vector", "hybrid", "lexical"):
        page = grouped(searcher, "tan hat model", k=8, mode=mode)
        assert len(skus(page)) == 8 == len(set(skus(page))), mode
        assert all({it["modality"] for it in p["items"]} == {"image", "text"} for p in page.products or [])
    lexical = grouped(searcher, "scarf", k=N, mode="lexical")  # a word of 4 titles: their products, images and all
    assert sorted(skus(lexical)) == [f"SKU-{i:03d}" for i in range(N) if KINDS[i % 4] == "scarf"]


@pytest.mark.backends
def test_pages_of_products_are_disjoint_and_stable(shop) -> None:
    searcher, _ = shop
    for mode, target in (("vector", "any"), ("vector", "image"), ("lexical", "any"), ("hybrid", "any")):
        query = "model" if mode == "lexical" else "black bag"
        whole = skus(grouped(searcher, query, k=15, mode=mode, target=target))
        pages = [skus(grouped(searcher, query, k=5, offset=o, mode=mode, target=target)) for o in (0, 5, 10)]
        assert [s for page in pages for s in page] == whole and len(set(whole)) == 15, (mode, target)
        assert skus(grouped(searcher, query, k=15, mode=mode, target=target)) == whole
    last = grouped(searcher, "black bag", k=10, offset=10)
    assert len(skus(last)) == N - 10  # fewer products than k + offset: what is left, each once


@pytest.mark.backends
def test_filters_narrow_products(shop) -> None:
    searcher, rows = shop
    fields = metadata_fields(searcher.catalog, searcher.collection_id)
    shoes = compile_filter({"field": "category", "op": "eq", "value": "shoes"}, fields)
    for mode in ("vector", "hybrid"):
        page = grouped(searcher, "boot", k=N, where=shoes, mode=mode)
        assert sorted(skus(page)) == sorted(r["id"] for r in rows if r["category"] == "shoes"), mode
    title = compile_filter({"field": "title", "op": "eq", "value": rows[3]["title"]}, fields)
    page = grouped(searcher, "boot", k=5, where=title, target="image")
    assert skus(page) == [rows[3]["id"]]


@pytest.mark.backends
def test_group_weights_order_products_by_the_weighted_columns(shop) -> None:
    searcher, _ = shop
    items = products.search(searcher, group_by="none", text="tan scarf", k=3 * N, mode="vector").outcome.results
    best: dict[str, dict[str, float]] = {}
    for r in items:  # each product's best relevance per modality (image: the front or the back)
        per = best.setdefault(r.source["id"], {})
        per[r.modality] = max(per.get(r.modality, float("-inf")), r.relevance)

    def expected(w_image: float, w_title: float) -> list[str]:
        return sorted(best, key=lambda s: (-(w_image * best[s]["image"] + w_title * best[s]["text"]), s))

    orders = {}
    for w in ((1.0, 0.0), (0.0, 1.0), (0.7, 0.3)):
        page = grouped(searcher, "tan scarf", k=N, group_weights={"image": w[0], "title": w[1]})
        assert skus(page) == expected(*w), w
        first = (page.products or [])[0]
        assert first["score"] == pytest.approx(w[0] * max(first["columns"]["image"], first["columns"]["back"])
                                               + w[1] * first["columns"]["title"], abs=1e-5)
        orders[w] = skus(page)
    assert orders[(1.0, 0.0)] != orders[(0.0, 1.0)]  # the weights decide, in the way the items' scores say
    assert "weighted sum" in (page.fusion or "") and "relevance" in (page.fusion or "")
    with pytest.raises(UserError, match="unknown column 'colour'"):
        grouped(searcher, group_weights={"colour": 1})
    with pytest.raises(UserError, match="at least one weight"):
        grouped(searcher, group_weights={"image": 0})
    with pytest.raises(UserError, match="needs group_by 'source'"):
        grouped(searcher, group_by="none", group_weights={"image": 1})


def test_folder_collections_default_to_items_and_group_as_themselves(shop) -> None:
    searcher, _ = shop
    photos = Searcher(searcher.settings, "photos", catalog=searcher.catalog)
    assert products.choose_group(searcher.catalog, searcher.collection_id, None) == "source"
    assert products.choose_group(photos.catalog, photos.collection_id, None) == "none"
    items = products.search(photos, group_by=None, text="a photo", k=4)
    assert items.products is None and items.group() is None and len(items.outcome.results) == 4
    own = products.search(photos, group_by="source", text="a photo", k=4)
    assert [p["best"]["id"] for p in own.products or []] == [r.id for r in items.outcome.results]
    assert all(p["source_id"] is None and [it["id"] for it in p["items"]] == [p["best"]["id"]]
               for p in own.products or [])
    with pytest.raises(UserError, match="unknown group_by"):
        products.search(photos, group_by="sku", text="a photo")


def test_more_like_an_item_grouped_leaves_its_own_product_out(shop) -> None:
    searcher, rows = shop
    front = next(r for r in searcher.run(text="x", target="image", k=3 * N, mode="vector").results
                 if r.source["id"] == rows[2]["id"] and r.source["column"] == "image")
    items = products.search(searcher, group_by="none", item=front.id, target="image", k=2)
    assert items.outcome.results[0].source["id"] == rows[2]["id"]  # its back view, near-identical, first
    page = products.search(searcher, group_by="source", item=front.id, target="image", k=N)
    assert rows[2]["id"] not in skus(page) and len(skus(page)) == N - 1


@pytest.fixture(scope="module")
def served(shop) -> Iterator[tuple[httpx.Client, Settings, list[dict[str, Any]]]]:
    searcher, rows = shop
    with live_app(searcher.settings, "shop", "photos") as (base, _), httpx.Client(base_url=base, timeout=30) as c:
        yield c, searcher.settings, rows


def _ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_http_answers_products_for_a_shop_and_items_for_a_folder(served) -> None:
    client, _, rows = served
    body = _ok(client.post("/v1/search", json={"collection": "shop", "text": "red boot", "k": 5, "mode": "vector"}))
    assert body["group_by"] == "source" and body["group"]["fusion"] == "best item by calibrated relevance"
    page = body["results"]
    assert len({p["source_id"] for p in page}) == 5 and body["group"]["candidates"] >= 10
    assert set(page[0]) == {"source_id", "score", "relevance", "exact", "columns", "best", "items", "metadata"}
    image = next(it for it in page[0]["items"] if it["column"] == "back")
    shown = _ok(client.get(f"/v1/items/{image['id']}"))  # an image's own page: its row's title, brand, price
    assert shown["metadata"]["title"] == page[0]["metadata"]["title"] and shown["metadata"]["brand"] == "Acme"
    items = _ok(client.post("/v1/search", json={"collection": "shop", "text": "red boot", "k": 5, "mode": "vector",
                                                "group_by": "none"}))
    assert items["group_by"] == "none" and items["group"] is None and all("uri" in r for r in items["results"])
    assert page[0]["best"]["id"] == items["results"][0]["id"]
    folder = _ok(client.post("/v1/search", json={"collection": "photos", "text": "a photo", "k": 3}))
    assert folder["group_by"] == "none" and len(folder["results"]) == 3 and "uri" in folder["results"][0]

    schema = _ok(client.get("/openapi.json"))
    results = schema["components"]["schemas"]["SearchResponse"]["properties"]["results"]
    assert {"$ref": "#/components/schemas/ProductOut"} in [v.get("items") for v in results["anyOf"]]
    assert "group_by" in schema["components"]["schemas"]["TextSearch"]["properties"]


def test_uploads_and_get_similar_take_the_grouping_and_bad_values_are_422(served) -> None:
    client, _, rows = served
    data = io.BytesIO()
    photo(3).save(data, "JPEG")
    up = _ok(client.post("/v1/search/upload", files={"file": ("q.jpg", data.getvalue(), "image/jpeg")},
                         data={"collection": "shop", "k": "4", "target": "image", "group_weights": '{"image": 1}'}))
    assert up["group_by"] == "source" and up["group"]["fusion"].startswith("weighted sum")
    assert up["results"][0]["source_id"] == rows[3]["id"] and len({p["source_id"] for p in up["results"]}) == 4
    plain = _ok(client.post("/v1/search/upload", files={"file": ("q.jpg", data.getvalue(), "image/jpeg")},
                            data={"collection": "shop", "k": "4", "group_by": "none"}))
    assert plain["group_by"] == "none" and "uri" in plain["results"][0]

    sku = rows[6]["id"]
    front = next(it for it in _ok(client.get(f"/v1/sources/{sku}"))["items"] if it["column"] == "image")
    like = _ok(client.get(f"/v1/items/{front['id']}/similar", params={"k": 4, "target": "image"}))
    assert like["group_by"] == "source" and sku not in {p["source_id"] for p in like["results"]}
    by_row = _ok(client.get(f"/v1/sources/{sku}/similar", params={"k": 4, "group_weights": '{"image": 1, "title": 0.5}'}))
    assert len(by_row["results"]) == 4 and sku not in {p["source_id"] for p in by_row["results"]}

    for params, message in (({"group_weights": '{"image": -1}'}, "greater than or equal to 0"),
                            ({"group_weights": '{"colour": 1}'}, "unknown column 'colour'"),
                            ({"group_weights": "{oops"}, "group_weights: not valid JSON"),
                            ({"group_by": "none", "group_weights": '{"image": 1}'}, "needs group_by 'source'")):
        bad = client.get(f"/v1/sources/{sku}/similar", params=params)
        assert bad.status_code == 422 and message in bad.json()["message"], (params, bad.text)
    bad = client.post("/v1/search", json={"collection": "shop", "text": "x", "group_by": "sku"})
    assert bad.status_code == 422
    bad = client.post("/v1/search", json={"collection": "shop", "text": "x", "group_weights": {"image": "high"}})
    assert bad.status_code == 422


def test_cli_prints_products_and_its_json_is_the_https(served, capsys) -> None:
    client, settings, _ = served
    argv = ["search", "-c", "shop", "--home", str(settings.home), "--database-url", settings.resolved_database_url,
            "--text", "black bag", "-k", "4", "--mode", "vector", "--group", "source"]
    got = cli_json(capsys, [*argv, "--group-weights", '{"image": 0.7, "title": 0.3}'])
    http = _ok(client.post("/v1/search", json={"collection": "shop", "text": "black bag", "k": 4, "mode": "vector",
                                               "group_by": "source", "group_weights": {"image": 0.7, "title": 0.3}}))
    assert got["results"] == http["results"] and got["group"] == http["group"] and got["group_by"] == "source"
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines[1:5]]
    plain = _ok(client.post("/v1/search", json={"collection": "shop", "text": "black bag", "k": 4, "mode": "vector"}))
    assert [(int(r[0]), r[3], int(r[4])) for r in table] == [
        (i + 1, p["source_id"], p["best"]["id"]) for i, p in enumerate(plain["results"])]
    assert "one row per product: best item" in lines[5]
    assert main([*argv, "--group-weights", '{"image": "x"}']) == EXIT_USER_ERROR
    assert "group_weights image" in capsys.readouterr().err


def test_when_one_product_holds_the_candidates_the_search_looks_further(shop, tmp_path: Path) -> None:
    searcher, _ = shop
    # a lookbook: one row with 16 views of one photo, nine rows with one photo each (25 items, 2.5 a row)
    (tmp_path / "img").mkdir()
    views = [f"v{i}" for i in range(16)]
    for i in range(16):
        photo(0).resize((160 - 2 * i, 120 - i)).save(tmp_path / "img" / f"look-{i}.jpg", quality=90)
    rows: list[dict[str, Any]] = [{"id": "LOOK", **{v: f"img/look-{i}.jpg" for i, v in enumerate(views)}}]
    for n in range(1, 10):
        photo(20 + n).save(tmp_path / "img" / f"other-{n}.jpg")
        rows.append({"id": f"OTHER-{n}", "v0": f"img/other-{n}.jpg"})
    index_manifest(searcher.settings, write_csv(tmp_path / "look.csv", rows), "lookbook",
                   media={v: "image" for v in views}, progress=False)
    look = Searcher(searcher.settings, "lookbook", catalog=searcher.catalog)
    query = io.BytesIO()
    photo(0).save(query, "JPEG", quality=95)
    first = look.run(media=("image", query.getvalue()), k=13)
    assert {r.source["id"] for r in first.results} == {"LOOK"}  # what the first round (2 x 2.5 + 8) gets
    page = products.search(look, group_by=None, media=("image", query.getvalue()), k=2)
    assert page.rounds == 2 and page.candidates == 25  # looked further (x4: 52, all there is)
    assert skus(page)[0] == "LOOK" and len(set(skus(page))) == 2
    assert len((page.products or [])[0]["items"]) == 16
