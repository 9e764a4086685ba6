"""Searching an index built with --ocr: the visual ranking and the text matches merged into one, each
result found by its text carrying the line; the store's filters apply to both (real RapidOCR,
real SQLite, the test-tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer import BuildPlan, build_index
from retrieval import Searcher, TusouError
from retrieval.search.filters import make_filters
from retrieval.search.query import Query
from tests.imagegen import write_images
from tests.test_cli import json_lines, run
from tests.test_index_ocr import poster
from tests.test_ocr import sign


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Ten pictures without text, a shop sign in shops/, two posters in posters/."""
    folder = tmp_path_factory.mktemp("ocr-search") / "photos"
    write_images(folder / "plain", 10)
    (folder / "shops").mkdir()
    (folder / "posters").mkdir()
    sign(1)[0].save(folder / "shops" / "sign.png")
    poster("火锅节开幕").save(folder / "posters" / "festival.png")
    poster("牛肉拉面十八元").save(folder / "posters" / "menu.png")
    return folder


@pytest.fixture(scope="module")
def indexes(collection, tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ocr-indexes")
    for name, ocr in (("ocr", True), ("plain", False)):
        build_index(BuildPlan([collection], root / name, model=tiny_model, workers=0, progress=False, ocr=ocr))
    return {name: root / name for name in ("ocr", "plain")}


@pytest.fixture(scope="module")
def searcher(indexes, tiny_model):
    found = Searcher(indexes["ocr"], model=tiny_model)
    yield found
    found.close()


def names(results) -> list[str]:
    return [Path(result.path).name for result in results]


def test_a_text_query_finds_the_picture_showing_it_first_with_its_line(searcher):
    results = searcher.search(Query(text="老王火鍋"), k=5)  # traditional form of what the sign says
    assert names(results)[0] == "sign.png"
    line = results[0].ocr
    assert line is not None and "老王火锅" in line.text and line.exact and len(line.box) == 4
    assert [r.rank for r in results] == [1, 2, 3, 4, 5] and results[0].score > results[1].score
    assert all(r.ocr is None for r in results if Path(r.path).parent.name == "plain")  # found by their looks alone


def test_both_rankings_merge_and_each_way_alone(searcher):
    both = names(searcher.search(Query(text="火锅"), k=13))
    assert set(both[:2]) == {"sign.png", "festival.png"} and len(both) == 13
    text = searcher.search(Query(text="火锅", match="text"), k=10)
    assert set(names(text)) == {"sign.png", "festival.png"} and all(r.ocr for r in text)
    visual = searcher.search(Query(text="火锅", match="visual"), k=13)
    assert all(r.ocr is None for r in visual) and sorted(names(visual)) == sorted(both)
    rrf = names(searcher.search(Query(text="火锅", fusion="rrf"), k=13))
    assert sorted(rrf) == sorted(both) and {"sign.png", "festival.png"} <= set(rrf[:4])


def test_filters_apply_to_the_text_matches(searcher, collection):
    posters = make_filters(folders=[str(collection / "posters")])
    assert names(searcher.search(Query(text="火锅", match="text", filters=posters))) == ["festival.png"]
    results = searcher.search(Query(text="老王火锅", filters=posters), k=5)
    assert "sign.png" not in names(results) and all(Path(r.path).parent.name == "posters" for r in results)


def test_an_index_without_ocr_searches_as_before(indexes, tiny_model):
    plain = Searcher(indexes["plain"], model=tiny_model)
    try:
        assert not plain.has_text()
        default = plain.search(Query(text="火锅"), k=13)
        assert all(r.ocr is None for r in default)
        assert [(r.path, r.score) for r in default] == [(r.path, r.score) for r in plain.search(Query(text="火锅", match="visual"), k=13)]
        with pytest.raises(TusouError, match="has no text read in its images: index it with .*--ocr"):
            plain.search(Query(text="火锅", match="text"))
    finally:
        plain.close()


def test_search_match_flag_and_json(indexes, capsys):
    code, out, _ = run(capsys, "search", indexes["ocr"], "老王火锅", "--json", "-k", "3", "--device", "cpu")
    first, *rest = json_lines(out)
    assert code == 0 and first["path"].endswith("sign.png")
    assert set(first["ocr"]) == {"text", "box", "confidence"} and "老王火锅" in first["ocr"]["text"] and len(first["ocr"]["box"]) == 4
    code, out, _ = run(capsys, "search", indexes["ocr"], "牛肉", "--match", "text", "--device", "cpu")
    assert code == 0 and out.splitlines()[0].endswith("menu.png") and "text: 牛肉拉面十八元" in out
    code, _, err = run(capsys, "search", indexes["plain"], "牛肉", "--match", "text", "--device", "cpu")
    assert code == 2 and "--ocr" in err and err.count("\n") == 1


def test_the_app_shows_the_line_that_found_a_result_and_reads_uploads(searcher, collection):
    from ui.app import BOX_COLOUR, SearchApp
    from ui.backend import Backend

    app = SearchApp(Backend(searcher))
    gallery, results, status = app.search_text("老王火鍋", 4)
    assert len(gallery) == 4 and results[0]["file"].endswith("sign.png") and "老王火锅" in results[0]["ocr"]["text"]
    thumbnail, shown = gallery[0]
    assert "\n文字：" in shown and "老王火锅" in shown.split("\n文字：")[1]
    assert BOX_COLOUR in {colour for _, colour in thumbnail.getcolors(1 << 16)}  # the line's box, drawn
    assert all("ocr" not in r for r in app.search_text("老王火锅", 4, match="visual")[1])
    picture, lines, status = app.ocr(str(collection / "posters" / "menu.png"))
    assert [line["text"] for line in lines] == ["牛肉拉面十八元"] and set(lines[0]) == {"text", "confidence", "box"}
    assert status == "1 行文字" and BOX_COLOUR in {colour for _, colour in picture.getcolors(1 << 16)}
    assert app.ocr(None)[2].startswith("请上传") and app.ocr(b"not an image")[2].startswith("无法使用这张图片")
    app.build()  # the tabs, 文字识别 among them, and their API endpoints


def test_the_calibrated_lift_puts_a_sure_text_match_first_where_rank_fusion_only_ties_it():
    from retrieval.search.fusion import Candidate, fuse
    from retrieval.search.text_match import TextMatch

    sure = TextMatch(2, "老王火锅", [[0, 0], [1, 0], [1, 1], [0, 1]], 0.99, exact=True, score=0.99)
    looks = Candidate(0, 0.35, 1, None, None)  # the visual first, no text
    shows = Candidate(1, 0.10, None, sure, 1)  # only its text found it
    both = Candidate(2, 0.20, 2, sure, 1)
    assert [c.position for c, _ in fuse([looks, shows], "calibrated")] == [1, 0]
    ranked = fuse([looks, shows], "rrf")
    assert ranked[0][1] == ranked[1][1] and ranked[0][0] is looks  # 1/61 each: the tie goes to the looks
    assert [c.position for c, _ in fuse([looks, shows, both], "rrf")] == [2, 0, 1]
    fuzzy = Candidate(3, 0.10, None, TextMatch(3, "老王火锅", sure.box, 0.99, exact=False, score=0.99), 2)
    assert [c.position for c, _ in fuse([fuzzy, shows], "calibrated")] == [1, 3]
