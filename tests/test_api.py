"""The JSON API of a real `tusou serve`, driven with plain HTTP (httpx, and raw sockets where a client
misbehaves): every endpoint, keys (the UI's login too), each limit, hostile clients, SIGTERM.

One keyed server per module (two keys by flag, one by TUSOU_API_KEYS, two requests in flight per
client) over 20 pictures without text and a shop sign, indexed with --ocr. A result of the API is
compared with `tusou search --json` for the same options. Another server, without a key and asked
for --host 0.0.0.0, shows the bind rule and then drains on SIGTERM.
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from indexer import BuildPlan, build_index
from retrieval.search.query import Query
from retrieval.search.searcher import Searcher
from tests.imagegen import png_bomb, write_images
from tests.test_cli import json_lines, run
from tests.test_ocr import NAME, sign
from tests.test_ui_hostile import listening
from tests.uiserver import UIServer
from ui.access import bound_host
from ui.cli import main

KEYS = {"flag": "key-one-Aa9", "second-flag": "key-two-Bb8", "variable": "key-three-Cc7"}
RESULT_KEYS = {"rank", "score", "id", "path", "taken", "taken_from", "width", "height"}
OCR_INDEX_SECONDS = 120


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api") / "photos"
    write_images(folder, 20)
    (folder / "shops").mkdir()
    sign(1)[0].save(folder / "shops" / "sign.png")
    return folder


@pytest.fixture(scope="module")
def index(collection) -> Path:
    out = collection.parent / "index"
    build_index(BuildPlan([collection], out, "test-tiny", device="cpu", workers=0, progress=False, ocr=True))
    return out


@pytest.fixture(scope="module")
def server(index):
    served = UIServer(index, "--api-key", KEYS["flag"], "--api-key", KEYS["second-flag"], "--client-concurrency", "2",
                      env={"TUSOU_API_KEYS": f" {KEYS['variable']} ,", "GRADIO_TEMP_DIR": str(index.parent / "gradio-tmp")})
    yield served
    served.stop()


def client_of(server: UIServer, key: str | None = KEYS["flag"]) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url.rstrip("/"), headers=headers, timeout=60)


@pytest.fixture(scope="module")
def api(server):
    with client_of(server) as client:
        yield client


def refused(response: httpx.Response, status: int, says: str) -> None:
    """A refusal as the API gives every one: the status, one line of JSON `{"error": ...}`."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and says in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in response.text


def image_bytes(collection: Path, name: str = "image_0005") -> tuple[str, bytes]:
    path = next(collection.rglob(f"{name}.*"))
    return str(path), path.read_bytes()


def cli_rows(capsys, index: Path, *argv: str) -> list[dict]:
    code, out, err = run(capsys, "search", index, *argv, "--json", "--device", "cpu")
    assert code == 0, err
    return json_lines(out)


def assert_same_results(api_rows: list[dict], cli: list[dict]) -> None:
    """The same results with the same fields; scores to rounding (two processes)."""
    assert [{k: v for k, v in row.items() if k != "score"} for row in api_rows] == [{k: v for k, v in row.items() if k != "score"} for row in cli]
    assert [row["score"] for row in api_rows] == pytest.approx([row["score"] for row in cli], abs=1e-5)


# --- search: the fields and results of `tusou search --json` ------------------------------


SEARCHES = {
    "plain": ({"q": "红色的圆形", "k": "7"}, ["红色的圆形", "-k", "7"]),
    "negatives-and-threshold": ({"q": "红色的圆形", "k": "20", "not": ["蓝色", "三角形"], "min_score": "0"},
                                ["红色的圆形", "-k", "20", "--not", "蓝色", "--not", "三角形", "--min-score", "0"]),
    "dedupe-default": ({"q": "红色", "k": "30", "dedupe": ""}, ["红色", "-k", "30", "--dedupe"]),
    "filters-sort-offset": ({"q": "红色", "k": "3", "offset": "2", "in": "{collection}/nested", "type": "png,jpg,webp,gif,bmp,tiff",
                             "sort": "newest"},
                            ["红色", "-k", "3", "--offset", "2", "--in", "{collection}/nested", "--type", "png,jpg,webp,gif,bmp,tiff",
                             "--sort", "newest"]),
    "text-match": ({"q": "老王火锅", "k": "5"}, ["老王火锅", "-k", "5"]),
    "text-only": ({"q": "老王火锅", "match": "text"}, ["老王火锅", "--match", "text"]),
    "visual-only": ({"q": "老王火锅", "match": "visual", "k": "4"}, ["老王火锅", "--match", "visual", "-k", "4"]),
}


@pytest.mark.parametrize("case", SEARCHES)
def test_get_search_gives_what_search_json_gives(api, collection, index, capsys, case):
    params, argv = SEARCHES[case]
    params = {key: [v.format(collection=collection) for v in value] if isinstance(value, list) else value.format(collection=collection)
              for key, value in params.items()}
    response = api.get("/api/v1/search", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "k", "offset"} and body["offset"] == int(params.get("offset", 0))
    assert body["results"] and all(RESULT_KEYS <= set(row) for row in body["results"])
    assert_same_results(body["results"], cli_rows(capsys, index, *(arg.format(collection=collection) for arg in argv)))


def test_a_k_or_offset_beyond_any_index_asks_for_all_of_it(index, capsys):
    """The CLI has no upper limit on -k and --offset (the API has its own); past SQLite's integers
    they overflowed the text match's LIMIT in a traceback."""
    huge = str(10**20)
    assert len(cli_rows(capsys, index, "老王火锅", "-k", huge)) == 21
    assert cli_rows(capsys, index, "老王火锅", "--offset", huge) == []


def test_a_text_match_carries_its_line(api):
    first = api.get("/api/v1/search", params={"q": "老王火锅", "k": 3}).json()["results"][0]
    assert first["path"].endswith("sign.png")
    assert NAME in first["ocr"]["text"] and set(first["ocr"]) == {"text", "box", "confidence"} and len(first["ocr"]["box"]) == 4


def test_post_search_by_image_alone_and_mixed_with_text(api, collection, index, capsys):
    path, data = image_bytes(collection)
    response = api.post("/api/v1/search", files={"image": ("query.jpg", data)}, data={"k": "4"})
    assert response.status_code == 200, response.text
    rows = response.json()["results"]
    assert rows[0]["path"] == path and rows[0]["score"] > 0.99
    assert_same_results(rows, cli_rows(capsys, index, "--image", path, "-k", "4"))
    mixed = api.post("/api/v1/search", files={"image": ("q.jpg", data)}, data={"q": "红色", "weight": "0.3", "k": "5", "type": "jpg"}).json()
    assert_same_results(mixed["results"], cli_rows(capsys, index, "红色", "--image", path, "--weight", "0.3", "-k", "5", "--type", "jpg"))


# --- label, ocr, items, info, health, metrics, OpenAPI -------------------------------------


def test_label_gives_each_labels_probability(api, collection):
    _, data = image_bytes(collection, "image_0002")
    body = api.post("/api/v1/label", files={"image": ("x.png", data)}, data={"labels": "猫,狗，老虎", "templates": "一张{}的照片|{}"}).json()
    assert [set(row) for row in body["labels"]] == [{"label", "probability"}] * 3
    assert {row["label"] for row in body["labels"]} == {"猫", "狗", "老虎"}
    assert sum(row["probability"] for row in body["labels"]) == pytest.approx(1, abs=1e-4)


def test_ocr_reads_the_lines_of_an_upload(api, collection):
    body = api.post("/api/v1/ocr", files={"image": ("sign.png", (collection / "shops" / "sign.png").read_bytes())}).json()
    assert NAME in [line["text"] for line in body["lines"]] and all(set(line) == {"text", "confidence", "box"} for line in body["lines"])


def test_an_item_is_its_catalog_row_and_its_text(api, collection):
    found = api.get("/api/v1/search", params={"q": "老王火锅", "k": 1}).json()["results"][0]
    row = api.get(f"/api/v1/items/{found['id']}").json()
    assert row["id"] == found["id"] and row["path"] == found["path"] == str(collection / "shops" / "sign.png")
    assert (row["width"], row["height"], row["format"], row["taken"]) == (found["width"], found["height"], "png", found["taken"])
    assert NAME in [line["text"] for line in row["ocr"]]


def test_a_thumbnail_is_a_jpeg_of_the_catalog_item_within_the_size(api, collection):
    found = api.get("/api/v1/search", params={"q": "红色", "k": 1}).json()["results"][0]
    response = api.get(f"/api/v1/items/{found['id']}/thumbnail", params={"size": 40})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(response.content))
    original = Image.open(found["path"])
    assert picture.format == "JPEG" and max(picture.size) == min(40, max(original.size))


@pytest.mark.parametrize("path", [
    "/api/v1/items/999999/thumbnail", "/api/v1/items/%2Fetc%2Fpasswd/thumbnail", "/api/v1/items/..%2F..%2Fetc%2Fpasswd/thumbnail",
    "/api/v1/items/-1/thumbnail", "/api/v1/items/1e3/thumbnail",
])
def test_only_catalog_items_are_read(api, path):
    response = api.get(path)
    assert response.status_code in (404, 422) and set(response.json()) == {"error"} and b"root:" not in response.content


def test_info_describes_the_served_index_and_the_limits(api, index):
    body = api.get("/api/v1/info").json()
    assert body["api"] == "v1" and body["index"]["count"] == 21 and body["index"]["model"]["name"] == "test-tiny"
    assert body["text_read"] is True and body["precision"] in ("float32", "bfloat16") and body["limits"]["k"] == 1000


def test_healthz_answers_without_a_key(server):
    with client_of(server, key=None) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}


METRIC_LINE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$|^# (HELP|TYPE) [a-z_]+ .+$')


def metrics(api: httpx.Client) -> str:
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def metric(text: str, name: str, **labels: str) -> float:
    wanted = "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}" if labels else ""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + wanted + " "))


def test_metrics_count_requests_and_latency_per_endpoint(api):
    before = metrics(api)
    assert api.get("/config").status_code == 200
    api.get("/api/v1/search", params={"q": "蓝色", "k": 2})
    api.get("/api/v1/search", params={"q": ""})
    after = metrics(api)
    assert all(METRIC_LINE.match(line) for line in after.splitlines()), [line for line in after.splitlines() if not METRIC_LINE.match(line)]
    for status in ("200", "422"):
        counted = {"endpoint": "/api/v1/search", "method": "GET", "status": status}
        assert metric(after, "tusou_requests_total", **counted) == metric(before, "tusou_requests_total", **counted) + 1
    count = metric(after, "tusou_request_duration_seconds_count", endpoint="/api/v1/search")
    assert metric(after, "tusou_request_duration_seconds_bucket", endpoint="/api/v1/search", le="+Inf") == count >= 2
    assert metric(after, "tusou_index_items") == 21 and "tusou_queue_depth 0" in after
    assert metric(after, "tusou_requests_total", endpoint="ui", method="GET", status="200") >= 1  # the UI is counted too
    assert metric(after, "tusou_api_requests_in_flight") == 0  # /metrics is no API request


def test_concurrent_searches_get_what_each_gets_alone_and_are_counted_in_batches(server, index):
    """Two requests in flight per key, three keys: queries that meet at the model share a batch
    (tests/test_query_encoder.py shows they do), and each still gets the answer of a search alone."""
    queries = [f"{colour}的{shape} {n}" for n, (colour, shape) in enumerate(zip(["红色", "蓝色", "绿色"] * 4, ["圆形", "方形"] * 6))]
    before = metrics(client_of(server))

    def ask(numbered: tuple[int, str]) -> list[dict]:
        with client_of(server, list(KEYS.values())[numbered[0] % 3]) as client:
            response = client.get("/api/v1/search", params={"q": numbered[1], "k": 5})
        assert response.status_code == 200, response.text
        return response.json()["results"]

    with ThreadPoolExecutor(6) as pool:
        found = list(pool.map(ask, enumerate(queries)))
    after = metrics(client_of(server))
    alone = Searcher(index, device="cpu")
    for query, results in zip(queries, found):
        expected = alone.search(Query(text=query), 5)
        assert [row["id"] for row in results] == [r.id for r in expected]
        assert [row["score"] for row in results] == pytest.approx([r.score for r in expected], abs=1e-5)
    batched = metric(after, "tusou_query_batched_requests_total") - metric(before, "tusou_query_batched_requests_total")
    batches = metric(after, "tusou_query_batches_total") - metric(before, "tusou_query_batches_total")
    assert batched == len(queries) and 1 <= batches <= len(queries)


def test_openapi_describes_every_endpoint_and_parameter(api):
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/api/v1/search", "/api/v1/label", "/api/v1/ocr", "/api/v1/items/{item_id}", "/api/v1/items/{item_id}/thumbnail",
            "/api/v1/info", "/healthz", "/metrics"} <= set(paths)
    names = {parameter["name"] for parameter in paths["/api/v1/search"]["get"]["parameters"]}
    assert names == {"q", "k", "offset", "not", "weight", "min_score", "dedupe", "match", "after", "before", "in", "type", "camera",
                     "near", "sort"}
    assert "multipart/form-data" in paths["/api/v1/search"]["post"]["requestBody"]["content"]
    assert api.get("/docs").status_code == 200


# --- mistakes: one JSON line, a 4xx, and the words of the CLI ----------------------------


MISTAKES = {
    "empty-query": ({"q": "  "}, 422, "empty query: give some words to search for"),
    "nothing-to-find": ({}, 422, "nothing to search for: give a text query or a reference image"),
    "k-zero": ({"q": "红色", "k": "0"}, 422, "k: 0 is out of range: give an integer from 1 to 1000"),
    "k-over-limit": ({"q": "红色", "k": "1001"}, 422, "k: 1001 is out of range"),
    "k-not-a-number": ({"q": "红色", "k": "ten"}, 422, "k: invalid int value: 'ten'"),
    "offset-negative": ({"q": "红色", "offset": "-1"}, 422, "offset: -1 is out of range"),
    "weight-without-image": ({"q": "红色", "weight": "0.2"}, 422, "--weight mixes a text query with --image"),
    "min-score-range": ({"q": "红色", "min_score": "3"}, 422, "min-score 3.0 is outside -1..1"),
    "min-score-word": ({"q": "红色", "min_score": "high"}, 422, "min_score: invalid float value: 'high'"),
    "dedupe-range": ({"q": "红色", "dedupe": "1.5"}, 422, "dedupe threshold 1.5 is outside (0, 1]"),
    "bad-match": ({"q": "红色", "match": "all"}, 422, "match: invalid choice: 'all' (choose from 'both', 'visual', 'text')"),
    "bad-sort": ({"q": "红色", "sort": "bogus"}, 422, "sort: invalid choice: 'bogus'"),
    "bad-date": ({"q": "红色", "after": "2024-13"}, 422, "--after '2024-13': give a date such as 2024, 2024-06, 2024-06-01"),
    "dates-crossed": ({"q": "红色", "after": "2024-07", "before": "2024-06"}, 422, "is not before --before 2024-06"),
    "bad-near": ({"q": "红色", "near": "91,0,1"}, 422, "--near '91,0,1': latitude must be within -90..90"),
    "empty-type": ({"q": "红色", "type": " , "}, 422, "--type ' , ': give file types such as jpg,png"),
    "empty-negative": ({"q": "红色", "not": " "}, 422, "empty negative term"),
    "unknown-parameter": ({"q": "红色", "limit": "5"}, 422, "unknown parameter 'limit'"),
    "misspelt-filter": ({"q": "红色", "folder": "/x"}, 422, "unknown parameter 'folder'"),
    "query-too-long": ({"q": "红" * 2001}, 422, "q: 2001 characters: give at most 2000"),
    "too-many-values": ({"q": "红色", "not": ["蓝"] * 101}, 422, "not: 101 values: give at most 100"),
}


@pytest.mark.parametrize("case", MISTAKES)
def test_a_mistake_in_a_search_is_one_json_line(api, case):
    params, status, says = MISTAKES[case]
    refused(api.get("/api/v1/search", params=params), status, says)


def test_the_api_and_the_cli_refuse_in_the_same_words(api, index, capsys):
    for params, argv in (({"q": "红色", "after": "2024-13"}, ["红色", "--after", "2024-13"]),
                         ({"q": "红色", "k": "ten"}, ["红色", "-k", "ten"]),
                         ({"q": "红色", "sort": "bogus"}, ["红色", "--sort", "bogus"]),
                         ({"q": "红色", "min_score": "3"}, ["红色", "--min-score", "3"])):
        said = api.get("/api/v1/search", params=params).json()["error"]
        try:
            code = main(["search", str(index), *argv])
        except SystemExit as exc:  # argparse's refusal of a flag's value
            code = exc.code
        err = capsys.readouterr().err
        words = said.split(": ", 1)[1] if said.startswith(("k:", "sort:")) else said  # the API names the parameter, argparse the flag
        assert code == 2 and words in err, (said, err)


def upload_mistakes(collection: Path, tmp_path: Path) -> dict:
    _, data = image_bytes(collection)
    return {
        "not-an-image": ("/api/v1/search", {"image": ("x.png", b"<html>not an image</html>")}, {}, 422, "cannot use image upload: not an image"),
        "empty-upload": ("/api/v1/search", {"image": ("x.png", b"")}, {}, 422, "cannot use image upload: empty file"),
        "bomb": ("/api/v1/search", {"image": ("b.png", png_bomb(tmp_path / "bomb.png").read_bytes())}, {}, 422, "too large"),
        "no-image": ("/api/v1/search", None, {"k": "3"}, 422, "image: required"),
        "unknown-field": ("/api/v1/search", {"image": ("x.jpg", data)}, {"kk": "3"}, 422, "unknown form field 'kk'"),
        "bad-option": ("/api/v1/search", {"image": ("x.jpg", data)}, {"k": "0"}, 422, "k: 0 is out of range"),
        "no-labels": ("/api/v1/label", {"image": ("x.jpg", data)}, {"labels": " ,，"}, 422, "no labels given"),
        "too-many-labels": ("/api/v1/label", {"image": ("x.jpg", data)}, {"labels": ",".join(map(str, range(201)))}, 422, "at most 200 labels"),
        "bad-template": ("/api/v1/label", {"image": ("x.jpg", data)}, {"labels": "猫", "templates": "{:>999999999}"}, 422, "must contain {} exactly once"),
        "ocr-not-an-image": ("/api/v1/ocr", {"image": ("x.png", b"GIF89a broken")}, {}, 422, "cannot use image upload"),
    }


def test_a_mistake_with_an_upload_is_one_json_line(api, collection, tmp_path):
    for name, (path, files, data, status, says) in upload_mistakes(collection, tmp_path).items():
        response = api.post(path, files=files, data=data) if files else api.post(path, data=data)
        refused(response, status, says)


@pytest.mark.parametrize("method, path, status, says", [
    ("DELETE", "/api/v1/search", 405, "DELETE is not allowed on /api/v1/search: use GET, POST"),
    ("GET", "/api/v2/search", 404, "no endpoint /api/v2/search"),
    ("GET", "/api/v1/items/424242", 404, "no item 424242 in the index"),
    ("GET", "/api/v1/items/abc", 422, "item_id: invalid int value: 'abc'"),
    ("GET", "/api/v1/items/99999999999999999999", 422, "out of range"),
    ("GET", "/api/v1/items/1/thumbnail?size=2000", 422, "size: 2000 is out of range: give an integer from 16 to 1024"),
    ("GET", "/api/v1/info?verbose=1", 422, "unknown parameter 'verbose': this endpoint takes none"),
    ("POST", "/api/v1/search?k=3", 422, "takes form fields"),
])
def test_other_mistakes_are_one_json_line(api, method, path, status, says):
    refused(api.request(method, path), status, says)


# --- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/search?q=红色", "/api/v1/info", "/metrics", "/openapi.json", "/config", "/gradio_api/info"])
def test_without_a_key_everything_but_health_is_refused(server, path):
    with client_of(server, key=None) as anonymous:
        response = anonymous.get(path)
        refused(response, 401, "this server needs an API key: send the header Authorization: Bearer KEY")
        assert response.headers["www-authenticate"] == "Bearer"
    for wrong in ("Bearer nope", f"Bearer {KEYS['flag']}x", f"Bearer {KEYS['flag'][:-1]}", "Bearer", f"Basic {KEYS['flag']}"):
        with client_of(server, key=None) as guessing:
            refused(guessing.get(path, headers={"Authorization": wrong}), 401, "API key")


def test_every_key_given_opens_the_api(server):
    for key in KEYS.values():
        with client_of(server, key) as keyed:
            assert keyed.get("/api/v1/search", params={"q": "红色", "k": 1}).status_code == 200


def test_the_ui_wants_a_login_and_its_cookie_opens_the_ui_only(server):
    with client_of(server, key=None) as browser:
        page = browser.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert browser.get("/login").status_code == 200
        wrong = browser.post("/login", data={"key": "not-it"})
        assert wrong.status_code == 401 and "tusou_session" not in browser.cookies
        right = browser.post("/login", data={"key": KEYS["variable"]})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEYS["variable"] not in cookie
        for path in ("/", "/config", "/docs", "/openapi.json"):
            assert browser.get(path).status_code == 200, path
        refused(browser.get("/api/v1/info"), 401, "this server needs an API key")  # the API wants the header
        assert browser.get("/logout").status_code == 303 and "tusou_session" not in browser.cookies
        refused(browser.get("/config"), 401, "API key")


def test_gradio_clients_send_the_key_as_a_header(server):
    from gradio_client import Client

    client = Client(server.url, headers={"Authorization": f"Bearer {KEYS['second-flag']}"}, verbose=False)
    _, results, status = client.predict("红色的圆形", 3, api_name="/search_text")
    assert len(results) == 3 and "3 个结果" in status
    with pytest.raises(Exception):
        Client(server.url, verbose=False)


def test_a_browser_logs_in_and_searches(server):
    from playwright.sync_api import expect, sync_playwright

    from tests.test_ui_browser import CHROMIUM, FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server.url)
        page.fill("#key", KEYS["flag"])
        page.click("button[type=submit]")
        page.wait_for_selector("#query textarea", timeout=60_000)
        page.fill("#query textarea", "红色的圆形")
        page.click("#search-text")
        expect(page.locator("#text-status")).to_contain_text("个结果", timeout=60_000)
        assert page.locator("#text-gallery img").count() > 0
        browser.close()


def test_keys_and_the_bind_rule():
    assert bound_host("0.0.0.0", keyed=True) == ("0.0.0.0", None)
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert bound_host(loopback, keyed=False) == (loopback, None)
    host, warning = bound_host("0.0.0.0", keyed=False)
    assert host == "127.0.0.1" and warning.startswith("tusou: warning: ") and "\n" not in warning


# --- limits -------------------------------------------------------------------------------


def request_head(server: UIServer, content_type: str, length: int | None, key: str | None = KEYS["flag"]) -> bytes:
    """A POST to /api/v1/search: its head, to be followed by a body of `length` (None: chunked)."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    keyed = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST /api/v1/search HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{keyed}"
            f"Content-Type: {content_type}\r\n{framing}\r\nConnection: close\r\n\r\n").encode()


def image_form(collection: Path, **fields: str) -> tuple[bytes, str]:
    """A multipart body as httpx writes it: `image` and the form fields."""
    request = httpx.Request("POST", "http://x/", files={"image": ("q.jpg", image_bytes(collection)[1])}, data=fields)
    return request.read(), request.headers["content-type"]


def answer_of(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of a `Connection: close` response read to its end."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def in_flight(api: httpx.Client) -> float:
    return metric(metrics(api), "tusou_api_requests_in_flight")


def wait_until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def test_a_declared_oversize_body_is_refused_before_it_is_sent(server, collection):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request_head(server, "multipart/form-data; boundary=x", 50 * 1024 * 1024))
        status, body = answer_of(sock)
    assert status == 413 and body == {"error": "request body over 20 MB: send a smaller image"}


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_a_chunked_oversize_body_is_refused_on_the_way(server, api):
    """The 413 comes once the body passes the limit, while the client still sends: the client may read it,
    or find the connection reset (the server closes with the rest unread); the count says which it was."""
    counted = {"endpoint": "/api/v1/search", "method": "POST", "status": "413"}
    before = metric(metrics(api), "tusou_requests_total", **counted)
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        try:
            sock.sendall(request_head(server, "multipart/form-data; boundary=x", None) + chunked(part))
            for _ in range(22):  # an upload of 22 MB
                sock.sendall(chunked(bytes(1024 * 1024)))
            sock.sendall(chunked(b"\r\n--x--\r\n") + b"0\r\n\r\n")
            status, body = answer_of(sock)
            assert status == 413 and body == {"error": "request body over 20 MB: send a smaller image"}
        except (BrokenPipeError, ConnectionResetError):
            pass
    wait_until(lambda: metric(metrics(api), "tusou_requests_total", **counted) == before + 1, "the 413 to be counted")
    assert_answers(api)


def test_a_client_gets_its_slots_and_no_more_and_others_theirs(server, api, collection):
    """Two slow uploads of one key hold its two slots: its third request is refused (429), another key's
    is answered; when they finish, the first key is served again."""
    body, content_type = image_form(collection, k="2")
    with client_of(server, KEYS["second-flag"]) as other:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(2)]
        for sock in slow:
            sock.sendall(request_head(server, content_type, len(body)) + body[: len(body) // 2])
        wait_until(lambda: in_flight(other) == 2, "the two slow uploads to be in flight")
        response = api.get("/api/v1/search", params={"q": "红色"})
        refused(response, 429, "too many requests at once: at most 2 in flight per client")
        assert response.headers["retry-after"] == "1"
        assert other.get("/api/v1/search", params={"q": "红色", "k": 1}).status_code == 200
        for sock in slow:
            sock.sendall(body[len(body) // 2 :])
            status, answer = answer_of(sock)
            assert status == 200 and len(answer["results"]) == 2
            sock.close()
        wait_until(lambda: in_flight(other) == 0, "the slots to be free")
    assert api.get("/api/v1/search", params={"q": "红色", "k": 1}).status_code == 200


# --- hostile clients ----------------------------------------------------------------------


def assert_answers(api: httpx.Client) -> None:
    response = api.get("/api/v1/search", params={"q": "红色的圆形", "k": 3}, timeout=30)
    assert response.status_code == 200 and len(response.json()["results"]) == 3


def test_clients_that_leave_mid_request_stop_nobody(server, api, collection):
    body, content_type = image_form(collection, k="3")
    leaving = [
        request_head(server, content_type, len(body)) + body[:1000],  # gone half-way through its upload
        request_head(server, content_type, len(body)) + body,  # gone before its answer
        f"GET /api/v1/search?q=%E7%BA%A2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['flag']}\r\n\r\n".encode(),
        b"GET /api/v1/sea",  # gone inside its request line
    ]
    for data in leaving:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(data)
        sock.close()
    wait_until(lambda: in_flight(api) == 0, "the abandoned requests to end")
    assert_answers(api)


def test_slow_clients_stop_nobody(server, api):
    """Connections that trickle a request in, and never finish: the server answers others meanwhile."""
    slow = []
    for part in (b"GET /api/v1/search?q=", f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['flag']}\r\nX-Slow: ".encode()):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(part)
        slow.append(sock)
    for sock in slow:
        sock.sendall(b"a")  # a byte at a time, still not a whole request
    assert_answers(api)
    for sock in slow:
        sock.close()


@pytest.mark.parametrize("content_type, body", [
    ("application/json", b'{"q": "\xe7\xba\xa2", "k": '),
    ("application/json", b"[1, 2, nul"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nno end"),
    ("multipart/form-data", b"no boundary at all"),
    ("application/x-www-form-urlencoded", b"k=%zz&q=%"),
])
def test_malformed_bodies_are_refused(api, content_type, body):
    response = api.post("/api/v1/search", content=body, headers={"Content-Type": content_type})
    assert 400 <= response.status_code < 500 and set(response.json()) == {"error"}, response.text
    assert_answers(api)


def test_malformed_json_to_the_ui_api_is_refused_and_the_server_answers(server, api):
    response = httpx.post(server.url + "gradio_api/call/search_text", content=b'{"data": ["', timeout=30,
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['flag']}"})
    assert 400 <= response.status_code < 500
    assert_answers(api)


def test_garbage_bytes_are_not_http_and_the_server_answers(server, api):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n")  # a TLS hello, and noise
        answer = sock.recv(65536)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    assert_answers(api)


# --- binding, start-up mistakes, SIGTERM --------------------------------------------------


def test_the_servers_connections_send_at_once():
    """A connection accepted from `listen`'s socket has Nagle's algorithm off (asyncio turns it off
    only for sockets made as TCP): with it on, a response written in two parts (head, then body)
    waited for the client's delayed ACK, 40 ms a request on Linux."""
    import asyncio

    from ui.server import listen

    async def accepted_nodelay() -> int:
        found = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            found.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await asyncio.start_server(connected, sock=listen("127.0.0.1", 0))
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        value = await asyncio.wait_for(found, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0


def test_a_port_in_use_is_one_line_before_the_model_loads(index):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(Path(sys.executable).with_name("tusou")), "serve", str(index), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == f"tusou: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_without_a_key_it_binds_loopback_only_and_sigterm_drains(index, collection):
    """Asked for 0.0.0.0 without a key: one warning line, 127.0.0.1 only. Then a request in flight when
    SIGTERM comes (an upload half sent) is answered, no new connection is taken, and the exit is 0."""
    server = UIServer(index, "--host", "0.0.0.0", env={"GRADIO_TEMP_DIR": str(index.parent / "gradio-tmp-2")})
    try:
        drains(server, collection)
    finally:
        server.stop()
    output = server.process.stdout.read().splitlines()
    assert [line for line in output if "warning" in line] == [
        "tusou: warning: no API key, so serving 127.0.0.1 only, not 0.0.0.0: give --api-key KEY or TUSOU_API_KEYS to serve other machines"]


def drains(server: UIServer, collection: Path) -> None:
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=30) as anonymous:
        assert listening(server.port) == ["0100007F"]
        body, content_type = image_form(collection, k="2")
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sock.sendall(request_head(server, content_type, len(body), key=None) + body[:2000])
        wait_until(lambda: in_flight(anonymous) == 1, "the upload to be in flight")
    server.process.send_signal(signal.SIGTERM)

    def refused_now() -> bool:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True

    wait_until(refused_now, "the listener to close")
    sock.sendall(body[2000:])
    status, answer = answer_of(sock)
    sock.close()
    assert status == 200 and len(answer["results"]) == 2
    assert server.process.wait(timeout=60) == 0
