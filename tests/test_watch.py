"""Live updates of a real `tusou serve` on loopback, driven over its JSON API with httpx.

A commit by another writer (what `tusou index` runs, here in the test's process) is answered from within
2 s, while a client searches throughout: no request fails, and each answer is the old state or the
new one, never a mix; a format-1 index converted under the server is followed too. With --watch the
server builds its index from a folder, indexes what is copied in, drops what is deleted, holds a
file back while it is being written, and reports it all under `indexing` in /api/v1/info. A user's
mistake with --watch is one line and exit 2 before any model loads.

Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from indexer import BuildPlan, build_index
from tests.imagegen import write_images
from tests.legacy_index import downgrade
from tests.test_cli import run
from tests.test_ui_api import index_header
from tests.uiserver import UIServer
from ui.watch import DEBOUNCE

EVERYTHING = {"q": "红色的圆形", "k": "1000"}
"""A text query whose results are every item of these small indexes (k above their size)."""


def found_paths(client: httpx.Client) -> set[str]:
    response = client.get("/api/v1/search", params=EVERYTHING)
    assert response.status_code == 200, response.text[:300]
    return {row["path"] for row in response.json()["results"]}


def holding(paths: set[str], wanted: set[str]) -> set[str] | None:
    return paths if wanted <= paths else None


def wait_for(condition, seconds: float, what: str):
    """Poll `condition()` until it returns something true; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def client_of(server: UIServer) -> httpx.Client:
    return httpx.Client(base_url=server.url.rstrip("/"), timeout=30)


class Hammer:
    """A client searching (and reading /info) as fast as it can on a thread, keeping what it saw."""

    def __init__(self, server: UIServer):
        self.client = client_of(server)
        self.seen: list[tuple[float, frozenset[str]]] = []
        self.counts: list[tuple[int, int]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.client.get("/api/v1/search", params=EVERYTHING)
                if response.status_code != 200:
                    self.failures.append(f"search {response.status_code}: {response.text[:200]}")
                    continue
                self.seen.append((time.monotonic(), frozenset(row["path"] for row in response.json()["results"])))
                info = self.client.get("/api/v1/info")
                if info.status_code != 200:
                    self.failures.append(f"info {info.status_code}: {info.text[:200]}")
                    continue
                index = info.json()["index"]
                self.counts.append((index["count"], sum(segment["live"] for segment in index["segments"])))
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()


def index_in_process(folder: Path, index: Path, model) -> float:
    """What `tusou index FOLDER --out INDEX` runs, here, with the model loaded once (decoding in this
    process: no fork beside the hammer's thread); returns when it returned, the latest its commit can be."""
    build_index(BuildPlan([folder], index, model=model, workers=0, progress=False))
    return time.monotonic()


def test_a_commit_by_tusou_index_is_served_within_2_s_without_a_failed_or_mixed_answer(tmp_path, tiny_model):
    """On a format-1 index, so the first commit is also the conversion to segments; then a second
    commit on the converted index, then one that deletes. The hammer runs through all three."""
    folder = tmp_path / "photos"
    write_images(folder, 6)
    built = tmp_path / "built"
    build_index(BuildPlan([folder], built, model=tiny_model, workers=0, progress=False))
    index = tmp_path / "index"
    downgrade(built, index)
    server = UIServer(index)
    hammer = None
    try:
        with client_of(server) as client:
            before = found_paths(client)
            assert len(before) == 6
            hammer = Hammer(server)
            states = [frozenset(before)]
            for start in (100, 200):
                added = {str(path) for path in write_images(folder, 3, start=start)}
                committed = index_in_process(folder, index, tiny_model)
                seen = wait_for(lambda: holding(found_paths(client), added), 2, f"{sorted(added)} found after the commit")
                assert time.monotonic() - committed <= 2
                states.append(frozenset(states[-1] | added))
                assert seen == states[-1]
            removed = sorted(states[-1] - states[0])[:3]  # a commit that deletes: no answer may lose them before it
            for path in removed:
                Path(path).unlink()
            committed = index_in_process(folder, index, tiny_model)
            states.append(frozenset(states[-1] - set(removed)))
            wait_for(lambda: found_paths(client) == states[-1], 2, f"{removed} gone after the commit")
            assert time.monotonic() - committed <= 2
            wait_for(lambda: hammer.seen and hammer.seen[-1][1] == states[-1], 2, "the hammer's last answer is of the last commit")
        hammer.stop()
        assert not hammer.failures, hammer.failures[:3]
        assert {states[0], states[-1]} <= {paths for _, paths in hammer.seen} <= set(states)  # every answer one commit's, never a mix
        answers = [paths for _, paths in hammer.seen]
        assert [states.index(paths) for paths in answers] == sorted(states.index(paths) for paths in answers)  # never back
        assert all(count == live and count in {len(state) for state in states} for count, live in hammer.counts)
    finally:
        if hammer is not None:
            hammer.stop()
        server.stop()


# --- --watch ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watching(tmp_path_factory):
    """A server over an index it built itself from a watched folder of 4 images (there was none)."""
    root = tmp_path_factory.mktemp("watch")
    photos = root / "photos"
    write_images(photos, 4)
    server = UIServer(root / "index", "--watch", str(photos), "--model", "test-tiny")
    with client_of(server) as client:
        yield server, client, photos, root
    server.stop()


def indexing(client: httpx.Client) -> dict:
    response = client.get("/api/v1/info")
    assert response.status_code == 200, response.text[:300]
    return response.json()["indexing"]


def test_a_new_index_is_built_from_the_watched_folder_before_serving(watching):
    _, client, photos, _ = watching
    assert found_paths(client) == {str(path) for path in photos.rglob("image_*")}
    state = indexing(client)
    assert set(state) == {"state", "done", "total", "held", "last_commit", "last_error", "folders", "rescan_seconds"}
    assert state["last_commit"]  # the first build, before serving, was the watcher's commit
    assert state["folders"] == [str(photos)] and state["rescan_seconds"] == 60 and state["last_error"] is None
    assert "**文件夹监视** " in index_header(watching[0])  # the UI's header says it too


def test_an_image_copied_in_is_found_and_once_deleted_is_not(watching, tmp_path):
    _, client, photos, _ = watching
    (source,) = write_images(tmp_path / "elsewhere", 1, start=300)
    copied = photos / "copied" / source.name
    copied.parent.mkdir()
    shutil.copy(source, copied)
    wait_for(lambda: str(copied) in found_paths(client), 10, "the copied image found")
    state = wait_for(lambda: (s := indexing(client))["state"] == "idle" and s, 5, "the watcher idle again")
    assert state["last_commit"] and state["done"] == state["total"] == 1 and state["last_error"] is None

    copied.unlink()
    wait_for(lambda: str(copied) not in found_paths(client), 10, "the deleted image gone")
    assert found_paths(client) == {str(path) for path in photos.rglob("image_*")}


def test_a_file_being_written_is_not_indexed_until_complete(watching, tmp_path):
    _, client, photos, _ = watching
    (source,) = write_images(tmp_path / "elsewhere", 1, start=400)
    data = source.read_bytes()
    target = photos / source.name
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        wait_for(lambda: indexing(client)["held"] == 1, 10, "the half-written file held back")
        deadline = time.monotonic() + 2 * DEBOUNCE  # two more debounce periods: still held, still not indexed
        while time.monotonic() < deadline:
            state = indexing(client)
            assert state["state"] in ("pending", "indexing") and str(target) not in found_paths(client), state
        handle.write(data[len(data) // 2 :])
    wait_for(lambda: str(target) in found_paths(client), 10, "the completed file found")
    state = wait_for(lambda: (s := indexing(client))["state"] == "idle" and s, 5, "the watcher idle again")
    assert state["held"] == 0
    (result,) = [row for row in client.get("/api/v1/search", params=EVERYTHING).json()["results"] if row["path"] == str(target)]
    assert client.get(f"/api/v1/items/{result['id']}").json()["size"] == len(data)


def test_a_file_that_is_no_image_is_skipped_and_the_server_goes_on(watching, tmp_path):
    _, client, photos, _ = watching
    broken = photos / "broken.png"
    broken.write_bytes(b"\x89PNG not an image at all")
    (source,) = write_images(tmp_path / "elsewhere", 1, start=500)
    beside = photos / source.name
    shutil.copy(source, beside)
    try:
        wait_for(lambda: str(beside) in found_paths(client), 10, "the image copied in beside the broken one found")
        assert str(broken) not in found_paths(client) and indexing(client)["last_error"] is None
    finally:
        broken.unlink()


# --- a user's mistakes: one line, exit 2, nothing loaded ---------------------------------------


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("watch-mistakes")
    folder = root / "photos"
    write_images(folder, 3)
    build_index(BuildPlan([folder], root / "index", model=tiny_model, workers=0, progress=False))
    return folder, root / "index"


MISTAKES = {
    "missing": (lambda folder, index: [index, "--watch", folder.parent / "nowhere"], "no such folder"),
    "a file": (lambda folder, index: [index, "--watch", next(folder.glob("image_0001.*"))], "is a file, not a folder"),
    "inside the index": (lambda folder, index: [index, "--watch", index / "segments"], "is inside the index"),
    "images from elsewhere": (lambda folder, index: [index, "--watch", folder / "nested"],
                              "holds images from outside the watched folders (in {folder})"),
    "not an index": (lambda folder, index: [folder, "--watch", folder], "is not a tusou index"),
    "rescan alone": (lambda folder, index: [index, "--rescan", "5"], "--rescan is for --watch"),
}


@pytest.mark.parametrize("case", MISTAKES)
def test_watch_mistakes_are_one_line_and_exit_2(small_index, capsys, case):
    argv, message = MISTAKES[case]
    code, out, err = run(capsys, "serve", *argv(*small_index))
    message = message.format(folder=small_index[0])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_watching_every_folder_of_the_index_is_accepted(small_index):
    from ui.watch import check_watch

    folder, index = small_index
    assert check_watch(index, [str(folder / "nested"), str(folder)]) == [folder / "nested", folder]
