"""`tusou index --engine ray` on a real Ray cluster: a head and two worker nodes started on
loopback by the test (CPU only), driven through the CLI as a user would.

The Ray build must equal the local build of the same sources, and survive a worker node
killed mid-build and a driver killed mid-build: the re-run completes with nothing lost or
duplicated and embeds only what was not staged yet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import BuildPlan, build_index
from indexer.staging import Staging
from retrieval import Searcher
from retrieval.search.normalise import normalise
from retrieval.store.model_ref import ModelRef
from tests.stored import read_back
from tests.imagegen import draw, write_images
from tests.test_sources import jpeg, seeds_of, shard_bytes
from tests.test_staging import assert_staged_metadata, metadata_collection

TUSOU = str(Path(sys.executable).with_name("tusou"))
TIMEOUT = 150
LOOPBACK = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to 0, Ray runs every node and driver on 127.0.0.1 (by default it swaps 127.0.0.1 for the
host's network address, so that other machines could join)."""


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no work (as on a real cluster) and two worker nodes of one CPU each, so each
    embedding actor of `--workers 2` lives on a node of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOOPBACK, "0")  # before Ray reads it at import; inherited by the nodes and every driver the tests start
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        assert {node.node_ip_address for node in cluster.list_all_nodes()} == {"127.0.0.1"}
        yield cluster, nodes
        cluster.shutdown()


def ray_command(cluster, paths: list[str], out: Path, *options: str) -> list[str]:
    return [TUSOU, "index", *paths, "--out", str(out), "--model", "test-tiny", "--device", "cpu", "--engine", "ray",
            "--ray-address", cluster.address, "--workers", "2", "--json", *options]


def run(cluster, paths, out, *options, env=None) -> tuple[int, dict | None, str]:
    """(exit code, summary, stderr) of a Ray build through the CLI."""
    result = subprocess.run(ray_command(cluster, paths, out, *options), capture_output=True, text=True, env=env, timeout=TIMEOUT)
    return result.returncode, json.loads(result.stdout) if result.returncode == 0 else None, result.stderr


def local_reference(paths: list[str], out: Path) -> None:
    build_index(BuildPlan(paths, out, "test-tiny", device="cpu", workers=0, progress=False))


def assert_same_ranking(ours: list, theirs: list, atol: float) -> None:
    """The same scores rank by rank (within `atol`), and the same item at every rank but the last
    where no other result scores within 2·atol of it: vectors equal up to float16 rounding may
    swap near-ties, nothing else."""
    np.testing.assert_allclose([hit.score for hit in ours], [hit.score for hit in theirs], atol=atol)
    for rank, (hit, other) in enumerate(zip(ours[:-1], theirs[:-1])):
        if all(abs(hit.score - rival.score) > 2 * atol for r, rival in enumerate(ours) if r != rank):
            assert hit.path == other.path, (rank, hit, other)


def assert_same_index(built: Path, reference: Path) -> None:
    """Same items (ids, stamps, hashes, sizes), vectors within float16 rounding, same search results."""
    ours, theirs = read_back(built), read_back(reference)
    assert [vars(item) for item in ours.items] == [vars(item) for item in theirs.items]
    assert len({item.path for item in ours.items}) == len(ours.items), "an item indexed twice"
    np.testing.assert_allclose(np.asarray(ours.embeddings, np.float32), np.asarray(theirs.embeddings, np.float32), atol=2e-3)
    assert ours.index_types == theirs.index_types
    searchers = Searcher(built, device="cpu"), Searcher(reference, device="cpu")
    for seed in (0, 7, 301):
        assert_same_ranking(*(searcher.search_image(draw(seed), k=6) for searcher in searchers), atol=2e-3)
    for text in ("红色的圆", "两只猫在草地上"):
        hits = [searcher.search_text(text, k=10) for searcher in searchers]
        assert {hit.path for hit in hits[0][:5]} <= {hit.path for hit in hits[1]}
        np.testing.assert_allclose([hit.score for hit in hits[0]], [hit.score for hit in hits[1]], atol=2e-3)


def test_ray_build_equals_the_local_build(tmp_path, cluster, counted_shards):
    """A folder with a broken file, a local shard with a broken member, and two shards over HTTP
    (listed by the workers as they read them, each downloaded once a build)."""
    cluster, _ = cluster
    _, base, downloads = counted_shards
    write_images(tmp_path / "photos", 36)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "000003.tar").write_bytes(shard_bytes(3, seeds_of(3), broken={2: b"garbage"}))
    paths = [str(tmp_path / "photos"), str(tmp_path / "shards" / "000003.tar"), f"{base}/{{000000..000001}}.tar"]
    local_reference(paths, tmp_path / "local")

    code, summary, stderr = run(cluster, paths, tmp_path / "ray", "--batch-size", "8")
    assert code == 0, stderr
    assert (summary["added"], summary["embedded"], summary["total"]) == (50, 50, 50)
    assert downloads == {"/000000.tar": 2, "/000001.tar": 2}, "once by the local build, once by the Ray build"
    assert sorted(item["path"] for item in summary["skipped"]) == [
        str(tmp_path / "photos" / "broken.jpg"), f"{tmp_path / 'shards' / '000003.tar'}#000030002.jpg"
    ]
    assert_same_index(tmp_path / "ray", tmp_path / "local")
    assert not (tmp_path / "ray" / "staging").exists()


class GatedHandler(SimpleHTTPRequestHandler):
    """Serves the first `free` image downloads at once and holds every later one until `gate` opens,
    so the test decides when the build is mid-way (HEAD requests of the scan are never held)."""

    free = 0
    served = 0
    gate = threading.Event()
    lock = threading.Lock()

    def do_GET(self) -> None:
        with self.lock:
            type(self).served += 1
            held = type(self).served > self.free
        if held:
            self.gate.wait(TIMEOUT)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a download cut by the killed node is expected here


@pytest.fixture
def gated_urls(tmp_path):
    """A list file of 48 image URLs on a loopback server whose downloads past the 16th wait for the gate."""
    www = tmp_path / "www"
    www.mkdir()
    GatedHandler.free, GatedHandler.served, GatedHandler.gate = 16, 0, threading.Event()
    server = QuietServer(("127.0.0.1", 0), partial(GatedHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for seed in range(48):
        (www / f"{seed:03d}.jpg").write_bytes(jpeg(seed))
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(f"{base}/{seed:03d}.jpg\n" for seed in range(48)))
    yield f"list:{listing}", GatedHandler.gate
    GatedHandler.gate.set()
    server.shutdown()
    server.server_close()


def staged(out: Path) -> int:
    return len(list((out / "staging").glob("chunk-*.npz")))


def test_a_worker_node_killed_mid_build_loses_nothing(tmp_path, cluster, gated_urls):
    cluster, nodes = cluster
    source, gate = gated_urls
    out = tmp_path / "ray"
    command = ray_command(cluster, [source], out, "--batch-size", "4", "--checkpoint-every", "4")
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while staged(out) < 2 and build.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert staged(out) >= 2 and build.poll() is None, "the build should be staging, held at the gate"
        cluster.remove_node(nodes[0], allow_graceful=False)  # SIGKILL: the raylet and every worker on it
        nodes[0] = cluster.add_node(num_cpus=1)  # as an autoscaler would replace it
        gate.set()
        stdout, stderr = build.communicate(timeout=TIMEOUT)
    finally:
        build.kill()
    if build.returncode == 0:
        assert json.loads(stdout)["embedded"] == 48
    else:  # the run may also give up: then it says so, and the re-run finishes it
        assert build.returncode == 2 and stderr.strip().splitlines()[-1].startswith("tusou: error: the Ray build stopped"), stderr

    local_reference([source], tmp_path / "local")
    code, summary, stderr = run(cluster, [source], out)
    assert code == 0, stderr
    assert summary["total"] == 48 and summary["embedded"] + summary["resumed"] + summary["unchanged"] == 48
    assert_same_index(out, tmp_path / "local")


def test_a_killed_driver_costs_only_its_unstaged_images(tmp_path, cluster):
    cluster, _ = cluster
    write_images(tmp_path / "photos", 40)
    paths = [str(tmp_path / "photos")]
    out = tmp_path / "ray"
    env = dict(os.environ, TUSOU_KILL_AT="staged:2")
    code, _, _ = run(cluster, paths, out, "--batch-size", "4", "--checkpoint-every", "8", env=env)
    assert code == -signal.SIGKILL and staged(out) == 2

    code, summary, stderr = run(cluster, paths, out)
    assert code == 0, stderr
    assert (summary["resumed"], summary["embedded"], summary["added"]) == (16, 24, 40), "the re-run embeds only the rest"
    local_reference(paths, tmp_path / "local")
    assert_same_index(out, tmp_path / "local")


def test_a_ray_build_stages_what_each_image_says_about_itself(tmp_path, cluster, tiny_model):
    """Metadata read by the decode tasks reaches the driver's staging through Ray Data's columns."""
    cluster, _ = cluster
    paths = metadata_collection(tmp_path / "photos")
    code, _, stderr = run(cluster, paths, tmp_path / "ray", env=dict(os.environ, TUSOU_KILL_AT="commit:1"))
    assert code == -signal.SIGKILL, stderr
    assert_staged_metadata(Staging(tmp_path / "ray" / "staging", ModelRef.of(tiny_model)), tmp_path / "photos")


HIDE_RAY = "import sys; sys.modules['ray'] = None; from ui.cli import main; sys.exit(main())"
"""Runs the CLI as on an install without the `ray` extra: `import ray` fails."""


def test_without_the_ray_extra_the_local_build_works_and_ray_says_how_to_install(tmp_path):
    write_images(tmp_path / "photos", 4)
    args = [str(tmp_path / "photos"), "--model", "test-tiny", "--device", "cpu"]
    local = subprocess.run([sys.executable, "-c", HIDE_RAY, "index", *args, "--out", str(tmp_path / "a")],
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert local.returncode == 0, local.stderr
    result = subprocess.run([sys.executable, "-c", HIDE_RAY, "index", *args, "--out", str(tmp_path / "b"), "--engine", "ray"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip() == "tusou: error: --engine ray needs Ray Data, which is not installed here: pip install 'tusou[ray]'"
    assert not (tmp_path / "b").exists()


def test_a_cluster_that_is_not_there_is_one_line(tmp_path):
    write_images(tmp_path / "photos", 2)
    result = subprocess.run([TUSOU, "index", str(tmp_path / "photos"), "--out", str(tmp_path / "idx"), "--model", "test-tiny",
                             "--engine", "ray", "--ray-address", "127.0.0.1:9"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no Ray cluster answers at 127.0.0.1:9" in result.stderr and "ray start --head" in result.stderr
    assert not (tmp_path / "idx").exists()


def test_ray_build_reads_text_in_its_decode_tasks(tmp_path, cluster):
    """An index built locally without OCR, then `--ocr` on Ray with one image more: the new image is
    embedded and read, the others are read alone, as the local engine does (tests/test_index_ocr.py)."""
    from tests.test_index_ocr import MENU, poster, texts
    from tests.test_ocr import NAME, sign

    cluster, _ = cluster
    photos = tmp_path / "photos"
    photos.mkdir()
    sign(1)[0].save(photos / "sign.png")
    Image.linear_gradient("L").convert("RGB").resize((300, 200)).save(photos / "plain.png")
    local_reference([str(photos)], tmp_path / "index")
    poster(MENU).save(photos / "menu.png")
    code, summary, stderr = run(cluster, [str(photos)], tmp_path / "index", "--ocr")
    assert code == 0, stderr
    assert (summary["added"], summary["embedded"], summary["unchanged"], summary["read"]) == (1, 1, 2, 3)
    read = texts(tmp_path / "index")
    assert normalise(NAME) in read["sign.png"] and read["menu.png"] == {normalise(MENU)} and read["plain.png"] == set()
