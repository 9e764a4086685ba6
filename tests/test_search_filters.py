"""`tusou search` with filters, a date order and pages, against what the collection says.

The collection has two folders, six file types and a different mtime per image (so `taken`, from
the mtime, orders them unlike their names). Which images a filter admits is worked out here from
the files themselves; the top k within it are then a brute-force scan of those images' stored
vectors (the index is flat: exact), and `Searcher.search` with the same Query gives the same.
Bad filter values are tests/test_startup.py's (one line, before any model loads).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from indexer import BuildPlan, build_index
from retrieval.search.filters import make_filters
from retrieval.search.query import Query
from retrieval.search.searcher import Searcher
from tests.imagegen import format_of, write_images
from tests.stored import stored_vectors
from ui.cli import main

QUERY = "红色的圆形"
COUNT = 40


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(folder, index, path → taken): image n was taken (file mtime) on day (17·n mod 40)·9 of 2023, at noon."""
    folder = tmp_path_factory.mktemp("filter-photos")
    taken = {}
    for number, path in enumerate(write_images(folder, COUNT)):
        moment = datetime(2023, 1, 1, 12) + timedelta(days=9 * (17 * number % COUNT))
        os.utime(path, (moment.timestamp(), moment.timestamp()))
        taken[str(path)] = moment.isoformat()
    index = tmp_path_factory.mktemp("filter-index") / "index"
    build_index(BuildPlan([folder], index, "test-tiny", device="cpu", workers=0, progress=False))
    return folder, index, taken


@pytest.fixture(scope="module")
def searcher(collection, tiny_model) -> Searcher:
    return Searcher(collection[1], model=tiny_model, precision="fp32")


def search(capsys, index: Path, *argv: object) -> list[dict]:
    code = main(["search", str(index), QUERY, "--json", "--precision", "fp32", "--device", "cpu", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


Admits = Callable[[str, str], bool]
"""Whether an image (path, taken) passes a filter, decided from the files."""
CASES: dict[str, tuple[list[str], dict, Admits]] = {
    "none": ([], {}, lambda path, taken: True),
    "folder": (["--in", "{folder}/nested"], {"folders": ["{folder}/nested"]}, lambda path, taken: "/nested/" in path),
    "relative-folder": (["--in", "{name}/nested/"], {"folders": ["{name}/nested/"]}, lambda path, taken: "/nested/" in path),
    "two-folders": (["--in", "{folder}/nested", "--in", "{folder}/image_0001.png"],
                    {"folders": ["{folder}/nested", "{folder}/image_0001.png"]},
                    lambda path, taken: "/nested/" in path or path.endswith("/image_0001.png")),
    "types": (["--type", "jpg,GIF"], {"types": "jpg,GIF"}, lambda path, taken: format_of(path) in ("jpeg", "gif")),
    "dates": (["--after", "2023-04", "--before", "2023-08-15"], {"after": "2023-04", "before": "2023-08-15"},
              lambda path, taken: "2023-04-01" <= taken < "2023-08-15"),
    "all-at-once": (["--in", "{folder}", "--type", "png,webp,bmp", "--after", "2023-03-10"],
                    {"folders": ["{folder}"], "types": "png,webp,bmp", "after": "2023-03-10"},
                    lambda path, taken: format_of(path) in ("png", "webp", "bmp") and taken >= "2023-03-10"),
    "no-camera": (["--camera", "Canon"], {"camera": "Canon"}, lambda path, taken: False),
    "no-place": (["--near", "31.23,121.47,50"], {"near": "31.23,121.47,50"}, lambda path, taken: False),
}


def fill(value, folder: Path):
    """A case's words with the collection's folder (and its name, for a path relative to its parent) in."""
    if isinstance(value, dict):
        return {key: fill(v, folder) for key, v in value.items()}
    if isinstance(value, list):
        return [fill(v, folder) for v in value]
    return value.format(folder=folder, name=folder.name) if isinstance(value, str) else value


def brute_force(index: Path, vector: np.ndarray, admitted: set[str], k: int) -> list[tuple[str, float]]:
    """The top k of the admitted images by cosine to `vector`, by a scan of every stored vector."""
    rows = [(path, float(stored @ vector)) for path, stored in stored_vectors(index).items() if path in admitted]
    return sorted(rows, key=lambda row: -row[1])[:k]


@pytest.mark.parametrize("case", CASES)
def test_a_filter_gives_exactly_the_brute_force_top_k_of_what_it_admits(collection, searcher, tiny_model, capsys, monkeypatch, case):
    folder, index, taken = collection
    monkeypatch.chdir(folder.parent)  # a relative --in is resolved from the current folder
    flags, words, admits = CASES[case]
    found = search(capsys, index, "-k", 6, *fill(flags, folder))
    admitted = {path for path, moment in taken.items() if admits(path, moment)}
    expected = brute_force(index, tiny_model.encode_texts([QUERY])[0], admitted, 6)
    assert [r["path"] for r in found] == [path for path, _ in expected]
    assert [r["score"] for r in found] == pytest.approx([score for _, score in expected], abs=1e-4)
    assert [r["rank"] for r in found] == list(range(1, len(expected) + 1))
    assert all(r["taken"] == taken[r["path"]] and r["taken_from"] == "mtime" and r["width"] and r["height"] for r in found)
    direct = searcher.search(Query(text=QUERY, filters=make_filters(**fill(words, folder))), 6)
    assert [(r.path, r.rank) for r in direct] == [(r["path"], r["rank"]) for r in found]
    assert [r.score for r in direct] == pytest.approx([r["score"] for r in found], abs=1e-5)


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_a_date_order_sorts_the_best_by_date(collection, capsys, order):
    """Within SORT_POOL (200) results by score, which here is every image the filter admits."""
    folder, index, taken = collection
    found = search(capsys, index, "-k", 5, "--sort", order, "--in", folder / "nested")
    nested = sorted((moment, path) for path, moment in taken.items() if "/nested/" in path)
    expected = (nested[::-1] if order == "newest" else nested)[:5]
    assert [(r["taken"], r["path"]) for r in found] == expected
    assert [r["rank"] for r in found] == [1, 2, 3, 4, 5]
    everything = search(capsys, index, "-k", COUNT, "--sort", order)
    assert [r["taken"] for r in everything] == sorted(taken.values(), reverse=order == "newest")


@pytest.mark.parametrize("order", ["score", "newest"])
def test_pages_are_slices_of_one_longer_list(collection, capsys, order):
    _, index, _ = collection
    flags = ["--sort", order, "--after", "2023-02"]
    whole = search(capsys, index, "-k", 12, *flags)
    pages = [search(capsys, index, "-k", 4, "--offset", offset, *flags) for offset in (0, 4, 8)]
    assert len(whole) == 12 and [page for page in pages if len(page) != 4] == []
    assert [(r["rank"], r["path"]) for page in pages for r in page] == [(r["rank"], r["path"]) for r in whole]
    assert search(capsys, index, "-k", 4, "--offset", COUNT, *flags) == []
