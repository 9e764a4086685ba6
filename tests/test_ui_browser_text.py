"""The demo's pictures with text in headless Chromium: found by their words, the line under the
result, and its box on the enlarged picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from retrieval.search.normalise import normalise
from tests.test_ui_browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.uiserver import UIServer
from ui.demo import example_queries, prepare


@pytest.fixture(scope="module")
def text_demo(tmp_path_factory):
    """The demo, small: 6 shapes and 4 pictures with text (a poster, a sign, a chat, a receipt)."""
    root = tmp_path_factory.mktemp("browser-text")
    server = UIServer(prepare(root, count=6, device="cpu", text_pictures=4), "--examples", "|".join(example_queries(root)))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="zh-CN")
        page.goto(server.url)
        page.wait_for_selector("#query textarea", timeout=60_000)
        yield page, root
        browser.close()
    server.stop()


def box_pixels(image: Image.Image) -> int:
    """Pixels of about the box's red: far redder than green or blue (the picture is scaled and
    compressed for the page, which turns a 2-pixel red line into reds of many shades)."""
    r, g, b = np.asarray(image.convert("RGB"), dtype=np.int32).transpose(2, 0, 1)
    return int((r - np.maximum(g, b) > 60).sum())


def shown_image(page: Page, selector: str) -> Image.Image:
    return Image.open(io.BytesIO(page.request.get(page.locator(selector).first.get_attribute("src")).body()))


def test_a_picture_found_by_its_words_shows_its_line_and_the_box_enlarged(text_demo):
    page, root = text_demo
    words = example_queries(root)[-1]  # the poster's slogan, which the demo model cannot see
    page.get_by_role("button", name=words).click()  # the example fills the query
    page.click("#search-text")
    expect(page.locator("#text-status")).to_contain_text(f"“{words}”", timeout=30_000)
    expect(page.locator("#text-gallery")).to_contain_text("文字：", timeout=30_000)
    line = page.locator("#text-gallery").inner_text().split("文字：", 1)[1].splitlines()[0]
    assert normalise(words) in normalise(line), line  # the line as read (a traditional poster reads 選購)

    page.locator("#text-gallery img").first.click()
    enlarged = "#text-gallery .preview img"
    expect(page.locator(enlarged).first).to_be_visible(timeout=10_000)
    expect(page.locator("#text-gallery .preview")).to_contain_text("文字：")
    page.screenshot(path=ARTIFACTS / "text-found-enlarged.png", full_page=True)
    poster = next((root / "collection" / "text" / "images").glob("*-poster.*"))
    drawn = shown_image(page, enlarged)
    plain = Image.open(poster).convert("RGB").resize(drawn.size)
    assert box_pixels(drawn) > box_pixels(plain) + 50, (box_pixels(drawn), box_pixels(plain))  # a box of ~35 × 8 pixels
    page.keyboard.press("Escape")
