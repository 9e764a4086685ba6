"""The OCR benchmark set: drawn the same for the same seed, its queries answered by the text drawn."""

from __future__ import annotations

import json
import random

import pytest

from eval import fonts
from eval.ocr_reading import piece_distance, score_reading
from eval.ocr_synthetic import _typo, fold, generate
from retrieval.errors import TusouError
from retrieval.search.normalise import normalise
from retrieval.search.text_match import FUZZY_FROM


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    first, again = tmp_path_factory.mktemp("set"), tmp_path_factory.mktemp("again")
    pictures, queries = generate(first, 12, seed=5, distractors=0.25)
    generate(again, 12, seed=5, distractors=0.25)
    return first, again, pictures, queries


def test_the_same_seed_draws_the_same_set(drawn, tmp_path):
    first, again, pictures, _ = drawn
    for name in ("images.jsonl", "queries.jsonl"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert [p.name for p in pictures] == sorted(path.name for path in (first / "images").iterdir())
    assert all((first / "images" / p.name).read_bytes() == (again / "images" / p.name).read_bytes() for p in pictures)
    other, _ = generate(tmp_path, 3, seed=6, distractors=0)
    assert [p.lines for p in other] != [p.lines for p in pictures[:3]]


def test_pictures_vary_as_the_benchmark_asks(drawn):
    first, _, pictures, _ = drawn
    written = [json.loads(line) for line in (first / "images.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["name"] for row in written] == [p.name for p in pictures]
    lines = [line for p in pictures for line in p.lines]
    assert {p.scene for p in pictures} == {"poster", "sign", "chat", "receipt", "meme", "photo"}
    assert all(14 <= line.size <= 72 for line in lines) and len({line.size for line in lines}) > 10
    assert {line.face.split(" CJK")[0] for line in lines} == {"Noto Sans", "Noto Serif"}
    assert any(not p.lines for p in pictures)  # text-free photos among them
    assert any(p.traditional for p in pictures) and all(p.traditional == all("TC" in l.face for l in p.lines) for p in pictures if p.lines)


def test_queries_are_answered_by_the_pictures_holding_their_target(drawn):
    _, _, pictures, queries = drawn
    keys = {p.name: "\n".join(p.keys) for p in pictures}
    drawn_traditional = {p.name for p in pictures if p.traditional}
    assert {q["kind"] for q in queries} == {"exact", "short", "traditional", "typo"}
    for query in queries:
        assert query["image"] in query["answers"]
        assert query["answers"] == [name for name, text in keys.items() if query["target"] in text]
        if query["kind"] == "short":
            assert 1 <= len(query["query"]) <= 2
        elif query["kind"] == "typo":
            assert len(query["target"]) >= 4 and piece_distance(query["query"], query["target"]) == 1
            assert len(normalise(query["query"])) >= FUZZY_FROM  # as long as the text search forgives an edit at
            assert not any(query["query"] in text for text in keys.values())
        elif query["kind"] == "traditional":
            assert normalise(query["query"]) == normalise(query["target"])  # typed in the script not drawn:
            assert (query["query"] == query["target"]) == (query["image"] in drawn_traditional)  # simplified for a traditional sign
        assert 14 <= query["size"] <= 72


def test_reading_is_scored_against_the_text_drawn(drawn):
    _, _, pictures, _ = drawn
    truth = [{"name": p.name, "lines": [{"text": line.text, "size": line.size} for line in p.lines]} for p in pictures]
    perfect = score_reading(truth, {p.name: [line.text for line in p.lines] for p in pictures})
    assert perfect["exact_read"] == perfect["char_accuracy"] == perfect["exact_read_20px"] == 1 and perfect["lines_per_photo"] == 0
    first = next(p for p in pictures if p.lines)
    misread = ["口" + first.lines[0].text[1:]] + [line.text for line in first.lines[1:]]  # one character wrong
    missed = score_reading(truth, {p.name: [line.text for line in p.lines] for p in pictures} | {first.name: misread})
    characters = sum(len(normalise(line.text)) for p in pictures for line in p.lines)
    assert missed["exact_read"] == pytest.approx(1 - 1 / missed["lines"]) and missed["char_accuracy"] == pytest.approx(1 - 1 / characters)
    assert piece_distance("火锅店", "老王火锅店电话") == 0 and piece_distance("火锅店", "老王火锅") == 1 and fold("０１０－８８") == "01088"


def test_without_the_fonts_it_is_one_line_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(fonts, "FONT_DIRS", (str(tmp_path),))
    fonts.cjk_faces.cache_clear()
    try:
        with pytest.raises(TusouError, match="apt-get install fonts-noto-cjk"):
            fonts.cjk_faces()
    finally:
        fonts.cjk_faces.cache_clear()


def test_eval_measures_search_by_the_text_in_pictures_each_way(tmp_path, capsys):
    from tests.test_cli import json_lines, run

    from eval.ocr_search import draw_shapes

    generate(tmp_path, 4, seed=2, distractors=0.25)
    draw_shapes(tmp_path / "shapes", 3)
    code, out, _ = run(capsys, "eval", "--dataset", "ocr-synthetic", "--data", tmp_path, "--model", "test-tiny", "--device", "cpu", "--json")
    assert code == 0
    (results,) = json_lines(out)
    metrics = results["metrics"]
    queries = (tmp_path / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    assert results["counts"]["queries"] == len(queries) + 3 and results["counts"]["pictures"] == 4 and results["counts"]["shapes"] == 3
    for way in ("text", "visual", "both", "both_rrf"):
        groups = ("", "_20px", "_exact", "_short", "_traditional", "_typo", "_shapes")
        assert {f"{way}_hit@{k}{group}" for k in (1, 5, 10) for group in groups} <= set(metrics)
    # the real OCR reads the drawn text; test-tiny's random towers see nothing, and merging must not lose the text's hits
    assert metrics["ocr_char_accuracy_20px"] > 90 and metrics["text_hit@1_exact"] > 80
    assert metrics["both_hit@1"] >= metrics["text_hit@1"] - 5 and metrics["both_hit@1"] > metrics["visual_hit@1"]


def test_a_typo_query_keeps_the_length_that_is_forgiven_an_edit():
    edited = {_typo("欢迎光临", random.Random(seed), list("天地人和")) for seed in range(60)}
    assert all(len(typo) >= FUZZY_FROM and piece_distance(typo, "欢迎光临") == 1 for typo in edited)
    assert len({len(typo) for typo in edited}) == 2  # substituted and inserted
    assert any(len(_typo("欢迎光临啊", random.Random(seed), list("天地人和"))) == 4 for seed in range(60))  # deleted from a longer piece
