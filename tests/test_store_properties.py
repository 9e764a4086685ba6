"""Properties of the segment store on a real folder of images that changes under it: a reader
whose view a merge overtakes still answers from one consistent state."""

from __future__ import annotations

from pathlib import Path

from indexer import BuildPlan, build_index
from indexer.reindex import reindex
from retrieval.search.filters import Filters
from retrieval.search.query import Query
from retrieval.search.searcher import Searcher
from retrieval.store import segment as segment_module
from retrieval.store.store import View, open_store
from tests.imagegen import write_images
from tests.stored import read_back

READER_QUERIES = ("红色的圆", "绿色的方块")
ALL = 1000
"""k above any collection's size here: every live item comes back."""


def _build(folder: Path, out: Path, model) -> None:
    build_index(BuildPlan([folder], out, model=model, workers=0, progress=False))


def _two_segments(folder: Path, out: Path, model) -> None:
    write_images(folder, 12)
    _build(folder, out, model)
    write_images(folder, 3, start=100)
    _build(folder, out, model)
    assert len(read_back(out).segments) == 2


def test_a_view_whose_files_a_merge_deletes_before_it_opens_them_reads_the_catalog_again(tmp_path, tiny_model, monkeypatch):
    """The interleaving the reader above meets by chance, made certain: the segment rows are read,
    then a reindex commits and deletes their files, then the view opens them (its FAISS file last)."""
    folder, out = tmp_path / "photos", tmp_path / "index"
    _two_segments(folder, out, tiny_model)
    store = open_store(out)
    read_faiss, merged = segment_module.read_faiss, []

    def overtaken(*args, **kwargs):
        if not merged:
            merged.append(reindex(out, progress=False))
        return read_faiss(*args, **kwargs)

    monkeypatch.setattr(segment_module, "read_faiss", overtaken)
    view = store.view()
    assert merged and [s.live for s in view.segments] == [15] and view.generation == store.generation
    store.close()


def test_a_filtered_search_whose_view_a_merge_overtakes_answers_from_the_newer_view(tmp_path, tiny_model, monkeypatch):
    """A view taken, then a reindex commits before the filter reads the catalog: the catalog places every
    item in the merged segment, which that view does not hold; the search is run again on the new view."""
    folder, out = tmp_path / "photos", tmp_path / "index"
    _two_segments(folder, out, tiny_model)
    searcher = Searcher(out, model=tiny_model)
    query = Query(text=READER_QUERIES[0], filters=Filters(folders=(str(folder / "nested"),)))
    expected = [(r.id, r.path) for r in searcher.search(query, ALL)]
    view, merged = searcher.store.view, []

    def overtaken() -> View:
        taken = view()
        if not merged:
            merged.append(reindex(out, progress=False))
        return taken

    monkeypatch.setattr(searcher.store, "view", overtaken)
    assert [(r.id, r.path) for r in searcher.search(query, ALL)] == expected and len(expected) == 4
    assert merged and len(view().segments) == 1
    searcher.store.close()
