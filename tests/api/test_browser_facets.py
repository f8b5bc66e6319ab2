"""The web page's sort and facet counts for a shop (issue 15, point 4), in headless Debian Chromium: the
filters and a sort alone browse, the facets show counts per value, a facet value (by keyboard) sets its filter.
The real app in-process (``live_app``) on 8 products from a manifest, indexed with the tiny model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import MEDIA, live_app, products, write_csv

from xmodal.config import Settings
from xmodal.indexer.pipeline import index_manifest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"


def test_a_shop_page_sorts_browses_and_counts_and_a_facet_value_filters(settings: Settings, tmp_path: Path) -> None:
    import playwright.sync_api as sync_api  # in the dev extra: a missing install is a failure, not a skip

    rows = products(tmp_path, 8)
    for i, row in enumerate(rows):
        row["brand"] = ["Acme", "Tyrell", "Wayland"][i % 3]
    index_manifest(settings, write_csv(tmp_path / "p.csv", rows), "shop", media=MEDIA, progress=False)
    brands = Counter(r["brand"] for r in rows)
    sent: list[Any] = []
    with live_app(settings, "shop") as (base, _), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/search") else None)
            page.goto(base + "/")
            page.wait_for_selector("#collection option", state="attached")
            page.click("#filters-box summary")
            assert "Price ↓" in page.locator("#sort option").all_inner_texts()
            assert "Tags ↑" not in page.locator("#sort option").all_inner_texts()  # a list: counted, not sorted
            page.select_option("#sort", "price:desc")
            page.click("#filters button[type=submit]")  # no query: the sort alone browses
            page.wait_for_selector(".card")
            assert "text" not in sent[-1] and sent[-1]["sort"] == [{"field": "price", "order": "desc"}]
            # a manifest collection lists products (one card a row) and counts them
            assert page.inner_text("#status").startswith(f"Results 1–{len(rows)} of {len(rows)} ")
            assert page.locator(".card.product").count() == len(rows)
            brand = page.locator("#facets .facet").first
            assert brand.inner_text().split("\n") == ["Brand", *(f"{b} {n}" for b, n in sorted(
                brands.items(), key=lambda kv: (-kv[1], kv[0])))]
            brand.locator(".facet-value", has_text="Tyrell").focus()
            page.keyboard.press("Enter")
            page.wait_for_function("document.getElementById('status').textContent.includes('filtered')")
            assert sent[-1]["filters"] == {"and": [{"field": "brand", "op": "eq", "value": "Tyrell"}]}
            assert page.locator(".card").count() == brands["Tyrell"]
            assert page.input_value("#filter-fields input[data-field=brand]") == "Tyrell"
            assert errors == []
        finally:
            browser.close()
