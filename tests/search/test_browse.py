"""Browse, sort, facets and totals (issue 15, point 4) on a small shop: 18 products from a manifest, an image
and a title each (36 items), with brands, categories, prices (some missing), stock and tags. Every expected
value is computed here from the manifest rows, never read back from the code under test."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import module_database_url
from helpers import MEDIA, cli_json, live_app, products, write_csv

from xmodal.cli import EXIT_USER_ERROR, main
from xmodal.config import Settings
from xmodal.errors import UserError
from xmodal.indexer.pipeline import index_manifest
from xmodal.search.browse import Page, find
from xmodal.search.engine import Searcher
from xmodal.search.filters import compile_filter, metadata_fields
from xmodal.search.results import SORT_WINDOW

pytestmark = pytest.mark.backends
N = 18
ITEMS_PER_PRODUCT = 2  # an image and a title
BRANDS = ["Acme", "Tyrell", "Acme", "Wayland", "Acme", "Cyberdyne"]


database_url = pytest.fixture(scope="module", name="database_url")(module_database_url)  # one shop per backend


@pytest.fixture(scope="module")
def shop(database_url: str, tmp_path_factory: pytest.TempPathFactory,
         tiny_clip: tuple[str, str]) -> Iterator[tuple[Searcher, list[dict[str, Any]], Settings]]:
    root = tmp_path_factory.mktemp("shop")
    rows = products(root, N)
    for i, row in enumerate(rows):
        row["brand"] = BRANDS[i % len(BRANDS)]
        row["category"] = ["shoes", "bags", "hats"][i % 3]
        row["in_stock"] = "true" if i % 4 else "false"
        row["tags"] = "|".join(["red", "blue", "green"][: 1 + i % 3])
        if i % 5 == 2:
            row["price"] = ""  # no price: sorts last
        else:
            row["price"] = f"{(i * 7) % 11 + 10}.25"  # repeats: ties keep their order (relevance, or id)
    settings = Settings(home=root / "home", database_url=database_url, clip_model=tiny_clip[0],
                        clip_pretrained=tiny_clip[1], batch_size=16, exact_threshold=1000)
    assert index_manifest(settings, write_csv(root / "products.csv", rows), "shop", media=MEDIA,
                          progress=False).failed == 0
    searcher = Searcher(settings, "shop")
    yield searcher, rows, settings
    searcher.close()


def _find(searcher: Searcher, filters: dict[str, Any] | None = None, *, by_source: bool = False, **kw: Any) -> Page:
    """A page of items, or of products (``by_source``; the default of this manifest collection)."""
    fields = metadata_fields(searcher.catalog, searcher.collection_id)
    where = compile_filter(filters, fields) if filters else None
    return find(searcher, fields=fields, where=where, group_by="source" if by_source else "none", **kw)


def _price(row: dict[str, Any]) -> float | None:
    return float(row["price"]) if row["price"] else None


def _skus(page: Page) -> list[str]:
    return [r.source["id"] for r in page.outcome.results if r.source]


def test_browse_returns_exactly_the_matching_items_in_sort_order_on_disjoint_pages(shop) -> None:
    searcher, rows, _ = shop
    shoes = {"field": "category", "op": "eq", "value": "shoes"}
    want = [r for r in rows if r["category"] == "shoes"]
    pages = [_find(searcher, shoes, sort=[{"field": "price", "order": "asc"}], k=5, offset=o) for o in (0, 5, 10)]
    got = [r for p in pages for r in p.outcome.results]
    assert len({r.id for r in got}) == len(got) == len(want) * ITEMS_PER_PRODUCT  # disjoint, all of them
    assert {r.source["id"] for r in got if r.source} == {r["id"] for r in want}
    assert all(p.outcome.mode == "browse" and p.total == len(got) and p.total_exact for p in pages)
    assert [p.has_more for p in pages] == [True, True, False]
    prices = [r.metadata.get("price") for r in got]
    priced = [p for p in prices if p is not None]
    assert priced == sorted(priced) and prices == priced + [None] * (len(prices) - len(priced))
    assert len(priced) == ITEMS_PER_PRODUCT * sum(_price(r) is not None for r in want)
    assert [r.id for r in got if r.metadata.get("price") is None] == sorted(
        r.id for r in got if r.metadata.get("price") is None)  # ties (here: missing) by id

    by_id = _find(searcher, shoes, k=100)  # no sort: by id
    assert [r.id for r in by_id.outcome.results] == sorted(r.id for r in got)


def test_sort_desc_keeps_missing_values_last_and_several_keys_apply_in_order(shop) -> None:
    searcher, rows, _ = shop
    desc = _find(searcher, sort=[{"field": "price", "order": "desc"}], k=100, target="image")
    prices = [r.metadata.get("price") for r in desc.outcome.results]
    assert len(prices) == N and desc.total == N
    priced = [p for p in prices if p is not None]
    assert priced == sorted(priced, reverse=True) and prices[len(priced):] == [None] * (N - len(priced))

    two = _find(searcher, sort=[{"field": "brand"}, {"field": "price", "order": "desc"}], k=100, target="image")
    expected = sorted(rows, key=lambda r: (r["brand"], _price(r) is None, -(_price(r) or 0), r["id"]))
    assert _skus(two) == [r["id"] for r in expected]


def test_facets_count_per_value_as_the_manifest_says_in_items_and_in_products(shop) -> None:
    searcher, rows, _ = shop
    cheap = {"field": "price", "op": "lt", "value": 16}
    matching = [r for r in rows if _price(r) is not None and _price(r) < 16]  # type: ignore[operator]
    brands = Counter(r["brand"] for r in matching)
    tags = Counter(t for r in matching for t in r["tags"].split("|"))
    stock = Counter(r["in_stock"] == "true" for r in matching)
    for by_source, per in ((False, ITEMS_PER_PRODUCT), (True, 1)):
        page = _find(searcher, cheap, facets=["brand", "tags", "in_stock"], by_source=by_source, k=3)
        assert page.total == per * len(matching) and page.total_exact and page.has_more
        assert page.facets is not None
        assert {v["value"]: v["count"] for v in page.facets["brand"]["values"]} == {
            b: per * n for b, n in brands.items()}
        assert {v["value"]: v["count"] for v in page.facets["tags"]["values"]} == {t: per * n for t, n in tags.items()}
        assert {v["value"]: v["count"] for v in page.facets["in_stock"]["values"]} == {
            s: per * n for s, n in stock.items()}
        counts = [v["count"] for v in page.facets["brand"]["values"]]
        assert counts == sorted(counts, reverse=True) and page.facets["brand"]["other"] == 0


def test_facets_list_the_top_values_and_count_the_rest_as_other(shop, monkeypatch) -> None:
    searcher, rows, _ = shop
    monkeypatch.setattr("xmodal.search.browse.FACET_VALUES", 2)
    page = _find(searcher, facets=["brand"], sort=[{"field": "id"}], k=1)
    brands = Counter(r["brand"] for r in rows)
    top = sorted(brands.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(v["value"], v["count"]) for v in page.facets["brand"]["values"]] == [  # type: ignore[index]
        (b, ITEMS_PER_PRODUCT * n) for b, n in top[:2]]
    assert page.facets["brand"]["other"] == ITEMS_PER_PRODUCT * sum(n for _, n in top[2:])  # type: ignore[index]


def test_a_lexical_query_counts_every_match_exactly(shop) -> None:
    searcher, rows, _ = shop
    tyrell = [r for r in rows if r["brand"] == "Tyrell"]
    page = _find(searcher, text="Tyrell", mode="lexical", k=1, facets=["category"])
    assert page.total == ITEMS_PER_PRODUCT * len(tyrell) and page.total_exact and page.has_more
    assert page.counted == "matches"
    assert page.facets["category"]["values"] == [  # type: ignore[index]
        {"value": c, "count": ITEMS_PER_PRODUCT * n} for c, n in sorted(Counter(r["category"] for r in tyrell).items())]
    products_page = _find(searcher, text="Tyrell", mode="lexical", k=len(tyrell), by_source=True)
    assert products_page.total == len(tyrell)
    last = _find(searcher, text="Tyrell", mode="lexical", k=2, offset=ITEMS_PER_PRODUCT * len(tyrell) - 2)
    assert len(last.outcome.results) == 2 and not last.has_more


def test_a_vector_query_counts_its_window_and_says_when_it_is_an_estimate(shop) -> None:
    searcher, rows, _ = shop
    bags = {"field": "category", "op": "eq", "value": "bags"}
    n_bags = ITEMS_PER_PRODUCT * sum(r["category"] == "bags" for r in rows)
    small = _find(searcher, bags, text="leather boot", mode="vector", k=3)
    assert (small.total, small.total_exact, small.has_more, small.window) == (3, False, True, 3)
    whole = _find(searcher, bags, text="leather boot", mode="vector", k=100)
    assert (whole.total, whole.total_exact, whole.has_more) == (n_bags, True, False)

    sorted_pages = [_find(searcher, bags, text="leather boot", mode="vector", k=4, offset=o,
                          sort=[{"field": "price", "order": "asc"}], facets=["brand"]) for o in range(0, n_bags + 4, 4)]
    assert all(p.window == SORT_WINDOW and p.total == n_bags and p.total_exact for p in sorted_pages)
    got = [r for p in sorted_pages for r in p.outcome.results]
    assert len({r.id for r in got}) == n_bags  # pages of one sorted window: disjoint, complete
    prices = [r.metadata.get("price") for r in got]
    priced = [p for p in prices if p is not None]
    assert priced == sorted(priced) and prices == priced + [None] * (len(prices) - len(priced))
    relevance = {r.id: rank for rank, r in enumerate(whole.outcome.results)}
    for a, b in zip(got, got[1:], strict=False):  # ties keep the relevance order
        if a.metadata.get("price") == b.metadata.get("price"):
            assert relevance[a.id] < relevance[b.id]
    brands = Counter(r["brand"] for r in rows if r["category"] == "bags")
    assert {v["value"]: v["count"] for v in sorted_pages[0].facets["brand"]["values"]} == {  # type: ignore[index]
        b: ITEMS_PER_PRODUCT * n for b, n in brands.items()}
    products = _find(searcher, bags, text="leather boot", mode="vector", k=4, facets=["brand"], by_source=True)
    assert products.total == n_bags // ITEMS_PER_PRODUCT and products.facets["brand"]["values"] == [  # type: ignore[index]
        {"value": b, "count": n} for b, n in sorted(brands.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_hybrid_and_lexical_queries_sort_their_window(shop) -> None:
    searcher, rows, _ = shop
    hybrid = _find(searcher, text="leather boot", k=100, sort=[{"field": "brand", "order": "desc"}])
    assert hybrid.outcome.mode == "hybrid" and hybrid.window == SORT_WINDOW
    assert hybrid.total == len(hybrid.outcome.results) == N * ITEMS_PER_PRODUCT and hybrid.total_exact
    brands = [r.metadata["brand"] for r in hybrid.outcome.results]
    assert brands == sorted(brands, reverse=True)
    tyrell = _find(searcher, text="Tyrell", mode="lexical", k=100, sort=[{"field": "price"}], target="image")
    want = sorted((r for r in rows if r["brand"] == "Tyrell"), key=lambda r: (_price(r) is None, _price(r) or 0))
    assert [_price(r) for r in want] == [r.metadata.get("price") for r in tyrell.outcome.results]
    assert set(_skus(tyrell)) == {r["id"] for r in want} and tyrell.total == len(want)


def test_bad_sort_and_facet_fields_and_a_bare_request_are_refused_with_the_fields(shop) -> None:
    searcher, _, _ = shop
    with pytest.raises(UserError, match=r"sort\[0\]\.field: 'colour' is not a field .*sortable fields: id, brand, "
                                        r"category, .*in_stock, price, .*title") as bad:
        _find(searcher, sort=[{"field": "colour"}])
    assert "tags" not in str(bad.value)
    with pytest.raises(UserError, match=r"'tags' is a list"):
        _find(searcher, text="boot", sort=[{"field": "tags"}])
    with pytest.raises(UserError, match=r"sort\[0\]\.order"):
        _find(searcher, sort=[{"field": "price", "order": "up"}])
    with pytest.raises(UserError, match=r"sort\[1\]: expected"):
        _find(searcher, sort=[{"field": "price"}, {"field": "brand", "direction": "desc"}])
    with pytest.raises(UserError, match="min_relevance needs a query"):
        _find(searcher, {"field": "category", "op": "eq", "value": "bags"}, min_relevance=1.0)
    with pytest.raises(UserError, match=r"facets\[1\]: 'colour' is not a field"):
        _find(searcher, facets=["brand", "colour"])
    with pytest.raises(UserError, match="or filters, a sort or facets to browse"):
        _find(searcher)



def test_http_browses_sorts_and_counts_and_refuses_a_bad_sort_field_with_the_list(shop) -> None:
    searcher, rows, settings = shop
    hats = {"field": "category", "op": "eq", "value": "hats"}
    want = sorted((r for r in rows if r["category"] == "hats"), key=lambda r: (_price(r) is None, -(_price(r) or 0)))
    with live_app(settings, "shop") as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        pages = [client.post("/v1/search", json={"collection": "shop", "filters": hats, "target": "image", "k": 4,
                                                 "offset": o, "sort": [{"field": "price", "order": "desc"}],
                                                 "facets": ["brand"]}) for o in (0, 4)]
        assert all(p.status_code == 200 for p in pages), pages[0].text
        first, last = (p.json() for p in pages)
        assert first["mode"] == "browse" and first["sort"] == [{"field": "price", "order": "desc"}]
        assert first["group_by"] == "source"  # a manifest collection lists products by default
        assert [r["source_id"] for p in (first, last) for r in p["results"]] == [r["id"] for r in want]
        assert all(r["best"]["modality"] == "image" for p in (first, last) for r in p["results"])
        assert (first["total"], first["total_exact"], first["has_more"], last["has_more"]) == (len(want), True, True,
                                                                                               False)
        assert {v["value"]: v["count"] for v in first["facets"]["brand"]["values"]} == Counter(r["brand"] for r in want)
        assert first["counted"] == "matches" and first["window"] is None and "sql" in first["timings_ms"]

        query = client.post("/v1/search", json={"collection": "shop", "text": "boot", "mode": "vector", "k": 2,
                                                "group_by": "none"})
        assert query.status_code == 200 and query.json()["total"] == 2 and query.json()["has_more"]
        assert query.json()["total_exact"] is False and query.json()["window"] == 2

        bad = client.post("/v1/search", json={"collection": "shop", "filters": hats, "sort": [{"field": "colour"}]})
        assert bad.status_code == 422 and "sortable fields: id, brand, category" in bad.json()["message"]
        listed = client.post("/v1/search", json={"collection": "shop", "text": "boot", "sort": [{"field": "tags"}]})
        assert listed.status_code == 422 and "'tags' is a list" in listed.json()["message"]
        bare = client.post("/v1/search", json={"collection": "shop"})
        assert bare.status_code == 422
        order = client.post("/v1/search", json={"collection": "shop", "filters": hats,
                                                "sort": [{"field": "price", "order": "up"}]})
        assert order.status_code == 422


def test_cli_browses_with_a_filter_sort_and_facets_and_prints_the_total(shop, capsys) -> None:
    searcher, rows, settings = shop
    bags = {"field": "category", "op": "eq", "value": "bags"}
    n = ITEMS_PER_PRODUCT * sum(r["category"] == "bags" for r in rows)
    argv = ["search", "-c", "shop", "--home", str(settings.home), "--database-url", settings.resolved_database_url,
            "--filter", json.dumps(bags), "--sort", "price:desc", "--sort", "id", "--facet", "in_stock", "-k", "3",
            "--group", "none"]
    got = cli_json(capsys, argv)
    assert got["mode"] == "browse" and got["total"] == n and got["has_more"] and len(got["results"]) == 3
    assert got["sort"] == [{"field": "price", "order": "desc"}, {"field": "id", "order": "asc"}]
    assert set(got["timings_ms"]) == {"encode", "ann", "sql"}
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[3] for line in out[1:4]] == [str(r["id"]) for r in got["results"]]
    assert out[4] == f"{n} results, sorted by price desc, id asc" and out[5].startswith("  in_stock: ")
    assert main([*argv, "--text", "boot", "--mode", "vector", "--facet", "brand"]) == 0
    assert f"\n{n} results among the best {SORT_WINDOW} by relevance" in capsys.readouterr().out
    assert main([*argv[:9], "-k", "3", "--text", "boot", "--mode", "vector", "--group", "none"]) == 0
    assert "\n3 results among the best 3 by relevance (estimated)\n" in capsys.readouterr().out
    assert main(["search", "-c", "shop", "--home", str(settings.home), "--database-url",
                 settings.resolved_database_url, "--sort", "colour"]) == EXIT_USER_ERROR
    assert "sortable fields: id, brand" in capsys.readouterr().err


def test_a_browse_of_a_manifest_collection_lists_products_sorted_and_counts_them(shop) -> None:
    """group_by source (the default here): one row per product, in the sort's order, totals and facets counting
    products; pages disjoint."""
    searcher, rows, _ = shop
    shoes = {"field": "category", "op": "eq", "value": "shoes"}
    want = sorted((r for r in rows if r["category"] == "shoes"), key=lambda r: (_price(r) is None, _price(r) or 0))
    pages = [_find(searcher, shoes, by_source=True, sort=[{"field": "price", "order": "asc"}], facets=["brand"], k=2,
                   offset=o) for o in range(0, len(want), 2)]
    assert all(p.group_by == "source" and p.grouped is not None and p.total == len(want) for p in pages)
    listed = [prod for p in pages for prod in (p.grouped.products if p.grouped else [])]
    assert [prod["source_id"] for prod in listed] == [r["id"] for r in want]
    assert all(len(prod["items"]) == ITEMS_PER_PRODUCT for prod in listed)
    assert [p.has_more for p in pages] == [True] * (len(pages) - 1) + [False]
    brands = {v["value"]: v["count"] for v in pages[0].facets["brand"]["values"]} if pages[0].facets else {}
    assert brands == Counter(r["brand"] for r in want)
    query = _find(searcher, shoes, by_source=True, text="leather boot", mode="vector", k=3,
                  sort=[{"field": "price", "order": "desc"}])
    got = query.grouped.products if query.grouped else []
    prices = [_price(next(r for r in rows if r["id"] == prod["source_id"])) for prod in got]
    assert len(got) == 3 and len({prod["source_id"] for prod in got}) == 3
    assert [p for p in prices if p is not None] == sorted((p for p in prices if p is not None), reverse=True)
