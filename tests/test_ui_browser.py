"""The search UI end to end in headless Chromium (Debian's), driven by Playwright.

Screenshots land in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from retrieval.datasets.synthetic import write_collection
from tests.uiserver import UIServer
from ui.demo import example_queries, prepare

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


COUNT = 48
ALBUM = range(24, 48)
"""The demo images moved into collection/album (the others stay at the top)."""


def day_taken(number: int) -> str:
    """Image `number`'s mtime, so its `taken`: a different day each, in an order unlike the names'."""
    return (date(2024, 1, 1) + timedelta(days=29 * number % COUNT)).isoformat()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The demo collection of 48 images, half of them in an album folder, each with its own mtime."""
    root = tmp_path_factory.mktemp("browser-demo")
    collection = root / "collection"
    write_collection(collection, COUNT)
    (collection / "album").mkdir()
    for number in range(COUNT):
        path = collection / f"shape_{number:04d}.png"
        if number in ALBUM:
            path = path.rename(collection / "album" / path.name)
        moment = datetime.fromisoformat(day_taken(number) + "T12:00:00").timestamp()
        os.utime(path, (moment, moment))
    index = prepare(root, count=COUNT, device="cpu", text_pictures=0)
    server = UIServer(index, "--examples", "|".join(example_queries(root)))
    yield server, collection
    server.stop()


def settle(page: Page, shot: str) -> None:
    """Wait for every image to load and Gradio's loading fade to end, then take a screenshot."""
    page.wait_for_function("[...document.images].every(img => img.complete && img.naturalWidth > 0)", timeout=30_000)
    page.wait_for_function("!document.querySelector('.pending, .translucent')", timeout=30_000)
    page.screenshot(path=ARTIFACTS / shot, full_page=True)


@pytest.fixture(scope="module")
def page(demo_server):
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="zh-CN")
        page.goto(demo_server[0].url)
        page.wait_for_selector("#query textarea", timeout=60_000)
        yield page
        browser.close()


def test_text_search_fills_the_gallery(page: Page):
    expect(page.locator("#index-info")).to_contain_text("demo")
    expect(page.locator("#index-info")).to_contain_text("48")
    page.fill("#query textarea", "两个绿色的正方形")
    page.click("#search-text")
    images = page.locator("#text-gallery img")
    expect(images).to_have_count(12, timeout=30_000)
    expect(page.locator("#text-status")).to_contain_text("12 个结果")
    settle(page, "text-search.png")


def test_a_clicked_result_is_enlarged_and_the_button_searches_by_it(page: Page):
    page.locator("#text-gallery img").nth(2).click()
    expect(page.locator("#text-gallery .preview img").first).to_be_visible(timeout=10_000)
    expect(page.locator("#text-status")).to_contain_text("12 个结果")  # enlarging searches nothing
    page.click("#text-again")
    expect(page.locator("#text-status")).to_contain_text("与 #3 相似", timeout=30_000)
    expect(page.locator("#text-gallery .preview")).to_have_count(0)  # the new results, as the grid


def test_empty_query_shows_a_message(page: Page):
    page.fill("#query textarea", "   ")
    page.click("#search-text")
    expect(page.locator("#text-status")).to_contain_text("请输入查询文字", timeout=30_000)


def test_image_upload_search_shows_results(page: Page, demo_server):
    _, collection = demo_server
    page.get_by_role("tab", name="图搜图").click()
    page.locator("#image-upload input[type=file]").set_input_files(str(collection / "shape_0003.png"))
    page.wait_for_timeout(500)
    page.click("#search-image")
    expect(page.locator("#image-gallery img")).to_have_count(12, timeout=30_000)
    expect(page.locator("#image-gallery")).to_contain_text("shape_0003.png")
    settle(page, "image-search.png")


def truth_colour(collection: Path, name: str) -> str:
    rows = [json.loads(line) for line in (collection / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    return next(r for r in rows if r["file"] == name)["shapes"][0][0]


def test_zero_shot_labels_show_bars(page: Page, demo_server):
    _, collection = demo_server
    page.get_by_role("tab", name="零样本标注").click()
    page.locator("#label-upload input[type=file]").set_input_files(str(collection / "shape_0001.png"))
    page.fill("#labels textarea", "红色,橙色,黄色,绿色,蓝色,紫色,粉色,黑色")
    page.wait_for_timeout(500)
    page.click("#run-label")
    expect(page.locator("#label-out")).to_contain_text("%", timeout=30_000)
    expect(page.locator("#label-status")).to_contain_text("8 个标签")
    expect(page.locator("#label-out .output-class")).to_have_text(truth_colour(collection, "shape_0001.png"))
    settle(page, "zero-shot.png")


def gallery_captions(page: Page) -> list[tuple[int, float, str, str]]:
    """(rank, score, day taken, file name) of each result in the text gallery, in order, from the captions."""
    text = page.locator("#text-gallery").inner_text()
    found = re.findall(r"#(\d+)\s+(-?\d\.\d+)\s+(\d{4}-\d\d-\d\d)\s+(\S+\.png)", text)
    return [(int(rank), float(score), day, name) for rank, score, day, name in found]


def gallery_results(page: Page) -> list[tuple[float, str]]:
    """(score, file name) of each result in the text gallery, best first."""
    return [(score, name) for _, score, _, name in gallery_captions(page)]


def search_until(page: Page, fills: dict[str, str], submit: str, status: str) -> None:
    """Fill the controls, then submit (Enter in `submit`) until the status line shows `status`.

    A panel's controls mount when it opens, and a slider hands its value to the app a moment
    after it moves: a search sent before then runs without it, which the status line shows, so
    the controls are filled and the search sent again."""
    for _ in range(10):
        for selector, value in fills.items():
            page.fill(selector, value)
        page.press(submit, "Enter")
        try:
            expect(page.locator("#text-status")).to_contain_text(status, timeout=10_000)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the status line never showed {status!r}")


def test_negative_term_and_min_score_from_the_more_options_panel(page: Page, demo_server):
    _, collection = demo_server
    red = {row["file"] for row in map(json.loads, (collection / "captions.jsonl").read_text(encoding="utf-8").splitlines())
           if any(colour == "红色" for colour, _ in row["shapes"])}
    page.get_by_role("tab", name="文搜图").click()
    page.fill("#query textarea", "圆形")
    page.click("#search-text")
    expect(page.locator("#text-status")).to_contain_text("“圆形”: 12 个结果", timeout=30_000)
    plain = gallery_results(page)
    assert len(plain) == 12 and {name for _, name in plain[:5]} & red, plain

    page.get_by_text("更多条件").click()
    search_until(page, {"#min-score input[type=range]": "0.5", "#negatives textarea": "红色"}, "#negatives textarea",
                 "排除 红色，分数 ≥ 0.5")
    settle(page, "text-search-options.png")
    pushed = gallery_results(page)
    assert 0 < len(pushed) < 12 and not {name for _, name in pushed} & red, pushed
    assert all(score >= 0.5 for score, _ in pushed), pushed
    page.fill("#negatives textarea", "")
    page.fill("#min-score input[type=range]", "-1")


def album_by_date() -> list[tuple[str, str]]:
    """(day taken, name) of the album's images, newest first."""
    return sorted(((day_taken(number), f"shape_{number:04d}.png") for number in ALBUM), reverse=True)


def shown(page: Page, first_name: str) -> list[tuple[int, str, str]]:
    """(rank, day, name) of the gallery once it shows `first_name` first."""
    expect(page.locator("#text-gallery")).to_contain_text(first_name, timeout=30_000)
    return [(rank, day, name) for rank, _, day, name in gallery_captions(page)]


def test_a_folder_filter_sorted_newest_first_pages_through_the_folder(page: Page, demo_server):
    _, collection = demo_server
    expected = album_by_date()
    page.get_by_role("tab", name="文搜图").click()
    page.locator("#text-sort").get_by_text("最新", exact=True).click()
    search_until(page, {"#query textarea": "圆形", "#text-folders textarea": str(collection / "album")}, "#query textarea",
                 "最新在前）: 12 个结果，第 1–12 个")
    first = shown(page, expected[0][1])
    assert first == [(rank, day, name) for rank, (day, name) in enumerate(expected[:12], 1)]
    settle(page, "text-search-filtered.png")

    page.click("#text-next")
    expect(page.locator("#text-status")).to_contain_text("12 个结果，第 13–24 个", timeout=30_000)
    assert shown(page, expected[12][1]) == [(rank, day, name) for rank, (day, name) in enumerate(expected[12:], 13)]
    page.click("#text-previous")
    expect(page.locator("#text-status")).to_contain_text("第 1–12 个", timeout=30_000)
    assert shown(page, expected[0][1]) == first

    page.fill("#text-folders textarea", "")
    page.locator("#text-sort").get_by_text("按相关度", exact=True).click()


def test_a_bad_date_is_one_line_and_no_results(page: Page):
    page.fill("#query textarea", "圆形")
    search_until(page, {"#text-after textarea": "2024-13"}, "#text-after textarea", "--after '2024-13': give a date such as")
    assert "\n" not in page.locator("#text-status").inner_text().strip()
    expect(page.locator("#text-gallery img")).to_have_count(0)
    page.fill("#text-after textarea", "")
