"""Concurrent queries share the towers in batches (retrieval.search.encoder), and get what each would alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from indexer import BuildPlan, build_index
from retrieval.search.encoder import QueryEncoder
from retrieval.search.searcher import Searcher
from tests.imagegen import write_images

TEXTS = ["红色的圆形", "一只猫坐在沙发上", "蓝色", "两个绿色的正方形和一个黄色的三角形在白色背景上", "夜晚的城市街道"]


def until(condition, seconds: float = 10.0) -> None:
    """Wait for `condition()` to hold (a deadline, not a guess at how long it takes)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def held_then_released(encoder: QueryEncoder, calls: list) -> list:
    """Run `calls` (functions of the encoder) in threads while the model is held, so that all of them
    are queued before any runs; then let the model go. Returns each call's result or exception."""
    outcomes: list = [None] * len(calls)

    def run(number: int) -> None:
        try:
            outcomes[number] = calls[number](encoder)
        except Exception as exc:
            outcomes[number] = exc

    threads = [threading.Thread(target=run, args=(number,)) for number in range(len(calls))]
    with encoder.exclusive():
        for thread in threads:
            thread.start()
        until(lambda: encoder.depth == len(calls) + 1)
    for thread in threads:
        thread.join()
    return outcomes


def test_queries_waiting_for_the_model_run_as_one_batch_with_the_vectors_each_gets_alone(tiny_model):
    encoder = QueryEncoder(tiny_model, max_batch=8)
    outcomes = held_then_released(encoder, [lambda e, t=t: e.encode_texts([t]) for t in TEXTS])
    assert list(encoder.stats.sizes) == [len(TEXTS)] and encoder.depth == 0
    for text, rows in zip(TEXTS, outcomes):
        alone = tiny_model.encode_texts([text])
        assert rows.shape == alone.shape
        np.testing.assert_allclose(rows, alone, atol=1e-5)  # padded beside longer texts, the same vector


def test_a_batch_is_at_most_max_batch_and_max_batch_one_runs_each_alone(tiny_model):
    calls = [lambda e, t=t: e.encode_texts([t]) for t in TEXTS]
    three = QueryEncoder(tiny_model, max_batch=3)
    held_then_released(three, calls)
    assert sorted(three.stats.sizes) == [2, 3] and three.stats.requests == len(TEXTS)
    alone = QueryEncoder(tiny_model, max_batch=1)
    held_then_released(alone, calls)
    assert list(alone.stats.sizes) == [1] * len(TEXTS)


def test_text_and_image_requests_of_one_batch_each_go_through_their_tower(tiny_model):
    pictures = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    encoder = QueryEncoder(tiny_model, max_batch=8)
    calls = [lambda e: e.encode_texts(TEXTS[:2]), lambda e: e.encode_images(pictures[:1]), lambda e: e.encode_images(pictures[1:])]
    texts, red, blue = held_then_released(encoder, calls)
    assert list(encoder.stats.sizes) == [3]
    np.testing.assert_allclose(texts, tiny_model.encode_texts(TEXTS[:2]), atol=1e-5)
    np.testing.assert_allclose(np.concatenate([red, blue]), tiny_model.encode_images(pictures), atol=1e-5)


def test_a_request_that_fails_fails_alone(tiny_model):
    """A picture the image tower cannot take (no pixels) is an error for its caller only."""
    good, empty = Image.new("RGB", (64, 64), "green"), Image.new("RGB", (0, 0))
    encoder = QueryEncoder(tiny_model, max_batch=8)
    outcomes = held_then_released(encoder, [lambda e: e.encode_images([good]), lambda e: e.encode_images([empty]),
                                            lambda e: e.encode_texts(TEXTS[:1])])
    assert isinstance(outcomes[1], Exception)
    np.testing.assert_allclose(outcomes[0], tiny_model.encode_images([good]), atol=1e-5)
    np.testing.assert_allclose(outcomes[2], tiny_model.encode_texts(TEXTS[:1]), atol=1e-5)
    assert encoder.depth == 0


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    write_images(root / "collection", 30)
    build_index(BuildPlan([root / "collection"], root / "index", "test-tiny", device="cpu", workers=0, progress=False))
    return root / "index"


def test_concurrent_searches_find_what_each_finds_alone(index_dir, tiny_model):
    queries = [f"{text} {number}" for number in range(4) for text in TEXTS]
    alone = Searcher(index_dir, device="cpu", model=tiny_model)
    expected = {q: alone.search_text(q, 5) for q in queries}
    batched = Searcher(index_dir, device="cpu", model=tiny_model, max_batch=8)
    with ThreadPoolExecutor(8) as pool:
        found = dict(zip(queries, pool.map(lambda q: batched.search_text(q, 5), queries)))
    assert batched.encoder.stats.requests == len(queries) and batched.encoder.depth == 0
    for query in queries:
        assert [r.id for r in found[query]] == [r.id for r in expected[query]]
        assert [r.score for r in found[query]] == pytest.approx([r.score for r in expected[query]], abs=1e-5)
