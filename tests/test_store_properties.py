"""Properties of the segment store on a real folder of images that changes under it.

1. An index grown in place round after round (adds, in-place changes, deletes, moves, merges
   forced by a small merge policy, reindexes) answers after every round like a clean build of the
   folder as it now is: the same items, the same vectors, the same search results.
2. A reader searching in a loop while `tusou index` and `tusou reindex` subprocesses add, delete and
   merge never errors and never sees a half-written state, and then answers as a fresh reader does.
3. The two interleavings of a reader and a merge that the loop meets only by chance, made certain.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from indexer import BuildPlan, build_index, merge_policy
from indexer.reindex import reindex
from retrieval.search.filters import Filters
from retrieval.search.query import Query
from retrieval.search.searcher import SearchResult, Searcher
from retrieval.store import segment as segment_module
from retrieval.store.store import View, open_store
from tests.imagegen import FORMATS, draw, write_images
from tests.stored import Stored, read_back

ROUNDS = 30
ATOL = 1e-5
TEXTS = ("红色的圆", "蓝色的方块", "一张风景照片")
QUERY_IMAGE = 9001
"""Seed of a reference image that is in no collection."""


@dataclass
class Collection:
    """A folder of images that changes as a seeded random round says."""

    folder: Path
    seed: int = 1000
    """The next image seed: every new picture is one no file has shown before."""
    gone: set[str] = field(default_factory=set)
    """Paths deleted or moved away and not written again."""

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def _picture(self, path: Path) -> None:
        self.seed += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(self.seed).save(path)
        self.gone.discard(str(path))

    def change(self, rng: random.Random) -> None:
        """One round: some images added (one perhaps where a deleted one was), some rewritten in
        place with other pixels and a later mtime, some deleted, perhaps one moved to another folder."""
        count = len(self.files())
        adds = rng.randint(0, 4) + (4 if count < 25 else 0)
        for _ in range(adds):
            self._picture(self.folder / rng.choice(("", "nested", "album")) / f"image_{self.seed:04d}.{rng.choice(FORMATS)}")
        if self.gone and rng.random() < 0.25:
            self._picture(Path(rng.choice(sorted(self.gone))))
        for path in rng.sample(self.files(), rng.randint(0, 3)):
            stat = path.stat()
            self._picture(path)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9 * rng.randint(1, 100)))
        for path in rng.sample(self.files(), rng.randint(0, 3) + (4 if count > 55 else 0)):
            path.unlink()
            self.gone.add(str(path))
        if rng.random() < 0.3:
            moved = rng.choice(self.files())
            target = self.folder / ("album" if moved.parent.name != "album" else "nested") / moved.name
            target.parent.mkdir(exist_ok=True)
            moved.rename(target)
            self.gone.add(str(moved))
            self.gone.discard(str(target))


def _build(folder: Path, out: Path, model) -> None:
    build_index(BuildPlan([folder], out, model=model, workers=0, progress=False))


def _described(stored: Stored) -> dict[str, dict]:
    """Path → everything the catalog says of the item but its id."""
    return {item.path: {k: v for k, v in asdict(item).items() if k != "id"} for item in stored.items}


def _queries(collection: Collection) -> list[tuple[str, object]]:
    """Text queries, a reference image in no collection, and one image of the collection (it finds itself)."""
    return [("text", t) for t in TEXTS] + [("image", draw(QUERY_IMAGE)), ("image", collection.files()[0])]


def _search(searcher: Searcher, kind: str, query, k: int) -> list[SearchResult]:
    return searcher.search_text(query, k) if kind == "text" else searcher.search_image(query, k)


def assert_same_results(ours: list[SearchResult], theirs: list[SearchResult], scores: dict[str, float]) -> None:
    """`ours` (the grown index) ranks as `theirs` (the clean build) up to ties.

    Flat segments score exactly, so the score at each rank must agree; what may differ is the order of
    items whose scores tie (within ATOL, float rounding of one code path against another): a clean
    build breaks a tie by row, i.e. path order, a grown index by segment and row. So rather than
    compare (path, rounded score) lists sorted by path within ties, which a score on a rounding
    boundary would split, each rank's score is compared and each path we return must score, in the
    clean build's full ranking (`scores`), what it scores here: the lists are then equal but for
    the order within ties.
    """
    assert len(ours) == len(theirs)
    assert len({r.id for r in ours}) == len(ours) and len({r.path for r in ours}) == len(ours), "a result twice"
    np.testing.assert_allclose([r.score for r in ours], [r.score for r in theirs], atol=ATOL)
    for result in ours:
        assert result.path in scores, f"{result.path} is not in the collection"
        assert abs(scores[result.path] - result.score) <= ATOL, (result.path, result.score, scores[result.path])


@dataclass
class Ids:
    """The ids the grown index gave, checked round after round: unique, a path's id kept while its file
    stays (changed in place or not), a new path's id above every id ever given."""

    by_path: dict[str, int] = field(default_factory=dict)
    top: int = -1
    dead: set[int] = field(default_factory=set)
    """Ids of items that left the index (deleted, moved away): never seen again."""

    def check(self, stored: Stored) -> None:
        now = {item.path: item.id for item in stored.items}
        assert len(set(now.values())) == len(now), "an id given twice"
        for path, item_id in now.items():
            if path in self.by_path:
                assert item_id == self.by_path[path], f"{path} changed its id"
            else:
                assert item_id > self.top, f"{path} is new but got id {item_id}, not above {self.top}"
        self.dead |= set(self.by_path.values()) - set(now.values())
        assert not self.dead & set(now.values()), "a deleted item's id is back"
        self.by_path, self.top = now, max([self.top, *now.values()])


def _round_policy(rng: random.Random, monkeypatch) -> bool:
    """This round's merge policy: most rounds the product's (segments accumulate); some a small one
    (two segments a tier, 10% deleted), so tier merges happen within the rounds. True: a small one."""
    forced = rng.random() < 0.25
    monkeypatch.setattr(merge_policy, "SEGMENTS_PER_TIER", 2 if forced else 10)
    monkeypatch.setattr(merge_policy, "MAX_DELETED_SHARE", 0.1 if forced else 0.2)
    return forced


def test_an_index_grown_in_place_answers_like_a_clean_build_after_every_round(tmp_path, tiny_model, monkeypatch):
    """30 seeded rounds; after each, the index grown in place against a clean build of the folder: the
    same items (all but their ids), vectors and search results (text and image queries, every item
    and the top 5). Ids differ by design (a clean build numbers from 0; a grown index keeps a path's
    id while the path stays and never reuses one), so they are checked by that rule (Ids)."""
    collection = Collection(tmp_path / "photos")
    write_images(collection.folder, 30)
    out = tmp_path / "index"
    _build(collection.folder, out, tiny_model)
    searcher = Searcher(out, model=tiny_model)  # one reader for all rounds: its views follow the commits
    ids, segment_counts, forced, reindexed = Ids(), [], 0, 0
    for number in range(ROUNDS):
        rng = random.Random(number)
        collection.change(rng)
        forced += _round_policy(rng, monkeypatch)
        _build(collection.folder, out, tiny_model)
        if rng.random() < 0.1:
            reindex(out, progress=False)
            reindexed += 1
        clean_dir = tmp_path / f"clean-{number}"
        _build(collection.folder, clean_dir, tiny_model)

        grown, clean = read_back(out), read_back(clean_dir)
        assert _described(grown) == _described(clean), f"round {number}: the items differ"
        ids.check(grown)
        np.testing.assert_allclose(grown.embeddings.astype(np.float32), clean.embeddings.astype(np.float32), atol=2e-3)
        segment_counts.append(len(grown.segments))

        reference = Searcher(clean_dir, model=tiny_model)
        reference.cache = searcher.cache  # the same model: the same text vectors, the text tower run once a query
        for kind, query in _queries(collection):
            full = _search(reference, kind, query, len(clean.items))
            scores = {r.path: r.score for r in full}
            for k in (len(clean.items), 5):
                ours = _search(searcher, kind, query, k)
                assert_same_results(ours, full[:k], scores)
                assert not {r.path for r in ours} & collection.gone, "a deleted image came back"
                assert not {r.id for r in ours} & ids.dead, "a deleted item's id came back"
        reference.store.close()
    assert forced and reindexed, "the seeds asked for no forced merge or no reindex"
    assert max(segment_counts) > 1, f"never more than one segment: {segment_counts}"
    assert any(b < a for a, b in zip(segment_counts, segment_counts[1:])), f"no merge: {segment_counts}"


TUSOU = str(Path(sys.executable).with_name("tusou"))
ROOT = Path(__file__).resolve().parents[1]
READER_QUERIES = ("红色的圆", "绿色的方块")
ALL = 1000
"""k above any collection's size here: every live item comes back."""


@dataclass(frozen=True)
class Answer:
    """One search as the reader saw it: the generations of its searcher's view just before and just
    after (equal: the search ran on that view), that view's live count, and the results."""

    before: int
    after: int
    live: int
    filtered: bool
    results: tuple[tuple[int, str, float], ...]


def _ask(searcher: Searcher, nested: Path) -> list[Answer]:
    """Each reader query, unfiltered and within the nested folder, all results wanted."""
    answers = []
    for text in READER_QUERIES:
        for filters in (Filters(), Filters(folders=(str(nested),))):
            view = searcher.store.view()
            found = searcher.search(Query(text=text, filters=filters), ALL)
            after = searcher.store.view().generation
            answers.append(Answer(view.generation, after, len(view), filters.active, tuple((r.id, r.path, r.score) for r in found)))
    return answers


def _read_until(done: threading.Event, kept: Searcher, nested: Path, answers: list[Answer], errors: list[BaseException]) -> None:
    """Search in a loop until `done`: through `kept`, open all along (its views follow the commits),
    and through a Searcher opened anew each time (it opens every segment file at whatever moment)."""
    try:
        while not done.is_set():
            fresh = Searcher(kept.store.directory, model=kept.model)
            fresh.cache = kept.cache
            try:
                answers += _ask(kept, nested) + _ask(fresh, nested)
            finally:
                fresh.store.close()
    except BaseException as exc:  # noqa: BLE001  (handed to the test's thread, which raises it)
        errors.append(exc)


def _run(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([TUSOU, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


def _check_answer(answer: Answer, ever: dict[int, str], stable: set[str], nested: Path, deleted_after: list[tuple[int, set[str]]]) -> None:
    """One answer is of one consistent state: no item twice, only (id, path) pairs the index had, best
    first, every image no build touched found (in the folder asked for), none deleted by a commit
    older than its view, and as many results as its view holds items when no commit came between."""
    ids = [item_id for item_id, _, _ in answer.results]
    paths = {path for _, path, _ in answer.results}
    assert len(set(ids)) == len(ids), "an item twice"
    assert all(ever.get(item_id) == path for item_id, path, _ in answer.results), "an (id, path) the index never had"
    scores = [score for _, _, score in answer.results]
    assert scores == sorted(scores, reverse=True)
    wanted = {p for p in stable if not answer.filtered or p.startswith(f"{nested}{os.sep}")}
    assert wanted <= paths, f"images in every state missing from an answer: {sorted(wanted - paths)}"
    for generation, gone in deleted_after:
        if answer.before >= generation:
            assert not paths & gone, "an image deleted before the view was taken came back"
    if answer.before == answer.after and not answer.filtered:
        assert len(answer.results) == answer.live


def test_a_reader_searching_all_through_builds_and_merges_never_fails_and_sees_one_state_at_a_time(tmp_path, tiny_model):
    folder, out = tmp_path / "photos", tmp_path / "index"
    first = write_images(folder, 24)
    nested = folder / "nested"
    _build(folder, out, tiny_model)
    touched: set[str] = set()
    ever: dict[int, str] = {}
    deleted_after: list[tuple[int, set[str]]] = []  # (the generation of a build's first commit, the images it deleted)

    def record() -> Stored:
        stored = read_back(out)
        ever.update({item.id: item.path for item in stored.items})
        return stored

    def build(add: list[Path], change: list[Path], delete: list[Path]) -> Stored:
        """Change the folder and run `tusou index` on it; the index as it is then."""
        generation = read_back(out).generation
        for number, path in enumerate(change):
            draw(5000 + number).save(path)
        for path in delete:
            path.unlink()
        touched.update(str(p) for p in change + delete)
        deleted_after.append((generation + 1, {str(p) for p in delete}))
        _run("index", str(folder), "--out", str(out), "--model", "test-tiny", "--workers", "0")
        return record()

    record()
    answers: list[Answer] = []
    errors: list[BaseException] = []
    done = threading.Event()
    kept = Searcher(out, model=tiny_model)
    reader = threading.Thread(target=_read_until, args=(done, kept, nested, answers, errors))
    reader.start()
    try:
        grown = build(write_images(folder, 6, start=100), [], first[:3])  # a new segment and a deletion record
        assert len(grown.segments) == 2
        merged = build(write_images(folder, 3, start=200), first[3:5], first[5:9])  # segment 1 a third deleted: rewritten
        assert 1 not in {row.id for row in merged.segments} and not any(row.deleted for row in merged.segments), "no merge ran"
        _run("reindex", str(out))  # every segment into one
        assert len(record().segments) == 1
    finally:
        done.set()
        reader.join()
    if errors:
        raise errors[0]

    stable = {str(p) for p in first} - touched
    assert len({a.before for a in answers}) > 1, "the reader saw one state only"
    for answer in answers:
        _check_answer(answer, ever, stable, nested, deleted_after)
    ours, theirs = _ask(kept, nested), _ask(Searcher(out, model=tiny_model), nested)
    assert [[r[:2] for r in a.results] for a in ours] == [[r[:2] for r in a.results] for a in theirs]
    np.testing.assert_allclose([r[2] for a in ours for r in a.results], [r[2] for a in theirs for r in a.results], atol=ATOL)


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
    read_faiss, merged = segment_module.read_faiss, []

    def overtaken(*args, **kwargs):
        if not merged:
            merged.append(out)
            reindex(out, progress=False)
        return read_faiss(*args, **kwargs)

    monkeypatch.setattr(segment_module, "read_faiss", overtaken)
    store = open_store(out)
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
            merged.append(out)
            reindex(out, progress=False)
        return taken

    monkeypatch.setattr(searcher.store, "view", overtaken)
    assert [(r.id, r.path) for r in searcher.search(query, ALL)] == expected and len(expected) == 4
    assert merged and len(view().segments) == 1
    searcher.store.close()
