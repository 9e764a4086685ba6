from __future__ import annotations

import os
import tempfile
import threading
from datetime import datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from retrieval import EmbeddingModel, load_model  # noqa: E402
from tests.imagegen import write_images  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def temp_files_under_basetemp(tmp_path_factory):
    """Temporary files of the test process go under pytest's basetemp, which pytest prunes.

    gradio_client leaves a directory in the temp dir for every call, and a full run makes hundreds;
    in /tmp they outlived the run and filled the disk over a day of runs.
    """
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfiles"))
    yield
    tempfile.tempdir = None


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for this test, offline: what a test puts there is all there is."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="session")
def tiny_model() -> EmbeddingModel:
    return load_model("test-tiny", device="cpu")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """40 distinct images in six formats, some in a sub-folder (read-only for tests)."""
    folder = tmp_path_factory.mktemp("collection")
    write_images(folder, 40)
    return folder


@pytest.fixture
def fresh_folder(tmp_path) -> Path:
    """A collection a test may change."""
    folder = tmp_path / "photos"
    write_images(folder, 24)
    return folder


def served_taken(number: int) -> str:
    """When image `number` of the `served` collection was taken (its mtime, local time)."""
    return (datetime(2023, 1, 1, 12) + timedelta(days=11 * number % 30 * 12)).isoformat()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real `tusou serve` (no --host) over 30 images indexed with test-tiny, for one test module.

    Yields (server, collection, root): the index is root/index, the server's Gradio temp dir
    root/gradio-tmp, and collection/link_out.png is a symlink to root/secret.png, outside it.
    Image n's mtime (so its `taken`) is `served_taken(n)`: a different day each, unlike name order.
    """
    from indexer import BuildPlan, build_index
    from tests.uiserver import UIServer

    root = tmp_path_factory.mktemp("ui")
    collection = root / "collection"
    for number, path in enumerate(write_images(collection, 30)):
        moment = datetime.fromisoformat(served_taken(number)).timestamp()
        os.utime(path, (moment, moment))
    secret = root / "secret.png"
    write_images(root / "outside", 1)[0].rename(secret)
    os.symlink(secret, collection / "link_out.png")
    build_index(BuildPlan([collection], root / "index", "test-tiny", device="cpu", workers=0, progress=False))
    server = UIServer(root / "index", env={"GRADIO_TEMP_DIR": str(root / "gradio-tmp")})
    yield server, collection, root
    server.stop()


class _CountingHandler(SimpleHTTPRequestHandler):
    """Serves a folder quietly and counts the GET requests (downloads) per path."""

    downloads: dict[str, int] = {}

    def do_GET(self) -> None:
        self.downloads[self.path] = self.downloads.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def counted_shards(tmp_path):
    """Two webdataset shards on a loopback HTTP server that counts downloads; yields (folder, base URL, downloads)."""
    from tests.test_sources import seeds_of, shard_bytes

    www = tmp_path / "www"
    www.mkdir()
    for shard in range(2):
        (www / f"{shard:06d}.tar").write_bytes(shard_bytes(shard, seeds_of(shard)))
    _CountingHandler.downloads = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_CountingHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}", _CountingHandler.downloads
    server.shutdown()
    server.server_close()
