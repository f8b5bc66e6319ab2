"""Lexical search beside vectors (issue 15, point 1): what a shop's search engineer met on a products
manifest. ``"text": "SKU-000123"`` did not return SKU-000123 in the top 10, and a brand query ("Tyrell",
3 products) returned other brands. The catalog's full-text index (SQLite FTS5, PostgreSQL tsvector) is
kept in step with the items in the same transactions; a request's ``mode`` is vector, lexical or hybrid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import cli_json, live_app, write_csv, write_photos
from sqlalchemy import text

from xmodal.cli import EXIT_USER_ERROR, main
from xmodal.config import Settings
from xmodal.errors import UserError
from xmodal.indexer.pipeline import index_manifest, index_sources
from xmodal.search import engine
from xmodal.search.engine import Searcher
from xmodal.storage.catalog import Catalog
from xmodal.storage.catalog.lexical import TABLE, query_terms, tokens

N = 150
TYRELL = (7, 70, 123)
BRANDS = ("Acme", "Wallace", "Weyland", "Cyberdyne", "Soylent")
CATEGORIES = ("shoes", "bags", "hats")
MEDIA = {"image": "image", "title": "text"}


def shop_rows(folder: Path, n: int = N) -> list[dict[str, Any]]:
    """n products (an image and a title each): SKU ids, brands (Tyrell on 3), category, price, stock, tags."""
    photos = write_photos(folder / "img", n)
    return [{"id": f"SKU-{i:06d}", "image": f"img/{p.name}",
             "title": f"{CATEGORIES[i % 3][:-1]} model {i} in {('red', 'black', 'tan')[i % 3]} leather",
             "brand": "Tyrell" if i in TYRELL else BRANDS[i % len(BRANDS)], "category": CATEGORIES[i % 3],
             "price": f"{10 + i}.50", "in_stock": "true" if i % 2 else "false", "tags": f"sale|size{i % 4}"}
            for i, p in enumerate(photos)]


@pytest.fixture
def shop(settings: Settings, tmp_path: Path) -> tuple[Settings, Path, list[dict[str, Any]]]:
    rows = shop_rows(tmp_path)
    manifest = write_csv(tmp_path / "products.csv", rows)
    index_manifest(settings, manifest, "shop", media=MEDIA, progress=False)
    return settings, manifest, rows


def run(settings: Settings, query: str, **kw: Any) -> list[Any]:
    searcher = Searcher(settings, "shop")
    try:
        return searcher.run(text=query, **kw).results
    finally:
        searcher.close()


def sources(results: list[Any]) -> list[str]:
    return [r.source["id"] for r in results]


def test_tokens_keep_skus_and_model_numbers_whole_and_in_parts() -> None:
    assert tokens("SKU-000123 Tyrell XJ900 Größe") == ["sku000123", "sku", "000123", "tyrell", "xj900", "xj", "900",
                                                       "grösse"]
    assert query_terms("sku-000123  SKU-000123 tyrell") == ["sku000123", "tyrell"]
    assert query_terms("-- !!") == []


@pytest.mark.backends  # FTS5 and tsvector: the SQL differs by dialect, the answers must not
def test_a_sku_query_finds_its_product_first(shop) -> None:
    settings, _, _ = shop
    for query, mode in (("SKU-000123", None), ("SKU-000123", "hybrid"), ("sku-000123", "lexical"),
                        (" SKU-000123 ", "lexical")):
        results = run(settings, query, k=10, mode=mode)
        assert sources(results)[:2] == ["SKU-000123", "SKU-000123"], (query, mode, sources(results))
        assert all(r.exact for r in results[:2]) and not any(r.exact for r in results[2:])
    hybrid = run(settings, "SKU-000123", k=10)
    assert {r.method for r in hybrid[:2]} <= {"hybrid", "lexical"}
    # a SKU's parts match too, and the whole SKU ranks its product first even without the exact match
    assert sources(run(settings, "000123", k=3, mode="lexical"))[:2] == ["SKU-000123"] * 2
    assert sources(run(settings, "sku000123", k=3, mode="lexical"))[:2] == ["SKU-000123"] * 2


def test_a_hybrid_query_gives_the_same_page_whether_its_text_is_encoded_first_or_kept(shop, monkeypatch) -> None:
    """A text to encode has its lexical list searched in a thread beside the encoder; a text encoded before
    (its vector kept) has it searched after the vector search, in turn: the page is the same either way."""
    settings, _, _ = shop
    beside: list[str] = []
    real = engine._BESIDE.submit

    def counted(fn: Any, *args: Any, **kw: Any) -> Any:
        beside.append(fn.__name__)
        return real(fn, *args, **kw)

    monkeypatch.setattr(engine._BESIDE, "submit", counted)
    searcher = Searcher(settings, "shop")
    try:
        pages = []
        for _ in range(2):
            outcome = searcher.run(text="tan leather Tyrell", k=12, mode="hybrid")
            pages.append([(r.id, r.method, r.rrf, r.lexical) for r in outcome.results])
        assert beside == ["lexical_results"]  # the first only: its text had to be encoded
        assert pages[0] == pages[1] and "lexical" in {m for _, m, _, _ in pages[0]}
    finally:
        searcher.close()


@pytest.mark.backends
def test_a_brand_query_in_lexical_mode_returns_only_that_brand(shop) -> None:
    settings, _, _ = shop
    results = run(settings, "Tyrell", k=12, mode="lexical")
    assert sorted(set(sources(results))) == [f"SKU-{i:06d}" for i in TYRELL]
    assert len(results) == 6 and all(r.metadata["brand"] == "Tyrell" for r in results)
    assert all(r.method == "lexical" and r.space == "lexical" and r.lexical is not None and r.lexical > 0
               for r in results)
    # hybrid: the brand's items are on the first page among the vector results
    hybrid = run(settings, "tyrell", k=12)
    assert {f"SKU-{i:06d}" for i in TYRELL} <= set(sources(hybrid))


@pytest.mark.backends
def test_filters_and_target_narrow_the_lexical_list(shop) -> None:
    settings, _, rows = shop
    from xmodal.search.filters import compile_filter, metadata_fields

    searcher = Searcher(settings, "shop")
    try:
        where = compile_filter({"field": "category", "op": "eq", "value": "bags"},
                               metadata_fields(searcher.catalog, searcher.collection_id))
        got = searcher.run(text="Tyrell", k=12, mode="lexical", where=where).results
        images = searcher.run(text="Tyrell", k=12, mode="lexical", target="image").results
        # no model was loaded for lexical queries
        assert all(st.encoder is None for st in searcher._spaces.values())
    finally:
        searcher.close()
    want = {r["id"] for i, r in enumerate(rows) if i in TYRELL and r["category"] == "bags"}
    assert want and set(sources(got)) == want
    assert len(images) == 3 and {r.modality for r in images} == {"image"}


@pytest.mark.backends
def test_inserts_metadata_updates_and_deletes_are_searchable_at_once(shop, tmp_path) -> None:
    settings, manifest, rows = shop
    searcher = Searcher(settings, "shop")  # a long-lived searcher, as the service holds one
    try:
        rows[5]["brand"] = "Tyrell"  # metadata only: the vector is kept
        del rows[70]  # a Tyrell product leaves the manifest
        extra = write_photos(tmp_path / "img", 1, start=N)[0]
        rows.append({"id": "SKU-900001", "image": f"img/{extra.name}", "title": "hat model new", "brand": "Tyrell",
                     "category": "hats", "price": "99.50", "in_stock": "true", "tags": "new"})
        write_csv(manifest, rows)
        summary = index_manifest(settings, manifest, "shop", media=MEDIA, progress=False)
        assert summary.embedded == 2 and summary.deleted == 2
        got = searcher.run(text="Tyrell", k=20, mode="lexical").results
        assert set(sources(got)) == {"SKU-000005", "SKU-000007", "SKU-000123", "SKU-900001"}
        assert "SKU-000005" not in sources(searcher.run(text=BRANDS[0], k=100, mode="lexical").results)
        assert searcher.run(text="SKU-000070", k=5, mode="lexical").results == []
    finally:
        searcher.close()


@pytest.mark.backends
def test_a_failed_item_is_not_returned(settings, tmp_path) -> None:
    rows = shop_rows(tmp_path, 12)
    (tmp_path / rows[3]["image"]).write_bytes(b"not an image at all")
    manifest = write_csv(tmp_path / "products.csv", rows)
    summary = index_manifest(settings, manifest, "shop", media=MEDIA, progress=False)
    assert summary.failed == 1
    results = run(settings, "SKU-000003", k=5, mode="lexical")
    assert [(r.source["id"], r.modality) for r in results] == [("SKU-000003", "text")]


def test_the_whole_text_of_a_text_file_is_indexed_not_only_its_snippet(settings, tmp_path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "long.txt").write_text("filler words here " * 60 + "zanzibar appears late\n", encoding="utf-8")
    (docs / "short.txt").write_text("nothing special\n", encoding="utf-8")
    index_sources(settings, [docs], "shop", progress=False)
    results = run(settings, "Zanzibar", k=5, mode="lexical")
    assert [Path(r.uri).name for r in results] == ["long.txt"]


@pytest.mark.backends
def test_each_collection_finds_only_its_own_words_and_all_words_come_first(settings, tmp_path) -> None:
    for name, texts in (("one", {"a.txt": "zanzibar red kettle", "b.txt": "zanzibar", "c.txt": "red kettle"}),
                        ("two", {"d.txt": "zanzibar red kettle"})):
        docs = tmp_path / name
        docs.mkdir()
        for file, body in texts.items():
            (docs / file).write_text(body + "\n", encoding="utf-8")
        index_sources(settings, [docs], name, progress=False)
    searcher = Searcher(settings, "one")
    try:
        got = [Path(r.uri).name for r in searcher.run(text="zanzibar kettle", k=5, mode="lexical").results]
        assert got[0] == "a.txt" and sorted(got[1:]) == ["b.txt", "c.txt"]  # both words first, then either
    finally:
        searcher.close()


def test_an_item_query_in_lexical_mode_is_refused_with_a_message(shop) -> None:
    settings, _, _ = shop
    searcher = Searcher(settings, "shop")
    try:
        with pytest.raises(UserError, match="needs a text query"):
            searcher.run(item=1, mode="lexical")
        with pytest.raises(UserError, match="unknown mode"):
            searcher.run(text="boot", mode="words")
        assert searcher.run(item=1, k=3).mode == "vector"
    finally:
        searcher.close()


@pytest.mark.backends
def test_an_older_catalog_gets_the_index_filled_when_opened_for_writing(shop) -> None:
    settings, _, _ = shop
    catalog = Catalog(settings.resolved_database_url)
    with catalog.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {TABLE}"))
    catalog.close()
    searcher = Searcher(settings, "shop")  # a reader does not change the catalog: it says what to do
    try:
        with pytest.raises(UserError, match="run `xmodal index` once"):
            searcher.run(text="Tyrell", mode="lexical")
        assert searcher.run(text="Tyrell", k=3).mode == "vector"  # the default falls back to vectors
    finally:
        searcher.close()
    Catalog(settings.resolved_database_url).close()  # what `xmodal index` does first
    results = run(settings, "Tyrell", k=12, mode="lexical")
    assert sorted(set(sources(results))) == [f"SKU-{i:06d}" for i in TYRELL]
    assert sources(run(settings, "SKU-000123", k=2, mode="lexical")) == ["SKU-000123"] * 2


@pytest.mark.backends
def test_http_and_cli_give_the_same_ids(shop, capsys) -> None:
    settings, _, _ = shop
    argv = ["search", "-c", "shop", "--home", str(settings.home), "--database-url", settings.resolved_database_url,
            "--text", "Tyrell", "-k", "8"]
    with live_app(settings, "shop") as (base, _), httpx.Client(base_url=base, timeout=30) as client:
        for mode in ("lexical", "hybrid", "vector"):
            body = client.post("/v1/search", json={"collection": "shop", "text": "Tyrell", "k": 8, "mode": mode,
                                                   "group_by": "none"})
            assert body.status_code == 200, body.text
            http = body.json()
            cli = cli_json(capsys, [*argv, "--mode", mode, "--group", "none"])
            assert [r["id"] for r in http["results"]] == [r["id"] for r in cli["results"]]
            assert http["mode"] == cli["mode"] == mode
        default = client.post("/v1/search", json={"collection": "shop", "text": "SKU-000123", "group_by": "none"}).json()
        assert default["mode"] == "hybrid" and default["fusion"].startswith("rrf(k=60)")
        assert [r["source"]["id"] for r in default["results"][:2]] == ["SKU-000123"] * 2
        assert default["results"][0]["exact"] is True and "lexical" in default["results"][0]
        first = default["results"][0]["id"]
        product = client.post("/v1/search", json={"collection": "shop", "text": "SKU-000123"}).json()  # by default
        assert product["results"][0]["source_id"] == "SKU-000123" and product["results"][0]["exact"] is True
        assert "SKU-000123" not in [p["source_id"] for p in product["results"][1:]]
        refused = client.post("/v1/search", json={"collection": "shop", "item_id": first, "mode": "lexical"})
        assert refused.status_code == 422 and "needs a text query" in refused.json()["message"]
    assert main([*argv[:-4], "--item", str(first), "--mode", "lexical"]) == EXIT_USER_ERROR
    assert "needs a text query" in capsys.readouterr().err


def test_a_long_lived_searcher_turns_hybrid_on_when_a_run_brings_the_first_words(settings: Settings,
                                                                                   tmp_path: Path) -> None:
    """A collection of photos alone has no words; a metadata-only change (no new index version) that
    brings some is seen by a searcher that was already serving, without a restart."""
    from xmodal.storage.catalog import ItemOutcome, SourceFields

    write_photos(tmp_path / "pics", 6)
    index_sources(settings, [tmp_path / "pics"], "pics", progress=False)
    searcher = Searcher(settings, "pics")
    try:
        for _ in range(2):  # the first query loads the index version too
            assert searcher.run(text="Tyrell", k=3).mode == "vector"
        cid = searcher.collection_id
        target = sorted(state.id for state in searcher.catalog.item_states(cid).values())[3]
        searcher.catalog.update_source_meta([ItemOutcome(target, "ok", None, None, None, None,
                                                         SourceFields("digest", {"brand": "Tyrell"}))])
        outcome = searcher.run(text="Tyrell", k=3)
        assert outcome.mode == "hybrid"
        assert outcome.results[0].id == target
    finally:
        searcher.close()


@pytest.mark.backends
def test_a_hybrid_query_scores_only_the_newest_matches_of_a_common_word(shop, monkeypatch) -> None:
    """The hybrid lexical list is bounded (search.lexical.HYBRID_BOUND): a brand on 60 of the 300 items
    lists its newest 10 rows only (on SQLite newest first and unscored: bm25 would count every match of the
    word first); a word with fewer matches than the bound is scored over all of them; lexical mode still
    ranks every match; a SKU is found either way."""
    settings, _, rows = shop
    acme = sorted(i for i, r in enumerate(rows) if r["brand"] == "Acme")
    catalog = Catalog(settings.resolved_database_url, create=False)
    try:
        cid = catalog.collection_id("shop")
        every = catalog.lexical_search(cid, ["acme"], limit=200)
        bounded = catalog.lexical_search(cid, ["acme"], limit=100, bound=10)
        texts = catalog.lexical_search(cid, ["acme"], limit=100, bound=10, modality="text")  # narrowed in the bound
        loose = catalog.lexical_search(cid, ["acme"], limit=200, bound=1000)  # fewer matches than the bound
    finally:
        catalog.close()
    assert len(every) == 2 * len(acme) and {it.source_id for it, _ in every} == {f"SKU-{i:06d}" for i in acme}
    assert all(score is not None for _, score in every)
    assert [(it.id, score) for it, score in loose] == [(it.id, score) for it, score in every]
    newest = sorted((it.id for it, _ in every), reverse=True)[:10]
    assert sorted(it.id for it, _ in bounded) == sorted(newest)
    modality = {it.id: it.modality for it, _ in every}
    assert sorted(it.id for it, _ in texts) == sorted(i for i in newest if modality[i] == "text") != []
    if catalog.backend == "sqlite":
        assert [(it.id, score) for it, score in bounded] == [(i, None) for i in newest]
        assert [it.id for it, _ in texts] == [i for i in newest if modality[i] == "text"]
    else:  # ts_rank has no count of every match to make first: the newest are scored
        assert all(score is not None for _, score in bounded)
    monkeypatch.setattr("xmodal.search.engine.HYBRID_BOUND", 10)
    hybrid = [r for r in run(settings, "Acme", k=40, mode="hybrid") if r.method in ("lexical", "hybrid")]
    assert hybrid and {r.id for r in hybrid} <= set(newest)
    assert sources(run(settings, "SKU-000123", k=2, mode="hybrid")) == ["SKU-000123"] * 2
