"""The web page end to end in headless Debian Chromium, driven by Playwright, against `xmodal serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import ROOT, write_photos, write_texts

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "screenshot.png"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_clip: tuple[str, str]) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("web")
    media = root / "media"
    write_photos(media / "photos", 20)
    write_photos(media / "png", 3, start=40, ext="png")
    write_texts(media / "notes", {"boots.txt": "Red leather ankle boots with a low heel.",
                                  "beach.md": "# Beach\nWaves breaking on a sandy shore."})
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    env.update(XMODAL_HOME=str(root / "home"), XMODAL_CLIP_MODEL=tiny_clip[0], XMODAL_CLIP_PRETRAINED=tiny_clip[1])
    xmodal = str(Path(sys.executable).with_name("xmodal"))
    done = subprocess.run([xmodal, "index", str(media), "-c", "catalog", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([xmodal, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "xmodal serve exited"
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready in 90 s"
            time.sleep(0.2)
        yield base, media
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is missing: scripts/install-browser.sh installs it"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


def test_search_drop_similar_and_filter_in_the_page(site: tuple[str, Path], browser: object) -> None:
    base, media = site
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(base + "/")
    page.wait_for_selector("#collection option[value=catalog]", state="attached")

    # type a query and see results
    page.fill("#q", "red boots")
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 24  # a full page: 25 items in the collection, 24 a page
    assert "results for" in page.inner_text("#status")
    page.click("#next")
    page.wait_for_function("document.getElementById('page').textContent === 'page 2'")
    assert page.locator(".card").count() == 1 and page.is_disabled("#next")
    page.click("#prev")
    page.wait_for_function("document.querySelectorAll('.card').length === 24")

    # drop an image: it comes back first
    dropped = media / "photos" / "photo_0007.jpg"
    data = list(dropped.read_bytes())
    page.evaluate(
        """([bytes, name]) => {
            const file = new File([new Uint8Array(bytes)], name, {type: "image/jpeg"});
            const dt = new DataTransfer(); dt.items.add(file);
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""", [data, dropped.name])
    page.wait_for_function("document.getElementById('status').textContent.includes('photo_0007.jpg')")
    first = page.locator(".card").first
    assert first.locator(".name").inner_text() == "photo_0007.jpg"
    assert first.locator("img").get_attribute("src").endswith("/thumbnail")
    page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")

    # more like this: the item itself is left out
    first_id = first.get_attribute("data-id")
    first.locator("button.link").click()
    page.wait_for_function("document.getElementById('status').textContent.includes('like photo_0007.jpg')")
    assert first_id not in [c.get_attribute("data-id") for c in page.locator(".card").all()]

    # a metadata filter: only PNGs
    page.fill("#q", "a photo")
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    page.fill("#filter-fields input[data-field=format]", "PNG")
    page.dispatch_event("#filter-fields input[data-field=format]", "change")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    names = [c.inner_text() for c in page.locator(".card .name").all()]
    assert sorted(names) == ["photo_0040.png", "photo_0041.png", "photo_0042.png"]

    # an error from the API is shown, not swallowed: drop a text file
    page.fill("#filter-fields input[data-field=format]", "")
    page.evaluate(
        """() => {
            const dt = new DataTransfer(); dt.items.add(new File(["hello"], "notes.txt", {type: "text/plain"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
        }""")
    page.wait_for_selector("#error:not([hidden])")
    assert "not accepted" in page.inner_text("#error")

    page.fill("#q", "a photo")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelectorAll('.card').length > 3")
    page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert SCREENSHOT.stat().st_size > 10_000
    assert all(url.startswith(base) for url in requests), [u for u in requests if not u.startswith(base)]
    page.close()
