"""The Gradio app as a real server: its API through gradio_client, and what it refuses to serve.

The server is the `served` fixture of tests/conftest.py (shared with tests/test_ui_hostile.py).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

from tests.imagegen import png_bomb


def test_search_text_api_returns_k_results_inside_the_index(served):
    server, collection, root = served
    gallery, results, status = Client(server.url, verbose=False).predict("红色的圆形", 7, api_name="/search_text")
    assert len(gallery) == 7 and len(results) == 7 and "7" in status
    for result in results:
        assert set(result) == {"rank", "score", "id", "file"}
        assert Path(result["file"]).parent in (collection, collection / "nested")
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
    from tests.stored import read_back

    server, _, root = served
    index = read_back(root / "index")
    stored = {item.path: row for row, item in enumerate(index.items)}
    vectors = np.asarray(index.embeddings, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery, found, status = search(Client(server.url, verbose=False), "红色", 50, dedupe=True, threshold=0.95)
    folded = sum(r["duplicates"] for r in found)
    assert folded > 0 and len(found) + folded == len(index.items) and f"合并了 {folded} 张近似重复" in status
    for item, result in zip(gallery, found):
        assert result["duplicates"] == len(result["duplicate_files"])
        assert item["caption"].endswith(f"+{result['duplicates']} 张近似") == (result["duplicates"] > 0)
        for file in result["duplicate_files"]:
            assert vectors[stored[file]] @ vectors[stored[result["file"]]] >= 0.95
    kept = vectors[[stored[r["file"]] for r in found]]
    assert (kept @ kept.T - 2 * np.eye(len(found))).max() < 0.95
