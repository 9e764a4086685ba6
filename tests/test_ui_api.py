"""The Gradio app as a real server: its API through gradio_client, and what it refuses to serve.

The server is the `served` fixture of tests/conftest.py (shared with tests/test_ui_hostile.py):
two folders, six file types, a different mtime per image. Which images a filter admits is worked
out here from the files themselves. The index header is also checked over a segment store.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.imagegen import format_of, png_bomb
from tests.stored import stored_vectors

RESULT_KEYS = {"rank", "score", "id", "file", "taken", "taken_from", "width", "height"}
"""What every result has (with `camera` too when the image names one: these do not)."""


def test_search_text_api_returns_k_results_inside_the_index(served):
    server, collection, root = served
    gallery, results, status = Client(server.url, verbose=False).predict("红色的圆形", 7, api_name="/search_text")
    assert len(gallery) == 7 and len(results) == 7 and "7" in status
    for result, item in zip(results, gallery):
        assert set(result) == RESULT_KEYS and result["taken_from"] == "mtime" and result["taken"] == taken(result["file"])
        assert Path(result["file"]).parent in (collection, collection / "nested")
        assert result["taken"][:10] in item["caption"]
    assert [r["rank"] for r in results] == list(range(1, 8))


def test_empty_query_gets_a_message_not_an_error(served):
    server, _, _ = served
    gallery, results, status = Client(server.url, verbose=False).predict("   ", 5, api_name="/search_text")
    assert gallery == [] and results == [] and "请输入" in status


def test_search_image_api_finds_the_image_itself_first(served):
    server, collection, _ = served
    query = next(collection.glob("image_0005.*"))
    _, results, _ = Client(server.url, verbose=False).predict(handle_file(str(query)), 3, api_name="/search_image")
    assert results[0]["file"] == str(query) and results[0]["score"] > 0.99


def test_label_api_probabilities_sum_to_one(served):
    server, collection, _ = served
    image = next(collection.glob("image_0002.*"))
    scores, status = Client(server.url, verbose=False).predict(handle_file(str(image)), "猫,狗，老虎", "", api_name="/label")
    confidences = {c["label"]: c["confidence"] for c in scores["confidences"]}
    assert set(confidences) == {"猫", "狗", "老虎"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)


def test_not_an_image_upload_gets_a_message_and_the_server_stays_up(served, tmp_path):
    server, _, _ = served
    fake = tmp_path / "fake.png"
    fake.write_text("not an image at all")
    client = Client(server.url, verbose=False)
    try:
        gallery, results, status = client.predict(handle_file(str(fake)), 3, api_name="/search_image")
        assert results == [] and "无法使用" in status
    except Exception as exc:  # gradio may refuse the upload itself; either way no crash
        assert "error" in str(exc).lower()
    assert len(client.predict("红色", 2, api_name="/search_text")[1]) == 2


def test_bomb_and_oversized_uploads_are_refused_and_the_server_stays_up(served, tmp_path):
    server, _, _ = served
    client = Client(server.url, verbose=False)
    _, results, status = client.predict(handle_file(str(png_bomb(tmp_path / "bomb.png"))), 3, api_name="/search_image")
    assert results == [] and "too large" in status
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG" + os.urandom(21 * 1024 * 1024))
    with pytest.raises(Exception):
        client.predict(handle_file(str(huge)), 3, api_name="/search_image")
    assert len(client.predict("红色", 2, api_name="/search_text")[1]) == 2


def status_of(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("kind", ["absolute", "indexed", "traversal", "encoded", "symlink-target"])
def test_file_routes_refuse_paths_from_requests(served, kind):
    server, collection, root = served
    indexed = next(collection.glob("image_0001.*"))
    target = {
        "absolute": "/etc/passwd",
        "indexed": str(indexed),
        "traversal": f"{collection}/../../../../etc/passwd",
        "encoded": urllib.parse.quote(f"{collection}/../secret.png", safe=""),
        "symlink-target": str(root / "secret.png"),
    }[kind]
    for route in ("gradio_api/file=", "file=", "gradio_api/file/"):
        assert status_of(server.url + route + target) in (403, 404, 405), (route, target)


def search(client: Client, query: str, k: int, **options) -> tuple[list, list[dict], str]:
    """/search_text with the text tab's other controls by name (the rest keep their defaults)."""
    return client.predict(query, k, **options, api_name="/search_text")


def test_search_text_options_default_to_a_plain_search(served):
    server, _, _ = served
    client = Client(server.url, verbose=False)
    assert search(client, "红色的圆形", 7, reference=None, weight=0.5, negatives="", min_score=-1, dedupe=False, threshold=0.95) \
        == search(client, "红色的圆形", 7)


def test_reference_image_alone_finds_itself_and_mixes_with_text(served):
    server, collection, _ = served
    client = Client(server.url, verbose=False)
    image = next(collection.glob("image_0005.*"))
    _, results, status = search(client, "", 3, reference=handle_file(str(image)))
    assert results[0]["file"] == str(image) and results[0]["score"] > 0.99 and status.startswith("参考图片")
    _, text_only, _ = search(client, "红色的圆形", 30, reference=handle_file(str(image)), weight=0)
    _, mixed, status = search(client, "红色的圆形", 30, reference=handle_file(str(image)), weight=0.8)
    assert "“红色的圆形” + 参考图片" in status and mixed[0]["file"] == str(image)
    plain = search(client, "红色的圆形", 30)[1]
    assert [r["file"] for r in text_only] == [r["file"] for r in plain]  # weight 0: the text alone
    assert [r["score"] for r in text_only] == pytest.approx([r["score"] for r in plain], abs=1e-6)
    assert [r["score"] for r in mixed] != [r["score"] for r in text_only]


def test_min_score_drops_exactly_the_results_below_it(served):
    server, _, _ = served
    client = Client(server.url, verbose=False)
    _, plain, _ = search(client, "红色", 50)
    threshold = round(sorted(r["score"] for r in plain)[len(plain) // 2], 2)
    gallery, found, _ = search(client, "红色", 50, min_score=threshold)
    assert len(gallery) == len(found) == sum(r["score"] >= threshold for r in plain) < len(plain)
    assert all(r["score"] >= threshold for r in found)


def test_negative_terms_only_lower_scores_and_are_named_in_the_status(served):
    server, _, _ = served
    client = Client(server.url, verbose=False)
    _, plain, _ = search(client, "红色的圆形", 50)
    _, pushed, status = search(client, "红色的圆形", 50, negatives="蓝色，三角形")
    assert "排除 蓝色、三角形" in status and len(pushed) == len(plain)
    before = {r["file"]: r["score"] for r in plain}
    assert all(r["score"] <= before[r["file"]] + 1e-6 for r in pushed) and any(r["score"] < before[r["file"]] - 1e-3 for r in pushed)
    assert [r["score"] for r in pushed] == sorted((r["score"] for r in pushed), reverse=True)


def test_dedupe_folds_near_duplicates_and_the_captions_count_them(served):
    """With k above the collection size every image is either a result or folded into one."""
    server, _, root = served
    paths, vectors = zip(*stored_vectors(root / "index").items())
    stored = {path: row for row, path in enumerate(paths)}
    vectors = np.stack(vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery, found, status = search(Client(server.url, verbose=False), "红色", 50, dedupe=True, threshold=0.95)
    folded = sum(r["duplicates"] for r in found)
    assert folded > 0 and len(found) + folded == len(paths) and f"合并了 {folded} 张近似重复" in status
    for item, result in zip(gallery, found):
        assert result["duplicates"] == len(result["duplicate_files"])
        assert item["caption"].endswith(f"+{result['duplicates']} 张近似") == (result["duplicates"] > 0)
        for file in result["duplicate_files"]:
            assert vectors[stored[file]] @ vectors[stored[result["file"]]] >= 0.95
    kept = vectors[[stored[r["file"]] for r in found]]
    assert (kept @ kept.T - 2 * np.eye(len(found))).max() < 0.95


# --- filters, date order and pages ----------------------------------------------------


def taken(path: str) -> str:
    """When an image was taken as the catalog says when it has no EXIF time: its file's mtime, local."""
    return datetime.fromtimestamp(os.stat(path).st_mtime).isoformat(timespec="seconds")


@pytest.fixture(scope="module")
def indexed(served) -> list[str]:
    """Every path in the index."""
    return list(stored_vectors(served[2] / "index"))


FILTERED = {
    "folder": (dict(folders="{collection}/nested"), lambda path: "/nested/" in path),
    "folders": (dict(folders="{collection}/nested，\n{collection}/image_0001.png"),
                lambda path: "/nested/" in path or path.endswith("/image_0001.png")),
    "types": (dict(types="gif, PNG"), lambda path: format_of(path) in ("gif", "png")),
    "dates": (dict(after="2023-03", before="2023-09-15"), lambda path: "2023-03-01" <= taken(path) < "2023-09-15"),
    "together": (dict(folders="{collection}", types="jpg,webp", after="2023-05-20"),
                 lambda path: format_of(path) in ("jpeg", "webp") and taken(path) >= "2023-05-20"),
}


@pytest.mark.parametrize("case", FILTERED)
def test_a_filter_returns_exactly_the_images_it_admits(served, indexed, case):
    """k beyond the collection: every admitted image comes back, best first, and nothing else."""
    server, collection, _ = served
    options, admits = FILTERED[case]
    options = {key: value.format(collection=collection) for key, value in options.items()}
    gallery, found, status = search(Client(server.url, verbose=False), "红色", 50, **options)
    expected = {path for path in indexed if admits(path)}
    assert 0 < len(expected) < len(indexed) and {r["file"] for r in found} == expected and len(gallery) == len(found)
    assert [r["score"] for r in found] == sorted((r["score"] for r in found), reverse=True)
    assert f"{len(found)} 个结果，第 1–{len(found)} 个" in status and "（" in status.split(":")[0]  # the filters are named


def test_newest_first_pages_through_what_a_filter_admits(served, indexed):
    server, _, _ = served
    client = Client(server.url, verbose=False)
    admitted = sorted((path for path in indexed if format_of(path) in ("jpeg", "webp", "gif")), key=taken, reverse=True)
    _, whole, status = search(client, "红色", 9, types="jpg,webp,gif", sort="newest")
    assert [r["file"] for r in whole] == admitted[:9] and "最新在前" in status
    pages = [search(client, "红色", 3, types="jpg,webp,gif", sort="newest", offset=offset) for offset in (0, 3, 6)]
    assert [(r["rank"], r["file"]) for _, page, _ in pages for r in page] == [(r["rank"], r["file"]) for r in whole]
    assert "3 个结果，第 4–6 个" in pages[1][2]
    _, oldest, _ = search(client, "红色", 3, types="jpg,webp,gif", sort="oldest")
    assert [r["file"] for r in oldest] == admitted[::-1][:3]
    gallery, past, status = search(client, "红色", 3, types="jpg,webp,gif", offset=len(indexed))
    assert gallery == past == [] and f"第 {len(indexed)} 个之后没有更多" in status


def test_score_pages_are_slices_of_one_longer_list(served):
    client = Client(served[0].url, verbose=False)
    _, whole, _ = search(client, "红色的圆形", 12)
    pages = [search(client, "红色的圆形", 4, offset=offset)[1] for offset in (0, 4, 8)]
    assert [(r["rank"], r["file"]) for page in pages for r in page] == [(r["rank"], r["file"]) for r in whole]
    assert [r["score"] for page in pages for r in page] == pytest.approx([r["score"] for r in whole], abs=1e-6)


def test_search_image_takes_the_filters_sort_and_pages(served, indexed):
    server, collection, _ = served
    client = Client(server.url, verbose=False)
    query = next(collection.glob("image_0005.*"))  # a JPEG at the top of the collection
    _, found, status = client.predict(handle_file(str(query)), 50, folders=str(collection / "nested"), api_name="/search_image")
    assert {r["file"] for r in found} == {path for path in indexed if "/nested/" in path} and status.startswith("以图搜图（在 ")
    _, found, _ = client.predict(handle_file(str(query)), 2, types="jpg", sort="newest", offset=1, api_name="/search_image")
    jpegs = sorted((path for path in indexed if format_of(path) == "jpeg"), key=taken, reverse=True)
    assert [(r["rank"], r["file"]) for r in found] == [(2, jpegs[1]), (3, jpegs[2])]


@pytest.mark.parametrize("options, message", [
    (dict(after="2024-13"), "--after '2024-13': give a date such as 2024, 2024-06, 2024-06-01"),
    (dict(before="明天"), "--before '明天': give a date"),
    (dict(after="2024-07", before="2024-06"), "is not before --before 2024-06"),
    (dict(near="91,0,1"), "--near '91,0,1': latitude must be within -90..90"),
    (dict(near="1,2,-3"), "the distance must be a positive number of kilometres"),
    (dict(types=" , "), "--type ',': give file types such as jpg,png"),
    (dict(offset=-1), "offset -1: give a whole number of results to skip"),
])
def test_a_bad_filter_value_is_the_status_line_and_no_results(served, options, message):
    server, collection, _ = served
    client = Client(server.url, verbose=False)
    image = handle_file(str(next(collection.glob("image_0005.*"))))
    for gallery, results, status in (search(client, "红色", 5, **options), client.predict(image, 5, **options, api_name="/search_image")):
        assert gallery == [] and results == [] and message in status and "\n" not in status and "Traceback" not in status
    assert len(search(client, "红色", 2)[1]) == 2


def test_a_sort_outside_its_choices_is_refused_by_the_radio(served):
    client = Client(served[0].url, verbose=False)
    with pytest.raises(AppError):
        search(client, "红色", 5, sort="bogus")
    assert len(search(client, "红色", 2)[1]) == 2


# --- the index header -----------------------------------------------------------------


def index_header(server) -> str:
    config = json.load(urllib.request.urlopen(server.url + "config", timeout=10))
    return next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "index-info")


def test_the_header_names_model_count_segments_precision_and_update(served, indexed):
    from retrieval.store.store import open_store

    server, _, root = served
    store = open_store(root / "index")
    header = index_header(server)
    assert header.startswith("**模型** `test-tiny` · ") and f"**图片数** {len(indexed)} · " in header
    assert "**索引** 1 段 `flat ×1`" in header and re.search(r"\*\*查询精度\*\* `(float32|bfloat16)`", header)
    assert header.endswith(f"**更新时间** {store.catalog.setting('updated') or store.manifest.updated}")


def test_the_header_of_a_segment_store_counts_live_items_and_segments_by_type(served, tmp_path, tiny_model):
    """Segments of two types, a few rows deleted, the update time in the catalog's settings."""
    from indexer.segment_writer import write_deletions, write_segment
    from retrieval.search.searcher import Searcher
    from retrieval.store.catalog import Catalog, drop_items, item_values, put_items, put_segment, put_setting
    from retrieval.store.manifest import Manifest, read_manifest, write_manifest
    from retrieval.store.records import CatalogItem
    from retrieval.store.store import CATALOG
    from ui.app import SearchApp
    from ui.backend import Backend

    vectors = stored_vectors(served[2] / "index")
    block = np.stack(list(vectors.values())).astype(np.float16)
    directory = tmp_path / "segmented"
    directory.mkdir()
    write_manifest(directory, Manifest(read_manifest(served[2] / "index").model, block.shape[1]))
    catalog = Catalog(directory / CATALOG, create=True)
    flat = write_segment(directory, 1, np.arange(20), block.shape[1], lambda out: np.copyto(out, block[:20]), "flat", None)
    hnsw = write_segment(directory, 2, np.arange(20, len(block)), block.shape[1], lambda out: np.copyto(out, block[20:]), "hnsw", None)
    hnsw = write_deletions(directory, hnsw, np.array([0, 1]), 1)
    with catalog.transaction() as db:
        items = [CatalogItem(path, 1, 10**18, "", 8, 8, id=i) for i, path in enumerate(vectors)]
        put_items(db, (item_values(item, 1 if item.id < 20 else 2, item.id % 20) for item in items))
        drop_items(db, [20, 21])
        for row in (flat, hnsw):
            put_segment(db, row)
        put_setting(db, "generation", 1)
        put_setting(db, "updated", "2026-01-02T03:04:05+00:00")
    header = SearchApp(Backend(Searcher(directory, model=tiny_model, precision="fp32"))).info_markdown()
    recall = hnsw.index_entry.search["recall_at_10"]
    assert f"**图片数** {len(block) - 2} · **索引** 2 段 `flat ×1、hnsw ×1, recall@10 ≥ {recall:.3f}`" in header
    assert "**查询精度** `float32`" in header and header.endswith("**更新时间** 2026-01-02T03:04:05+00:00")


def test_ocr_api_reads_the_lines_of_an_upload(served, tmp_path):
    from tests.test_ocr import NAME, sign

    server, _, _ = served
    sign(1)[0].save(tmp_path / "sign.png")
    _, lines, status = Client(server.url, verbose=False).predict(handle_file(str(tmp_path / "sign.png")), api_name="/ocr")
    assert NAME in [line["text"] for line in lines] and all(set(line) == {"text", "confidence", "box"} for line in lines)
    assert status == f"{len(lines)} 行文字"
