"""Composed queries on the shipped `demo` model: text with a reference image, negative terms,
a score threshold and near-duplicate folding, through the query layer and the CLI.

The collection is the demo's drawn shapes with known colours and kinds, so each option's
effect is asserted on what the images show; shape_0011.png (a red circle) is also present
as an identical copy and as a JPEG re-encode.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import BuildPlan, build_index
from retrieval import Query, Searcher, TusouError
from retrieval.datasets.synthetic import write_collection
from retrieval.search.query import NEGATIVE_WEIGHT, unit
from tests.stored import stored_vectors
from ui.cli import main

ORIGINAL = "shape_0011.png"
COPIES = ("copy_0011.png", "copy_0011.jpg")
REFERENCE = "shape_0057.png"
"""A single blue square: mixed with the text 圆形 (circle), blue circles should come first."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Searcher, dict[str, dict], Path]:
    """(searcher over 98 demo images, what each file shows, the collection folder)."""
    root = tmp_path_factory.mktemp("rich-queries")
    collection = root / "collection"
    rows = write_collection(collection, 96)
    shutil.copy(collection / ORIGINAL, collection / COPIES[0])
    Image.open(collection / ORIGINAL).save(collection / COPIES[1], quality=85)
    build_index(BuildPlan([collection], root / "index", "demo", device="cpu", workers=0, progress=False))
    truth = {row["file"]: row for row in rows} | {copy: next(r for r in rows if r["file"] == ORIGINAL) for copy in COPIES}
    assert truth[REFERENCE]["shapes"] == [["蓝色", "正方形"]] and truth[ORIGINAL]["shapes"] == [["红色", "圆形"]]
    return Searcher(root / "index", device="cpu"), truth, collection


def shows(truth: dict[str, dict], path: str, colour: str | None = None, kind: str | None = None) -> bool:
    """Whether the image at `path` has a shape of this colour and/or kind."""
    return any(colour in (None, c) and kind in (None, k) for c, k in truth[Path(path).name]["shapes"])


def names(results) -> list[str]:
    return [Path(r.path).name for r in results]


def brute_force(searcher: Searcher, query: Query) -> tuple[list[str], np.ndarray]:
    """Every stored image scored by the documented formula, best first (names, scores)."""
    positive, negatives = searcher.query_vectors(query)
    vectors = stored_vectors(searcher.store.directory)
    paths, stored = list(vectors), unit(np.stack(list(vectors.values())))
    scores = stored @ positive
    if len(negatives):
        scores = scores - NEGATIVE_WEIGHT * np.clip(stored @ negatives.T, 0, None).max(axis=1)
    order = np.argsort(-scores, kind="stable")
    return [Path(paths[i]).name for i in order], scores[order]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"text": "圆形", "weight": 1.5}, "weight 1.5 is outside 0..1"),
        ({"text": "圆形", "weight": float("nan")}, "weight nan is outside 0..1"),
        ({"text": "圆形", "min_score": -2}, "min-score -2 is outside -1..1"),
        ({"text": "圆形", "dedupe": 0}, "dedupe threshold 0 is outside (0, 1]"),
        ({"text": "圆形", "dedupe": 1.2}, "dedupe threshold 1.2 is outside (0, 1]"),
        ({"negatives": ["红色"]}, "negative terms only push results down"),
        ({}, "nothing to search for"),
        ({"text": "  \u200b "}, "empty query"),
        ({"text": "圆形", "negatives": ["红色", " \x00 "]}, "empty negative term"),
    ],
)
def test_a_query_is_checked_when_made(fields, message):
    with pytest.raises(TusouError, match=re.escape(message)):
        Query(**fields)


def test_query_cleans_its_text_and_drops_repeated_negatives():
    query = Query(text="  红色的\n圆形 ", negatives=["蓝色", " 蓝色 ", "三角形"])
    assert query.text == "红色的 圆形" and query.negatives == ("蓝色", "三角形")


def test_plain_text_and_image_searches_are_unchanged(demo):
    searcher, _, collection = demo
    vector = searcher.model.encode_texts(["两个绿色的正方形"])
    composed, direct = searcher.search_text("两个绿色的正方形", 8), searcher.search_vectors(vector, 8)[0]
    assert [(r.rank, r.id, r.path) for r in composed] == [(r.rank, r.id, r.path) for r in direct]
    assert [r.score for r in composed] == pytest.approx([r.score for r in direct], abs=1e-6)
    assert names(searcher.search_image(collection / REFERENCE, 1)) == [REFERENCE]


def test_a_negative_term_pushes_its_images_down(demo):
    searcher, truth, _ = demo
    plain = searcher.search(Query(text="圆形"), 8)
    pushed = searcher.search(Query(text="圆形", negatives=["红色"]), 8)
    assert sum(shows(truth, r.path, "红色") for r in plain[:5]) >= 2, names(plain)
    assert not any(shows(truth, r.path, "红色") for r in pushed), names(pushed)
    assert all(shows(truth, r.path, kind="圆形") for r in pushed[:5]), names(pushed)


def test_every_negative_term_acts_at_full_strength(demo):
    """A second term must not weaken the first (it would, if the terms were averaged)."""
    searcher, truth, _ = demo
    both = searcher.search(Query(text="圆形", negatives=["红色", "黄色"]), 5)
    assert not any(shows(truth, r.path, "红色") or shows(truth, r.path, "黄色") for r in both), names(both)
    assert all(shows(truth, r.path, kind="圆形") for r in both), names(both)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
@pytest.mark.parametrize("text, negatives", [("圆形", ["红色", "黄色"]), ("红色", ["红色"]), ("圆形", ["圆形", "蓝色"])])
def test_negatives_rank_the_whole_index_as_the_formula_says(demo, k, text, negatives):
    """Scores are cosine minus NEGATIVE_WEIGHT × the highest cosine to a negative term, and the
    top k are those of every stored image, however far down the candidates had to be fetched
    (a term that is the query itself pushes its best matches far down)."""
    searcher, _, _ = demo
    query = Query(text=text, negatives=negatives)
    found = searcher.search(query, k)
    expected_names, expected_scores = brute_force(searcher, query)
    assert [r.score for r in found] == pytest.approx(expected_scores[:k].tolist(), abs=1e-4)
    score_of = dict(zip(expected_names, expected_scores))
    assert all(r.score == pytest.approx(score_of[Path(r.path).name], abs=1e-4) for r in found)


def test_a_reference_image_moves_results_toward_it(demo):
    searcher, truth, collection = demo
    reference = collection / REFERENCE

    def top(weight: float) -> list:
        return searcher.search(Query(text="圆形", image=reference, weight=weight), 6)

    text_only, mixed, image_only = top(0), top(0.5), top(1)
    assert names(text_only) == names(searcher.search_text("圆形", 6))
    assert names(image_only)[0] == REFERENCE and names(image_only) == names(searcher.search_image(reference, 6))
    blue = [sum(shows(truth, r.path, "蓝色") for r in found) for found in (text_only, mixed)]
    circles = [sum(shows(truth, r.path, kind="圆形") for r in found) for found in (mixed, image_only)]
    assert blue[1] > blue[0] and circles[0] > circles[1], (names(text_only), names(mixed), names(image_only))
    assert any(shows(truth, r.path, "蓝色", "圆形") for r in mixed[:3]), names(mixed)


def test_weight_0_is_the_text_alone_and_weight_1_the_image_alone_by_construction(demo):
    """Over the whole index, where near-ties would expose any rounding: the part weighted out
    takes no part in the vector, so the rankings are the single part's, id for id."""
    searcher, _, collection = demo
    reference, every = collection / REFERENCE, len(searcher)

    def ids(query: Query) -> list[int]:
        return [r.id for r in searcher.search(query, every)]

    assert ids(Query(text="圆形", image=reference, weight=0)) == ids(Query(text="圆形"))
    for text in ("圆形", "红色的三角形", "两个绿色的正方形"):  # one code path, so not even the last bit differs
        weighted_out, _ = searcher.query_vectors(Query(text=text, image=reference, weight=0))
        assert np.array_equal(weighted_out, searcher.query_vectors(Query(text=text))[0]), text
    assert ids(Query(text="圆形", image=reference, weight=1)) == ids(Query(image=reference))
    image_only, _ = searcher.query_vectors(Query(text="圆形", image=reference, weight=1))
    assert np.array_equal(image_only, searcher.query_vectors(Query(image=reference))[0])
    with_negatives = dict(negatives=["红色"], dedupe=0.95)
    assert ids(Query(text="圆形", image=reference, weight=0, **with_negatives)) == ids(Query(text="圆形", **with_negatives))
    with pytest.raises(TusouError):  # the image weighted out is still read: a bad one is an error
        searcher.search(Query(text="圆形", image=collection / "no-such.png", weight=0), 3)


def test_min_score_keeps_exactly_the_results_at_or_above_it(demo):
    searcher, _, _ = demo
    for query in (Query(text="圆形", min_score=0.7), Query(text="圆形", negatives=["红色"], min_score=0.45)):
        found = searcher.search(query, 1000)
        _, scores = brute_force(searcher, query)  # numpy's cosines, not FAISS's: equal up to rounding
        assert 0 < (scores >= query.min_score + 1e-5).sum() <= len(found) <= (scores >= query.min_score - 1e-5).sum() < len(searcher)
        assert min(r.score for r in found) >= query.min_score


def test_near_duplicates_fold_into_the_best_ranked_copy(demo):
    searcher, _, collection = demo
    plain = searcher.search(Query(image=collection / ORIGINAL), 5)
    assert set(names(plain)[:3]) == {ORIGINAL, *COPIES}
    folded = searcher.search(Query(image=collection / ORIGINAL, dedupe=0.999), 5)
    assert len(folded) == 5 and [r.rank for r in folded] == [1, 2, 3, 4, 5]
    assert folded[0].duplicates == 2 and {Path(p).name for p in (folded[0].path, *folded[0].duplicate_paths)} == {ORIGINAL, *COPIES}
    assert all(r.duplicates == 0 for r in folded[1:]) and not set(names(folded[1:])) & {ORIGINAL, *COPIES}
    assert names(folded[1:]) == [n for n in names(searcher.search(Query(image=collection / ORIGINAL), 8)) if n not in {ORIGINAL, *COPIES}][:4]


@pytest.mark.parametrize("threshold", [0.95, 0.8, 0.5])
def test_dedupe_keeps_k_distinct_results_and_folds_only_what_is_that_close(demo, threshold):
    """The results are the first k of the whole ranking that are not near-duplicates of a better
    one, however many candidates that takes."""
    searcher, _, _ = demo
    stored = {path: unit(vector) for path, vector in stored_vectors(searcher.store.directory).items()}
    found = searcher.search(Query(text="圆形", dedupe=threshold), 10)
    distinct: list[str] = []
    for path in (r.path for r in searcher.search(Query(text="圆形"), len(searcher))):
        if all(stored[path] @ stored[kept] < threshold for kept in distinct):
            distinct.append(path)
    assert [r.path for r in found] == distinct[:10] and sum(r.duplicates for r in found) > 0
    for result in found:
        assert all(stored[path] @ stored[result.path] >= threshold for path in result.duplicate_paths)


def cli(capsys, *argv) -> tuple[int, list[dict], str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_cli_combined_query_with_negatives_threshold_and_dedupe(demo, capsys):
    searcher, truth, collection = demo
    index = searcher.store.directory
    code, rows, _ = cli(capsys, "search", index, "圆形", "--image", collection / REFERENCE, "--weight", "0.5",
                        "--not", "红色", "--not", "黄色", "--min-score", "0.3", "--dedupe", "-k", "6", "--json")
    expected = searcher.search(Query(text="圆形", image=collection / REFERENCE, negatives=("红色", "黄色"), min_score=0.3,
                                     dedupe=0.95), 6)
    assert code == 0 and [r["path"] for r in rows] == [r.path for r in expected] and len(rows) == 6
    assert all(r.keys() >= {"rank", "score", "id", "path", "taken", "taken_from", "width", "height"} and r["score"] >= 0.3 for r in rows)
    assert all((r["duplicates"], r["duplicate_paths"]) == (result.duplicates, list(result.duplicate_paths)) for r, result in zip(rows, expected))
    assert not any(shows(truth, r["path"], "红色") or shows(truth, r["path"], "黄色") for r in rows)

    code, rows, _ = cli(capsys, "search", index, "--image", collection / COPIES[1], "--dedupe", "0.999", "-k", "3", "--json")
    assert code == 0 and rows[0]["duplicates"] == 2 and len(rows) == 3
    assert {Path(p).name for p in (rows[0]["path"], *rows[0]["duplicate_paths"])} == {ORIGINAL, *COPIES}

    assert main(["search", str(index), "--image", str(collection / ORIGINAL), "--dedupe=0.999", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("(+2 near-duplicates)") and "near-duplicate" not in lines[1]
