"""Sources beyond folders: webdataset shards (local, memory://, brace patterns) and list files
of local paths and URLs served over real loopback HTTP."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest

from indexer import BuildPlan, build_index
from indexer.sources import scan
from retrieval import Searcher
from retrieval.store.store import open_store
from tests.stored import read_back
from tests.imagegen import draw

SAMPLES = 5
MTIME = 1_700_000_000


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    draw(seed).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def shard_bytes(shard: int, seeds: list[int], broken: dict[int, bytes] | None = None) -> bytes:
    """A tar as img2dataset writes it: per sample `KEY.jpg`, `KEY.txt`, `KEY.json` (KEY = 5-digit shard + 4-digit row)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for row, seed in enumerate(seeds):
            key = f"{shard:05d}{row:04d}"
            image = (broken or {}).get(row, jpeg(seed))
            meta = json.dumps({"key": key, "caption": f"图片 {seed}", "url": f"http://example.invalid/{seed}.jpg"}).encode()
            for name, data in ((f"{key}.jpg", image), (f"{key}.txt", f"图片 {seed}".encode()), (f"{key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), MTIME
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def seeds_of(shard: int) -> list[int]:
    return [shard * 100 + row for row in range(SAMPLES)]


def member_names(shard: int) -> list[str]:
    return [f"{shard:05d}{row:04d}.jpg" for row in range(SAMPLES)]


@pytest.fixture
def shards(tmp_path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in range(2):
        (folder / f"{shard:06d}.tar").write_bytes(shard_bytes(shard, seeds_of(shard)))
    return folder


def build(paths, out, model, **options):
    return build_index(BuildPlan(paths, out, model=model, progress=False, **options))


def counts(summary) -> tuple[int, int, int, int, int]:
    return summary.added, summary.updated, summary.removed, summary.unchanged, summary.total


def test_local_shards_by_brace_pattern_are_indexed_once_and_searchable(tmp_path, shards, tiny_model):
    out = tmp_path / "index"
    summary = build([str(shards / "{000000..000001}.tar")], out, tiny_model, workers=2)
    expected = {f"{shards / f'{s:06d}.tar'}#{name}" for s in range(2) for name in member_names(s)}
    assert counts(summary) == (10, 0, 0, 0, 10) and summary.skipped == []
    stored = read_back(out)
    assert {item.path for item in stored.items} == expected and len(stored.items) == 10
    item = next(i for i in stored.items if i.path.endswith("000010003.jpg"))
    data = jpeg(103)
    assert (item.size, item.width, item.height) == (len(data), *draw(103).size)
    assert item.change_key.startswith("shard ") and item.mtime_ns == MTIME * 10**9

    assert counts(build([str(shards / "{000000..000001}.tar")], out, tiny_model)) == (0, 0, 0, 10, 10)
    assert read_back(out).generation == 1, "an unchanged collection rewrites nothing"
    store = open_store(out)
    files, _ = scan([str(shards / "{000000..000001}.tar")], progress=False, known=store.catalog.keys_under)
    store.close()
    assert [(source.path, source.kept) for source in files.values()] == [(str(shards / f"{s:06d}.tar"), True) for s in range(2)], \
        "an unchanged shard stands for its members, not listed"

    searcher = Searcher(out, model=tiny_model)
    found = searcher.search_image(data, k=1)[0]
    assert found.path == item.path and found.score == pytest.approx(1.0, abs=2e-3)
    assert all(".tar#" in result.path for result in searcher.search_text("图片", k=5))


def test_changed_shard_is_re_embedded_alone_and_removed_shard_dropped(tmp_path, shards, tiny_model):
    out = tmp_path / "index"
    paths = [str(shards / "000000.tar"), str(shards / "000001.tar")]
    build(paths, out, tiny_model, workers=0)
    before = {item.path: item for item in read_back(out).items}

    seeds = seeds_of(1)
    seeds[2] = 999
    (shards / "000001.tar").write_bytes(shard_bytes(1, seeds))
    os.utime(shards / "000001.tar", ns=(0, MTIME * 10**9 + 1))  # a rewrite within the same mtime tick is still seen
    summary = build(paths, out, tiny_model, workers=0)
    assert counts(summary) == (0, SAMPLES, 0, SAMPLES, 2 * SAMPLES)
    after = {item.path: item for item in read_back(out).items}
    assert all(after[path].id == before[path].id for path in before)
    changed = f"{shards / '000001.tar'}#000010002.jpg"
    assert after[changed].sha256 != before[changed].sha256
    assert [p for p in after if after[p].sha256 != before[p].sha256] == [changed]
    assert Searcher(out, model=tiny_model).search_image(jpeg(999), k=1)[0].path == changed

    summary = build(paths[:1], out, tiny_model, workers=0)
    assert counts(summary) == (0, 0, SAMPLES, SAMPLES, SAMPLES)
    assert all(item.path.startswith(paths[0] + "#") for item in read_back(out).items)


def test_broken_members_are_reported_and_the_rest_indexed(tmp_path, tiny_model):
    good = jpeg(7)
    shard = tmp_path / "000000.tar"
    shard.write_bytes(shard_bytes(0, seeds_of(0), broken={1: good[: len(good) // 3], 3: b"<html>not found</html>"}))
    cut = tmp_path / "000001.tar"  # a download cut short in the middle of its third image
    whole = shard_bytes(1, seeds_of(1))
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        third = tar.getmember("000010002.jpg")
    cut.write_bytes(whole[: third.offset_data + third.size // 2])
    garbage = tmp_path / "000002.tar"
    garbage.write_bytes(b"\x00\x01 not a tar archive" * 100)
    summary = build([str(shard), str(cut), str(garbage)], tmp_path / "index", tiny_model, workers=0)
    reasons = {item["path"]: item["reason"] for item in summary.skipped}
    assert reasons[f"{shard}#000000001.jpg"].startswith("broken image")
    assert reasons[f"{shard}#000000003.jpg"].startswith("not an image")
    assert reasons[f"{cut}#000010002.jpg"].startswith("broken shard")
    assert reasons[str(cut)].startswith("broken shard"), "what comes after the cut is unknown: the shard is reported"
    assert reasons[str(garbage)].startswith("broken shard")
    assert len(reasons) == 5 and summary.total == SAMPLES - 2 + 2


@pytest.fixture
def memory_root():
    fs = fsspec.filesystem("memory")
    root = "/tusou-test"
    yield fs, root
    fs.rm(root, recursive=True)


def test_shards_and_folders_through_fsspec(tmp_path, tiny_model, memory_root):
    fs, root = memory_root
    for shard in range(2):
        fs.pipe(f"{root}/shards/{shard:06d}.tar", shard_bytes(shard, seeds_of(shard)))
    fs.pipe(f"{root}/photos/a.jpg", jpeg(50))
    fs.pipe(f"{root}/photos/sub/b.jpg", jpeg(51))
    fs.pipe(f"{root}/photos/notes.txt", b"not an image name")
    specs = [f"memory://{root}/shards/{{000000..000001}}.tar", f"memory://{root}/photos"]
    out = tmp_path / "index"
    summary = build(specs, out, tiny_model, workers=0)
    assert counts(summary) == (12, 0, 0, 0, 12)
    paths = {item.path for item in read_back(out).items}
    assert {f"memory://{root}/photos/a.jpg", f"memory://{root}/photos/sub/b.jpg"} <= paths
    assert f"memory://{root}/shards/000001.tar#000010004.jpg" in paths

    assert counts(build(specs, out, tiny_model, workers=0)) == (0, 0, 0, 12, 12)
    fs.pipe(f"{root}/shards/000000.tar", shard_bytes(0, [7, *seeds_of(0)[1:]]))
    assert counts(build(specs, out, tiny_model, workers=0)) == (0, SAMPLES, 0, 7, 12)


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_list_file_of_local_paths_and_urls(tmp_path, tiny_model, http_folder):
    www, base = http_folder
    for seed in (1, 2):
        (www / f"web_{seed}.jpg").write_bytes(jpeg(seed))
    local = tmp_path / "lists" / "photos"
    local.mkdir(parents=True)
    for seed in (3, 4):
        (local / f"local_{seed}.jpg").write_bytes(jpeg(seed))
    listing = tmp_path / "lists" / "images.txt"
    listing.write_text(
        f"# a comment, then a blank line\n\n{base}/web_1.jpg\n{base}/web_2.jpg\n{base}/missing.jpg\n"
        f"photos/local_3.jpg\n{local / 'local_4.jpg'}\nphotos/gone.jpg\n"
    )
    out = tmp_path / "index"
    summary = build([f"list:{listing}"], out, tiny_model, workers=2)
    assert counts(summary) == (4, 0, 0, 0, 4)
    reasons = {item["path"]: item["reason"] for item in summary.skipped}
    assert reasons == {f"{base}/missing.jpg": "not found", str(local / "gone.jpg"): "file not found"}
    stored = read_back(out)
    assert [item.path for item in stored.items] == sorted(
        [f"{base}/web_1.jpg", f"{base}/web_2.jpg", str(local / "local_3.jpg"), str(local / "local_4.jpg")]
    )
    web = next(item for item in stored.items if item.path.endswith("web_2.jpg"))
    assert web.size == len(jpeg(2)) and web.change_key and "local" not in web.path
    assert Searcher(out, model=tiny_model).search_image(jpeg(2), k=1)[0].path == f"{base}/web_2.jpg"

    assert counts(build([f"list:{listing}"], out, tiny_model, workers=0)) == (0, 0, 0, 4, 4)
    (www / "web_1.jpg").write_bytes(jpeg(11))
    os.utime(www / "web_1.jpg", ns=(0, (MTIME + 10) * 10**9))
    assert counts(build([f"list:{listing}"], out, tiny_model, workers=0)) == (0, 1, 0, 3, 4)
    assert Searcher(out, model=tiny_model).search_image(jpeg(11), k=1)[0].path == f"{base}/web_1.jpg"


class _MeetingHandler(_QuietHandler):
    """The scan's HEAD requests (the first `SCANNED`) wait, up to 10 s, for another one to be in
    flight with them; the build's own reads later pass straight through."""

    SCANNED = 6
    meeting = threading.Barrier(2, timeout=10)
    met: list[bool] = []

    def do_HEAD(self) -> None:
        if len(self.met) < self.SCANNED:
            try:
                self.meeting.wait()
                self.met.append(True)
            except threading.BrokenBarrierError:
                self.met.append(False)
        super().do_HEAD()


def test_the_urls_of_a_list_are_looked_up_many_at_a_time(tmp_path, tiny_model):
    """A scan of a list of URLs keeps several HEAD requests in flight, not one after another."""
    www = tmp_path / "www"
    www.mkdir()
    for seed in range(6):
        (www / f"{seed}.jpg").write_bytes(jpeg(seed))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_MeetingHandler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(f"http://127.0.0.1:{server.server_address[1]}/{seed}.jpg\n" for seed in range(6)))
    try:
        assert counts(build([f"list:{listing}"], tmp_path / "index", tiny_model, workers=0)) == (6, 0, 0, 0, 6)
    finally:
        server.shutdown()
        server.server_close()
    assert _MeetingHandler.met == [True] * 6, "each HEAD request of the scan had another in flight beside it"


def test_a_remote_shard_is_downloaded_once_per_build_and_listed_as_it_is_read(tmp_path, tiny_model, counted_shards):
    www, base, downloads = counted_shards
    specs = [f"{base}/{{000000..000001}}.tar"]
    summary = build(specs, tmp_path / "index", tiny_model, workers=2)
    assert counts(summary) == (10, 0, 0, 0, 10) and summary.embedded == 10
    assert downloads == {"/000000.tar": 1, "/000001.tar": 1}, "read once: listed in the same pass as it is embedded"
    build(specs, tmp_path / "local", tiny_model, workers=0)
    reference = read_back(tmp_path / "local")
    stored = read_back(tmp_path / "index")
    assert [vars(item) for item in stored.items] == [vars(item) for item in reference.items]
    assert stored.items[0].path == f"{base}/000000.tar#000000000.jpg" and stored.items[0].size == len(jpeg(0))
    assert stored.items[0].mtime_ns == MTIME * 10**9

    downloads.clear()
    assert counts(build(specs, tmp_path / "index", tiny_model, workers=0)) == (0, 0, 0, 10, 10)
    assert downloads == {}, "an unchanged shard is not downloaded again"
    rewritten = shard_bytes(1, [9, *seeds_of(1)[1:]])
    (www / "000001.tar").write_bytes(rewritten[: len(rewritten) // 2])  # rewritten, and cut short
    os.utime(www / "000001.tar", ns=(0, (MTIME + 10) * 10**9))
    summary = build(specs, tmp_path / "index", tiny_model, workers=0)
    assert downloads == {"/000001.tar": 1}
    assert summary.unchanged == 5 and 0 < summary.updated < 5 and summary.updated + summary.removed == 5
    assert [item["reason"].split(":")[0] for item in summary.skipped] == ["broken shard"]


def test_a_killed_build_of_remote_shards_embeds_only_the_rest(tmp_path, tiny_model, counted_shards):
    _, base, _ = counted_shards
    specs = [f"{base}/000000.tar", f"{base}/000001.tar"]
    out = tmp_path / "index"
    env = dict(os.environ, TUSOU_KILL_AT="staged:2")
    killed = subprocess.run([sys.executable, "-c", BUILD, *specs, str(out)], env=env, cwd=Path(__file__).parent.parent)
    assert killed.returncode == -signal.SIGKILL
    summary = build(specs, out, tiny_model, workers=0)
    assert (summary.added, summary.resumed, summary.embedded) == (10, 4, 6)
    build(specs, tmp_path / "reference", tiny_model, workers=0)
    final, reference = read_back(out), read_back(tmp_path / "reference")
    assert [(i.path, i.id, i.size, i.sha256) for i in final.items] == [(i.path, i.id, i.size, i.sha256) for i in reference.items]
    np.testing.assert_allclose(np.asarray(final.embeddings, np.float32), np.asarray(reference.embeddings, np.float32), atol=2e-3)


BUILD = """
import sys
from indexer import BuildPlan, build_index
build_index(BuildPlan(sys.argv[1:-1], sys.argv[-1], "test-tiny", device="cpu", batch_size=2, workers=0, checkpoint_every=2, progress=False))
"""


def test_killed_shard_build_resumes_to_the_uninterrupted_result(tmp_path, shards, tiny_model):
    paths = [str(shards / "000000.tar"), str(shards / "000001.tar")]
    build(paths, tmp_path / "reference", tiny_model)
    reference = read_back(tmp_path / "reference")

    out = tmp_path / "index"
    env = dict(os.environ, TUSOU_KILL_AT="staged:3")
    killed = subprocess.run([sys.executable, "-c", BUILD, *paths, str(out)], env=env, cwd=Path(__file__).parent.parent)
    assert killed.returncode == -signal.SIGKILL
    assert len(list((out / "staging").glob("chunk-*.npz"))) == 3, "killed right after its third chunk was staged"
    summary = build(paths, out, tiny_model)
    assert counts(summary) == (10, 0, 0, 0, 10)
    final = read_back(out)
    assert [(i.path, i.id, i.sha256) for i in final.items] == [(i.path, i.id, i.sha256) for i in reference.items]
    np.testing.assert_allclose(np.asarray(final.embeddings, np.float32), np.asarray(reference.embeddings, np.float32), atol=2e-3)
    assert not (out / "staging").exists()


def test_a_folder_index_catalog_is_unchanged_by_change_keys(tmp_path, fresh_folder, tiny_model):
    """Local files carry no change key (their stamp is size and mtime alone, as older tusou versions kept it)."""
    out = tmp_path / "index"
    build([fresh_folder], out, tiny_model, workers=0)
    items = read_back(out).items
    assert len(items) == 24 and all(item.change_key is None for item in items)


def test_the_ui_shows_shard_members_and_urls(tmp_path, shards, tiny_model, http_folder, memory_root):
    """The UI reads a result's thumbnail through its catalog path, whatever kind of source it came from."""
    from PIL import Image

    from retrieval.images import open_image
    from retrieval.locations import Unreadable, read_item
    from ui.app import THUMBNAIL, SearchApp
    from ui.backend import Backend

    www, base = http_folder
    (www / "web.jpg").write_bytes(jpeg(60))
    fs, root = memory_root
    fs.pipe(f"{root}/000005.tar", shard_bytes(5, seeds_of(5)))
    specs = [str(shards / "000000.tar"), f"memory://{root}/000005.tar", f"{base}/web.jpg"]
    out = tmp_path / "index"
    build(specs, out, tiny_model, workers=0)
    app = SearchApp(Backend(Searcher(out, model=tiny_model)))
    gallery, rows, _ = app.search_text("图片", k=11)
    assert len(gallery) == 11 and {row["file"] for row in rows} == {item.path for item in read_back(out).items}
    for (thumbnail, _), row in zip(gallery, rows):
        expected = open_image(read_item(row["file"]), min_size=THUMBNAIL)
        expected.thumbnail((THUMBNAIL, THUMBNAIL))
        assert thumbnail.size == expected.size and np.array_equal(np.asarray(thumbnail), np.asarray(expected)), row["file"]
        assert thumbnail.getpixel((0, 0)) != (235, 235, 235)
    assert read_item(f"memory://{root}/000005.tar#000050001.jpg") == jpeg(501)

    (shards / "000000.tar").write_bytes(shard_bytes(0, seeds_of(0)[:1]))  # the shard lost members since the build
    with pytest.raises(Unreadable, match="not in"):
        read_item(f"{shards / '000000.tar'}#000000003.jpg")
    gallery, _, _ = app.search_text("图片", k=11)
    placeholder = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (235, 235, 235))
    assert sum(np.array_equal(np.asarray(t), np.asarray(placeholder)) for t, _ in gallery) == SAMPLES - 1


def test_brace_patterns_expand_as_webdataset_writes_them():
    from indexer.braces import expand_braces

    assert expand_braces("s/{000008..000010}.tar") == ["s/000008.tar", "s/000009.tar", "s/000010.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("{x}/{1..2}.tar") == ["{x}/1.tar", "{x}/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
