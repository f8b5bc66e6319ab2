"""The web page end to end in headless Debian Chromium, driven by Playwright, against `xmodal serve`.

Needs /usr/bin/chromium (scripts/install-browser.sh) and the `playwright` package (no `playwright install`:
the browser is Debian's). The server is a real subprocess on a small collection indexed with the tiny model.
"""

from __future__ import annotations

import json
import os
import re
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import MEDIA, ROOT, live_app, products, serving, write_csv, write_photos, write_texts

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # chromium and a real `xmodal serve`
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "screenshot.png"
COLLECTION = "catalog"
PAGE_SIZE = 24  # K in xmodal/api/static/app.js


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str]) -> tuple[dict[str, str], Path]:
    """A collection of 20 JPEGs, 3 PNGs and 2 texts indexed with the tiny model: (server env, media folder)."""
    from xmodal.cli import main

    root = tmp_path_factory.mktemp("web")
    media = root / "media"
    write_photos(media / "photos", 20)
    write_photos(media / "png", 3, start=40, ext="png")
    write_texts(media / "notes", {"boots.txt": "Red leather ankle boots with a low heel.",
                                  "beach.md": "# Beach\nWaves breaking on a sandy shore."})
    xmodal_env = {"XMODAL_HOME": str(root / "home"), "XMODAL_CLIP_MODEL": tiny_clip[0],
                  "XMODAL_CLIP_PRETRAINED": tiny_clip[1]}
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("XMODAL_")]:
            mp.delenv(name)
        for name, value in xmodal_env.items():
            mp.setenv(name, value)
        assert main(["index", str(media), "--collection", COLLECTION, "--no-progress"]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(xmodal_env)
    return env, media


@pytest.fixture(scope="module")
def server(indexed: tuple[dict[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env, _ = indexed
    with serving(env, tmp_path_factory.mktemp("log") / "serve.log", COLLECTION) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    import playwright.sync_api as sync_api  # in the dev extra: a missing install is a failure, not a skip
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian chromium is missing: scripts/install-browser.sh installs it")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[str], Any]]:
    """Opens the page at a base URL in a fresh context; any request to another origin is refused and recorded."""
    contexts: list[Any] = []
    foreign: list[str] = []

    def _open(base: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)

        def gate(route: Any) -> None:
            if route.request.url.startswith(base + "/"):
                route.continue_()
            else:
                foreign.append(route.request.url)
                route.abort()

        context.route("**/*", gate)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(base + "/")
        return page

    try:
        yield _open
        assert foreign == [], f"the page requested other origins: {foreign}"
    finally:
        for context in contexts:
            context.close()


def cards(page: Any) -> list[str]:
    return [c.inner_text() for c in page.locator(".card .name").all()]


def drop_file(page: Any, path: Path, mime: str) -> None:
    """A real drop event on the drop zone, with a DataTransfer holding the file's bytes."""
    page.evaluate(
        """([bytes, name, type]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""", [list(path.read_bytes()), path.name, mime])


def shown_fields(page: Any) -> set[str]:
    return set(page.eval_on_selector_all("#filter-fields [data-field]", "es => es.map(e => e.dataset.field)"))


def search_bodies(page: Any) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/search") else None)
    return bodies


def stubbed(page: Any, name: str, modalities: dict[str, int], fields: dict[str, str], result: dict[str, Any]) -> Any:
    """The page on a stubbed API: one collection ``name`` (its modalities and metadata fields) whose every search
    and upload answers with ``result`` alone; reloaded, the collection listed."""
    listing = {"collections": [{"name": name, "items": {"ok": 2}, "modalities": modalities, "metadata_fields": fields,
                                "index_version": 1, "model": None}]}
    results = {"collection": name, "target": "any", "k": PAGE_SIZE, "offset": 0, "index_version": 1,
               "timings_ms": {"total": 1.0}, "results": [result]}
    page.route("**/v1/collections", lambda r: r.fulfill(json=listing))
    for path in ("**/v1/search", "**/v1/search?*", "**/v1/search/upload"):
        page.route(path, lambda r: r.fulfill(json=results))
    page.reload()
    page.wait_for_selector(f"#collection option[value={name}]", state="attached")
    return page


def test_search_drop_similar_filter_and_errors(server: str, indexed: tuple[dict[str, str], Path],
                                              open_page: Callable[[str], Any]) -> None:
    _, media = indexed
    page = open_page(server)
    page.wait_for_selector(f"#collection option[value={COLLECTION}]", state="attached")
    targets = page.eval_on_selector_all("#target option", "os => os.map(o => o.value)")
    assert targets == ["any", "image", "text"]  # from the collection's modalities
    fields = page.eval_on_selector_all("#filter-fields [data-field]", "es => es.map(e => e.dataset.field)")
    assert "format" in fields and "width" in fields and "snippet" not in fields
    # the empty page says what to do and what the collection holds; the filters wait, closed, labelled in words
    assert page.is_visible("#hint")
    assert "drop an image" in page.inner_text("#hint") and "23 images, 2 texts" in page.inner_text("#hint")
    assert page.get_attribute("#filters-box", "open") is None and page.is_hidden("#filter-fields")
    page.click("#filters-box summary")
    labels = page.locator("#filter-fields .field").all_inner_texts()
    assert any(t.startswith("Width (px)") for t in labels) and any(t.startswith("Length (characters)") for t in labels)
    assert not any(t.startswith(("width", "chars")) for t in labels)
    page.select_option("#target", "text")  # only the fields of the kinds in view, and the catalog's
    assert shown_fields(page) == {"chars", "title"}
    page.select_option("#target", "image")
    assert shown_fields(page) == {"format", "height", "title", "width"}
    page.select_option("#target", "any")
    sent = search_bodies(page)

    # (1) type a query, press Enter: a full page of cards; then the next page, and back
    page.fill("#q", "red boots")
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    assert page.is_hidden("#hint") and page.is_hidden("#query-preview")
    assert page.locator(".card").count() == PAGE_SIZE  # 25 items, 24 a page
    assert sent[-1] == {"collection": COLLECTION, "text": "red boots", "item_id": None, "target": "any",
                        "k": PAGE_SIZE, "offset": 0, "filters": None, "segments": 4, "min_relevance": None}
    assert page.locator(".card img").count() + page.locator(".card .text").count() == PAGE_SIZE  # 23 + 1 here
    # one page mixes the kinds and says what it holds; the text holding the query's words comes first (hybrid:
    # words beside vectors), the cards found by vectors alone follow in order of relevance
    assert re.search(r": \d+ images, \d+ texts?|: \d+ texts?, \d+ images", page.inner_text("#status"))
    assert "boots.txt" in page.locator(".card").first.inner_text()
    shown = [float(c.get_attribute("data-relevance")) for c in page.locator(".card").all()[1:]]
    assert shown == sorted(shown, reverse=True)
    assert page.locator(".card .score").first.inner_text().split(" · ")[1].startswith("relevance ")
    assert page.get_attribute("#results", "aria-busy") == "false"
    page.click("#next")
    page.wait_for_function("document.getElementById('page').textContent === 'page 2'")
    assert page.locator(".card").count() == 1 and page.is_disabled("#next") and not page.is_disabled("#prev")
    assert sent[-1]["offset"] == PAGE_SIZE
    page.click("#prev")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {PAGE_SIZE}")
    assert page.is_disabled("#prev")

    # target "text": only text cards, each showing its snippet
    page.select_option("#target", "text")
    page.wait_for_function("document.querySelectorAll('.card').length === 2")
    assert {c.get_attribute("data-modality") for c in page.locator(".card").all()} == {"text"}
    assert any("Red leather ankle boots" in t for t in page.locator(".card .text").all_inner_texts())
    page.select_option("#target", "any")

    # (2) drop an image on the drop zone: that image comes back first, shown by its thumbnail
    dropped = media / "photos" / "photo_0007.jpg"
    drop_file(page, dropped, "image/jpeg")
    page.wait_for_function("document.getElementById('status').textContent.includes('photo_0007.jpg')")
    first = page.locator(".card").first
    assert first.locator(".name").inner_text() == "photo_0007.jpg"
    # the dropped image is shown above the results, from a blob URL
    assert page.is_visible("#query-preview") and "photo_0007.jpg" in page.inner_text("#query-name")
    page.wait_for_function("(i => i && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)("
                           "document.querySelector('#query-preview img'))")
    assert first.locator("img").get_attribute("src").endswith("/thumbnail")
    assert first.locator("a.original").get_attribute("href").endswith("/media")
    page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")

    # "strong matches only": the dropped image stands out; what only chance ranks next is left out
    page.check("#strong")
    page.wait_for_function("document.querySelectorAll('.card').length < 5")
    assert cards(page)[0] == "photo_0007.jpg" and page.locator(".card .score.strong").count() == page.locator(
        ".card").count()
    # a query with no standout match: "no good match", no noise; "show the closest anyway" brings them back
    page.fill("#q", "zq xv ww kj")
    page.press("#q", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('No good match')")
    assert page.locator(".card").count() == 0 and page.is_visible("#nomatch") and sent[-1]["min_relevance"] == 1
    page.click("#closest")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {PAGE_SIZE}")
    assert not page.is_checked("#strong") and page.is_hidden("#nomatch") and sent[-1]["min_relevance"] is None
    drop_file(page, dropped, "image/jpeg")
    page.wait_for_function("document.getElementById('status').textContent.includes('photo_0007.jpg')")
    first = page.locator(".card").first

    # (3) "similar" on that card: results, without the item itself
    first_id = first.get_attribute("data-id")
    first.locator("button.similar").click()
    page.wait_for_function("document.getElementById('status').textContent.includes('like photo_0007.jpg')")
    similar_ids = [c.get_attribute("data-id") for c in page.locator(".card").all()]
    assert len(similar_ids) == PAGE_SIZE and first_id not in similar_ids
    assert page.is_hidden("#query-preview")  # the query is that item now, not the file
    # "Clear" on a dropped file: back to the empty page and its hint
    drop_file(page, dropped, "image/jpeg")
    page.wait_for_selector("#query-preview img")
    page.wait_for_function("document.getElementById('status').textContent.includes('photo_0007.jpg')")
    page.click("#clear-query")
    assert page.is_hidden("#query-preview") and page.locator(".card").count() == 0 and page.is_visible("#hint")

    # (4) a metadata filter: format = PNG leaves the 3 PNGs, and the request says so
    page.fill("#q", "a photo")
    page.press("#q", "Enter")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {PAGE_SIZE}")
    page.fill("#filter-fields input[data-field=format]", "PNG")
    page.click("#filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    assert sorted(cards(page)) == ["photo_0040.png", "photo_0041.png", "photo_0042.png"]
    assert sent[-1]["filters"] == {"and": [{"field": "format", "op": "eq", "value": "PNG"}]}
    assert page.inner_text("#filter-count") == "(1 active)"

    # a range filter nothing matches (the photos are 160 px wide), combined with the format
    page.fill("#filter-fields input[data-field=width][data-bound=gte]", "161")
    page.press("#filter-fields input[data-field=width][data-bound=gte]", "Enter")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('No results')")
    assert page.locator(".card").count() == 0
    assert sent[-1]["filters"] == {"and": [{"field": "format", "op": "eq", "value": "PNG"},
                                           {"field": "width", "op": "range", "value": {"gte": 161}}]}
    assert page.inner_text("#filter-count") == "(2 active)"
    page.click("#clear-filters")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {PAGE_SIZE}")
    assert sent[-1]["filters"] is None and page.inner_text("#filter-count") == ""
    page.click("#filters-box summary")  # closed again for the screenshot

    # an error from the API is shown with its message: a text file through the file picker is a 415
    notes = media / "notes" / "boots.txt"
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error:not([hidden])")
    assert "not accepted" in page.inner_text("#error")
    assert page.get_attribute("#results", "aria-busy") == "false"

    # the keyboard alone: Tab into the search box, type, Enter
    page.fill("#q", "")
    page.focus("#collection")
    page.keyboard.press("Tab")
    while page.evaluate("document.activeElement.id") != "q":  # past the API key summary
        page.keyboard.press("Tab")
    page.keyboard.type("a photo")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelectorAll('.card').length === {PAGE_SIZE}")
    assert page.is_hidden("#error")
    page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_api_key_from_the_box_is_sent_and_kept(indexed: tuple[dict[str, str], Path], tmp_path: Path,
                                               open_page: Callable[[str], Any]) -> None:
    env, _ = indexed
    with serving(env, tmp_path / "serve.log", COLLECTION, XMODAL_API_KEYS="s3cret") as base:
        page = open_page(base)
        page.wait_for_selector("#error:not([hidden])")
        assert "API key is required" in page.inner_text("#error")
        assert page.get_attribute("#apikey-box", "open") is not None  # opened to ask for it

        page.fill("#apikey", "s3cret")
        page.dispatch_event("#apikey", "change")
        page.wait_for_selector(f"#collection option[value={COLLECTION}]", state="attached")
        assert page.is_hidden("#error")
        page.fill("#q", "a photo")
        page.press("#q", "Enter")
        page.wait_for_function(f"document.querySelectorAll('.card').length === {PAGE_SIZE}")
        # thumbnails need the key too: fetched with it and shown from blob URLs
        page.wait_for_function("[...document.querySelectorAll('.card img')].every("
                               "i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")

        page.reload()  # the key is kept in this browser
        page.wait_for_selector(f"#collection option[value={COLLECTION}]", state="attached")
        assert page.input_value("#apikey") == "s3cret" and page.is_hidden("#error")


def test_controls_follow_the_collection_and_audio_cards(server: str, open_page: Callable[[str], Any],
                                                        tmp_path: Path) -> None:
    """Modalities and metadata types the test collection lacks (audio, booleans, numbers), from a stubbed API."""
    page = stubbed(open_page(server), "sounds", {"audio": 1, "image": 1},
                   {"loud": "boolean", "seconds": "number", "format": "string"}, {
                       "id": 7, "uri": "/data/<img src=x onerror=alert(1)>bell.wav", "modality": "audio", "score": 0.5,
                       "space": "s", "method": "ip", "metadata": {}, "media_url": "/v1/items/7/media",
                       "thumbnail_url": None})
    assert page.eval_on_selector_all("#target option", "os => os.map(o => o.value)") == ["any", "audio", "image"]
    assert page.get_attribute("#file", "accept") == "image/*,audio/*"
    assert "drop an image or a sound" in page.inner_text("#hint") and "1 sound, 1 image" in page.inner_text("#hint")

    # a dropped sound is shown back by its name and a player on the file itself
    wav = tmp_path / "bell.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x10" * 8000)
    drop_file(page, wav, "audio/wav")
    page.wait_for_selector(".card audio")
    assert page.get_attribute("#query-preview audio", "src").startswith("blob:")
    assert page.inner_text("#query-name") == "Your sound: bell.wav"
    page.click("#clear-query")
    assert page.is_hidden("#query-preview")

    page.click("#filters-box summary")
    labels = page.locator("#filter-fields .field").all_inner_texts()
    assert any(t.startswith("Loud") for t in labels) and any(t.startswith("Seconds") for t in labels)

    # boolean: a tri-state checkbox, any -> yes -> no -> any; number: a min/max pair with decimals
    loud = page.locator("#filter-fields input[data-field=loud]")
    assert loud.evaluate("e => e.indeterminate")
    page.fill("#q", "bell")
    with page.expect_request("**/v1/search") as request:
        page.press("#q", "Enter")
    assert request.value.post_data_json["filters"] is None
    page.wait_for_selector(".card audio")
    with page.expect_request("**/v1/search") as request:
        loud.press("Space")
    assert request.value.post_data_json["filters"] == {"and": [{"field": "loud", "op": "eq", "value": True}]}
    with page.expect_request("**/v1/search") as request:
        loud.click()
    assert request.value.post_data_json["filters"] == {"and": [{"field": "loud", "op": "eq", "value": False}]}
    assert page.inner_text("#filter-fields .tri") == "no"
    page.fill("#filter-fields input[data-field=seconds][data-bound=lte]", "2.5")
    with page.expect_request("**/v1/search") as request:
        page.click("#filters button[type=submit]")
    assert request.value.post_data_json["filters"] == {"and": [
        {"field": "loud", "op": "eq", "value": False}, {"field": "seconds", "op": "range", "value": {"lte": 2.5}}]}
    page.wait_for_selector(".card audio")
    with page.expect_request("**/v1/search") as request:
        loud.click()
    assert request.value.post_data_json["filters"] == {"and": [
        {"field": "seconds", "op": "range", "value": {"lte": 2.5}}]}
    assert not loud.evaluate("e => e.checked") and loud.evaluate("e => e.indeterminate")
    page.wait_for_selector(".card audio")

    # the audio card: a player on the media, the name as text (never markup), no thumbnail
    card = page.locator(".card").first
    assert card.locator("audio").get_attribute("src") == "/v1/items/7/media"
    assert card.locator(".name").inner_text() == "<img src=x onerror=alert(1)>bell.wav"
    assert card.locator("img").count() == 0 and card.locator("a.original").get_attribute("href") == "/v1/items/7/media"


def test_api_docs_render_offline(server: str, open_page: Callable[[str], Any]) -> None:
    """Swagger UI and ReDoc come from the app itself: with every other origin refused, both render
    the operations (a CDN-loaded page would stay blank)."""
    page = open_page(server)
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/search']")
    assert page.locator(".opblock").count() >= 9
    page.goto(server + "/redoc")
    page.locator("h2", has_text="Search Upload").first.wait_for()  # ReDoc titles operations by their summaries


@pytest.fixture(scope="module")
def shop_server(tiny_clip: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list]]:
    """A products manifest (6 rows: an image and a title each) served in-process: (base URL, rows)."""
    from xmodal.config import Settings
    from xmodal.indexer.pipeline import index_manifest

    root = tmp_path_factory.mktemp("web-shop")
    settings = Settings(home=root / "home", clip_model=tiny_clip[0], clip_pretrained=tiny_clip[1], batch_size=16)
    rows = products(root, 6)
    index_manifest(settings, write_csv(root / "products.csv", rows), "shop", media=MEDIA, progress=False)
    with live_app(settings, "shop") as (base, _):
        yield base, rows


def test_a_shop_shows_one_card_per_product(shop_server: tuple[str, list], open_page: Callable[[str], Any]) -> None:
    base, rows = shop_server
    page = open_page(base)
    page.wait_for_selector("#collection option[value=shop]", state="attached")
    page.fill("#q", "leather boot")
    page.press("#q", "Enter")
    page.wait_for_selector(".card.product")
    sources = page.eval_on_selector_all(".card.product", "es => es.map(e => e.dataset.source)")
    assert sorted(sources) == [r["id"] for r in rows]  # 12 items: each product once
    assert sorted(cards(page)) == sorted(r["title"] for r in rows)
    assert "(6 products)" in page.inner_text("#status")
    page.wait_for_function("[...document.querySelectorAll('.card.product img')].every(i => i.complete && "
                           "i.naturalWidth > 0) && document.querySelectorAll('.card.product img').length === 6")


def test_a_video_card_plays_from_its_segment_with_the_segment_marked(server: str,
                                                                     open_page: Callable[[str], Any]) -> None:
    """From a stubbed API: a video result's player starts at its matched segment (a media fragment), shows the
    segment's frame as its poster and names the segment; the controls offer videos and video uploads."""
    page = stubbed(open_page(server), "films", {"video": 1, "image": 1}, {}, {
        "id": 9, "uri": "/data/match.mp4", "modality": "video", "score": 0.5, "space": "clip", "method": "ip",
        "metadata": {"duration_s": 30.0}, "media_url": "/v1/items/9/media",
        "thumbnail_url": "/v1/items/9/thumbnail?t=15", "segment": {"start_s": 12.0, "end_s": 18.5},
        "segments": [{"start_s": 12.0, "end_s": 18.5, "score": 0.5}, {"start_s": 3.0, "end_s": 6.0, "score": 0.4},
                     {"start_s": 24.0, "end_s": 30.0, "score": 0.3}]})
    assert page.eval_on_selector_all("#target option", "os => os.map(o => o.value)") == ["any", "image", "video"]
    assert page.get_attribute("#file", "accept") == "image/*,video/*"
    assert "drop an image or a video clip" in page.inner_text("#hint") and "1 video" in page.inner_text("#hint")
    page.fill("#q", "a crowd cheering")
    page.press("#q", "Enter")
    page.wait_for_selector(".card video")
    src = page.eval_on_selector(".card video", "v => v.src")
    assert src.endswith("/v1/items/9/media#t=12,18.5"), src
    assert page.eval_on_selector(".card video", "v => v.poster").endswith("/v1/items/9/thumbnail?t=15")
    assert page.inner_text(".card .segment") == "0:12–0:18"
    assert "from 0:12 to 0:18" in page.get_attribute(".card video", "aria-label")
    # its other matching segments: times under the player that seek it
    assert page.locator(".card .segments button").all_inner_texts() == ["0:03", "0:24"]
    page.click(".card .segments button >> nth=1")
    page.wait_for_function("document.querySelector('.card video').currentTime >= 24")
