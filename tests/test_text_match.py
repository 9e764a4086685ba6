"""Matching text read in images: folding, the trigram index, short queries, one-edit matches, filters.

Real SQLite FTS5 (trigram tokenizer) in a real catalog file; lines stand in for what the OCR read.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
from types import SimpleNamespace

import pytest

from eval.ocr_reading import piece_distance
from retrieval.errors import TusouError
from retrieval.search import normalise as normalise_module
from retrieval.search.filters import make_filters
from retrieval.search.normalise import normalise
from retrieval.search.text_match import match_text
from retrieval.store.catalog import INDEXES, TABLES, Catalog, drop_items, put_items
from retrieval.store.text_lines import has_text_tables, put_lines, read_items
from tests.test_catalog import row

BOX = [[10, 20], [110, 20], [110, 50], [10, 50]]


def line(text: str, confidence: float = 0.95) -> SimpleNamespace:
    return SimpleNamespace(text=text, box=BOX, confidence=confidence)


def catalog_with(tmp_path, texts: dict[int, list], metadata: dict[int, dict] | None = None) -> Catalog:
    """A catalog whose item `i` read the lines `texts[i]` (strings, or (string, confidence))."""
    catalog = Catalog(tmp_path / "catalog.sqlite", create=True)
    with catalog.transaction() as db:
        put_items(db, [row(i, 1, i, **(metadata or {}).get(i, {})) for i in texts])
        for item, lines in texts.items():
            put_lines(db, item, [line(*entry) if isinstance(entry, tuple) else line(entry) for entry in lines])
    return catalog


def found(catalog: Catalog, query: str, filters=None) -> list[tuple[int, bool]]:
    return [(m.item, m.exact) for m in match_text(catalog.db, query, filters)]


def test_normalise_folds_what_people_type_onto_what_images_say():
    assert normalise("火鍋") == normalise("火锅") == "火锅"
    assert normalise("010-8888 6666") == normalise("01088886666") == normalise("０１０－８８８８　６６６６")
    assert normalise("“老王”火锅店！") == "老王火锅店"
    assert normalise("ＣＯＦＦＥＥ Shop") == "coffeeshop"
    assert normalise("¥38.5元") == "385元"
    assert normalise("，。！") == ""
    # one character always folds alike, so a piece of a line folds to a piece of the folded line
    assert normalise("乾") in normalise("乾隆皇帝") and normalise("後") in normalise("前後左右")


def test_exact_queries_of_any_length_find_their_lines(tmp_path):
    catalog = catalog_with(tmp_path, {
        1: ["老王火鍋店"], 2: ["电话 010-8888 6666", "火"], 3: ["老五火锅店"], 4: ["茶馆"], 5: ["營業時間 早九點"],
    })
    assert found(catalog, "火锅") == [(1, True), (3, True)]
    assert found(catalog, "火鍋店") == [(1, True), (3, True)]
    assert found(catalog, "01088886666") == [(2, True)]
    assert found(catalog, "8888 6666") == [(2, True)]
    assert found(catalog, "火")[0] == (2, True) and {i for i, _ in found(catalog, "火")} == {1, 2, 3}  # the line that is just 火 first
    assert found(catalog, "锅") == [(1, True), (3, True)]
    assert found(catalog, "馆") == [(4, True)] and found(catalog, "茶馆") == [(4, True)]  # the end of a line, a whole short line
    assert found(catalog, "营业时间") == [(5, True)]
    assert found(catalog, "面馆") == [] and found(catalog, "，。") == []


def test_one_edit_is_forgiven_from_four_characters_and_two_are_not(tmp_path):
    catalog = catalog_with(tmp_path, {
        1: ["老王火锅店"], 2: ["老五火锅店"], 3: ["老王的火锅店"], 4: ["老火锅店"], 5: ["老五火锅铺"], 6: ["老五火"],
    })
    exact, *near = found(catalog, "老王火锅店")
    assert exact == (1, True) and sorted(near) == [(2, False), (3, False), (4, False)]  # 5 is two edits away
    assert found(catalog, "老王火") == [(1, True)]  # three characters: exact only (6 is one edit away)
    exact, *near = found(catalog, "王火锅店")
    assert exact == (1, True) and sorted(near) == [(2, False), (3, False), (4, False)]


def test_no_one_edit_match_is_missed(tmp_path):
    """The halves argument, checked: every one-edit variant of queries of 4-9 characters, planted in
    random context, is found; and on random lines over four characters (near misses everywhere) the
    items matched are exactly those a brute-force edit distance says are within one edit."""
    rng = random.Random(7)
    alphabet = "甲乙丙丁"
    queries = ["".join(rng.choice(alphabet) for _ in range(n)) for n in range(4, 10)]
    texts, planted = {}, {}
    for query in queries:
        for at, edit in itertools.product(range(len(query)), ("substitute", "insert", "delete")):
            other = rng.choice([c for c in "戊己" + alphabet if c != query[at]])
            variant = {"substitute": query[:at] + other + query[at + 1 :], "insert": query[:at] + other + query[at:],
                       "delete": query[:at] + query[at + 1 :]}[edit]
            item = len(texts) + 1
            texts[item] = ["".join(rng.choice("戊己") for _ in range(rng.randint(0, 3))) + variant + "戊" * rng.randint(0, 2)]
            planted.setdefault(query, set()).add(item)
    for _ in range(300):
        texts[len(texts) + 1] = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 12)))]
    catalog = catalog_with(tmp_path, texts)
    for query in queries:
        matched = {item for item, _ in found(catalog, query)}
        assert planted[query] <= matched
        assert matched == {item for item, (text,) in texts.items() if piece_distance(query, text) <= 1}


def test_an_item_counts_once_by_its_best_line_and_exact_ranks_first(tmp_path):
    catalog = catalog_with(tmp_path, {
        1: [("套餐含火锅底料和饮料", 0.99)],  # the query is a small part of the line
        2: [("火锅", 0.90), ("今日火锅特价", 0.99)],  # the line that is just the query
        3: [("火锅", 0.60)],
        4: [("火锅店", 0.95)],
    })
    assert [m.item for m in match_text(catalog.db, "火锅")] == [2, 4, 3, 1]
    best = match_text(catalog.db, "火锅")[0]
    assert best.text == "火锅" and best.box == BOX and best.confidence == pytest.approx(0.9)
    assert best.to_dict() == {"text": "火锅", "box": BOX, "confidence": 0.9}
    assert [m.item for m in match_text(catalog.db, "火锅", limit=2)] == [2, 4]
    reading = catalog.db.execute("SELECT id FROM ocr_lines")
    reading.fetchone()  # a statement still open on the connection does not stop a match
    assert [m.item for m in match_text(catalog.db, "火锅底料", limit=1)] == [1]


def test_filters_apply_to_text_matches(tmp_path):
    catalog = catalog_with(
        tmp_path, {1: ["火锅店"], 2: ["火锅店"], 3: ["火锅店"]},
        {2: {"format": "png"}, 3: {"taken": "2024-06-01T10:00:00", "taken_from": "exif"}},
    )
    assert {i for i, _ in found(catalog, "火锅")} == {1, 2, 3}
    assert found(catalog, "火锅", make_filters(types="png")) == [(2, True)]
    assert found(catalog, "火锅店", make_filters(after="2024-06")) == [(3, True)]
    assert found(catalog, "火锅", make_filters(types="gif")) == []


def test_lines_go_with_their_item_and_are_replaced_not_doubled(tmp_path):
    catalog = catalog_with(tmp_path, {1: ["火锅店"], 2: ["火锅店", "茶"], 3: []})
    with catalog.transaction() as db:
        put_lines(db, 4, [], reason="broken image: Truncated File Read")
        put_lines(db, 1, [line("烧烤")])  # read again: the new lines replace the old
    assert read_items(catalog.db) == {1: None, 2: None, 3: None, 4: "broken image: Truncated File Read"}
    assert found(catalog, "火锅") == [(2, True)] and found(catalog, "烧烤") == [(1, True)]
    with catalog.transaction() as db:
        put_items(db, [row(2, 2, 0)])  # a changed image keeps its id: its lines stay until it is read again
    assert found(catalog, "茶") == [(2, True)]
    with catalog.transaction() as db:
        drop_items(db, [1, 2])
    assert found(catalog, "火锅") == found(catalog, "烧烤") == found(catalog, "茶") == []
    assert catalog.db.execute("SELECT count(*) FROM ocr_lines").fetchone() == (0,)
    assert set(read_items(catalog.db)) == {3, 4}


def test_a_catalog_from_before_text_search_gets_its_tables_on_its_first_write(tmp_path):
    path = tmp_path / "catalog.sqlite"
    with sqlite3.connect(path) as old:  # what an index written before text search holds
        old.executescript(TABLES + INDEXES)
    catalog = Catalog(path)
    assert not has_text_tables(catalog.db) and match_text(catalog.db, "火锅") == [] and read_items(catalog.db) == {}
    with catalog.transaction() as db:
        put_items(db, [row(1, 1, 0), row(2, 1, 1)])
        drop_items(db, [2])
        put_lines(db, 1, [line("火锅店")])
    assert has_text_tables(catalog.db) and found(catalog, "火锅") == [(1, True)]


def test_matching_without_opencc_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "opencc", None)  # as if it were not installed
    normalise_module._simplified.cache_clear()
    try:
        with pytest.raises(TusouError, match=r"pip install 'opencc>=1.1'"):
            normalise("火鍋")
    finally:
        normalise_module._simplified.cache_clear()
