"""A build's staging: records in SQLite beside chunks of vectors, resumed after a kill, discarded
when it is not this build's; and the EXIF metadata a real build stages with every record."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.sources import SourceFile
from indexer.staged_items import staged_items
from indexer.staging import Staging
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import ImageRecord
from tests.test_metadata_filters import jpeg_with_exif

ROOT = Path(__file__).parent.parent
MODEL = ModelRef("some-model", fingerprint="f" * 16)


def record(number: int, size: int | None = None, **metadata) -> ImageRecord:
    return ImageRecord(f"/photos/{number:03d}.jpg", size or 100 + number, number, f"{number:064x}", 40, 30, **metadata)


def source(item: ImageRecord) -> SourceFile:
    return SourceFile(item.path, item.size, item.mtime_ns, item.change_key, None)


def vector(number: int) -> np.ndarray:
    return np.full(8, number, np.float32)


def stage(directory: Path, records: list[ImageRecord], every: int = 2) -> Staging:
    """`records` staged with vector(their number), flushed every `every`."""
    staging = Staging(directory, MODEL)
    for count, item in enumerate(records, 1):
        staging.add(item, vector(item.mtime_ns))
        if count % every == 0:
            staging.flush()
    staging.flush()
    return staging


def staged_vectors(staging: Staging, records: list[ImageRecord]) -> np.ndarray:
    """What a commit of the files `records` stamp takes from `staging`: the vectors staged for them as they are, in path order."""
    items = staged_items(staging, [source(item) for item in records], None, 0)
    out = np.zeros((len(items), 8), np.float16)
    items.fill(out)
    return out[:, 0]


def test_records_and_vectors_come_back_from_disk_and_a_restaged_image_keeps_its_latest(tmp_path):
    not_utf8 = replace(record(4), path=os.fsdecode(b"/photos/bad\xff\xfe name.jpg"))
    records = [record(0, camera="Canon EOS R5", taken="2024-06-01T12:30:00", latitude=31.23, longitude=121.47),
               record(1, format="png"), record(2), record(3, orientation=6), not_utf8]
    stage(tmp_path / "staging", records)
    changed = record(1, size=999)
    stage(tmp_path / "staging", [changed])

    staging = Staging(tmp_path / "staging", MODEL)
    latest = [records[0], changed, *records[2:]]
    assert sorted(staging.records(), key=lambda item: item.mtime_ns) == latest
    assert [staging.get(source(item)) for item in latest] == latest
    assert staging.get(source(records[1])) is None, "the stamp it was staged with is not the file's any more"
    assert staging.get(source(record(7))) is None and staging.added == 0
    assert staged_vectors(staging, latest).tolist() == [0, 1, 2, 3, 4]
    assert staged_vectors(staging, [records[1], record(7)]).tolist() == [], "neither is staged as the file is now"
    staging.clear()
    assert not (tmp_path / "staging").exists()


KILL = """
import sys
from tests.test_staging import record, stage
stage(__import__("pathlib").Path(sys.argv[1]), [record(number) for number in range(6)])
"""


@pytest.mark.parametrize("point, staged", [("chunk:2", 2), ("staged:2", 4)])
def test_a_killed_flush_stages_all_its_records_or_none(tmp_path, point, staged):
    """Killed with its chunk written but not committed (`chunk`) the flush's records are not staged,
    and the next open deletes the chunk; killed after the commit (`staged`) they are."""
    directory = tmp_path / "staging"
    env = dict(os.environ, TUSOU_KILL_AT=point, PYTHONPATH=str(ROOT))
    assert subprocess.run([sys.executable, "-c", KILL, str(directory)], env=env, cwd=ROOT).returncode == -signal.SIGKILL
    assert len(list(directory.glob("chunk-*.npz"))) == 2

    staging = Staging(directory, MODEL)
    assert sorted(item.mtime_ns for item in staging.records()) == list(range(staged))
    assert len(list(directory.glob("chunk-*.npz"))) == staged // 2, "a chunk no record names is deleted"
    rest = [record(number) for number in range(staged, 6)]
    for item in rest:
        staging.add(item, vector(item.mtime_ns))
    staging.flush()
    everything = [record(number) for number in range(6)]
    assert staged_vectors(Staging(directory, MODEL), everything).tolist() == list(range(6))


def _older_tusou(directory: Path) -> None:
    """Records inside the chunk, as tusou kept them before records.sqlite."""
    for path in directory.iterdir():
        path.unlink()
    (directory / "model.json").write_text(json.dumps(MODEL.to_dict()))
    items = json.dumps([vars(record(0))])
    np.savez(directory / "chunk-000001.npz", items=np.array(items), vectors=np.zeros((1, 8), np.float16))


def _other_columns(directory: Path) -> None:
    for path in directory.glob("records.sqlite*"):
        path.unlink()
    with sqlite3.connect(directory / "records.sqlite") as db:
        db.execute("CREATE TABLE records (path PRIMARY KEY, size, chunk, row)")
        db.execute("INSERT INTO records VALUES ('/photos/000.jpg', 100, 1, 0)")


def _not_a_database(directory: Path) -> None:
    for path in directory.glob("records.sqlite*"):
        path.unlink()
    (directory / "records.sqlite").write_bytes(b"not a database at all" * 100)


@pytest.mark.parametrize("damage", [_older_tusou, _other_columns, _not_a_database], ids=lambda damage: damage.__name__[1:])
def test_a_staging_this_build_cannot_resume_is_discarded(tmp_path, damage):
    directory = tmp_path / "staging"
    stage(directory, [record(0), record(1)])  # dropped at once: its connection closes
    damage(directory)
    staging = Staging(directory, MODEL)
    assert list(staging.records()) == [] and staging.get(source(record(0))) is None
    assert not directory.exists(), "its images are embedded again"


def test_a_staging_of_another_model_is_not_this_builds(tmp_path):
    stage(tmp_path / "staging", [record(0)])
    other = Staging(tmp_path / "staging", ModelRef("some-model", fingerprint="e" * 16))
    assert list(other.records()) == [] and not (tmp_path / "staging").exists()


SHANGHAI = {1: "N", 2: (31.0, 13.0, 48.0), 3: "E", 4: (121.0, 28.0, 12.0)}
BUILD = """
import sys
from indexer import BuildPlan, build_index
build_index(BuildPlan(sys.argv[1:-2], sys.argv[-2], "test-tiny", device="cpu", batch_size=2, workers=int(sys.argv[-1]),
            checkpoint_every=2, progress=False))
"""


def metadata_collection(folder: Path) -> list[str]:
    """A JPEG with full EXIF (rotated: stored 40x30, upright 30x40), a PNG without, a PNG named .jpg,
    a JPEG whose EXIF block is broken, and a tar shard with an EXIF JPEG member; its paths to index."""
    folder.mkdir()
    (folder / "exif.jpg").write_bytes(jpeg_with_exif(gps=SHANGHAI))
    Image.new("RGB", (24, 24), "blue").save(folder / "plain.png")
    Image.new("RGB", (24, 24), "green").save(folder / "really_a_png.jpg", "PNG")
    broken = bytearray(jpeg_with_exif(make="Broken"))
    start = broken.index(b"Exif\x00\x00") + 6
    broken[start + 8 : start + 40] = b"\xff" * 32
    (folder / "broken_exif.jpg").write_bytes(bytes(broken))
    member = jpeg_with_exif(make="Apple", model="iPhone 15", taken="2023:12:31 23:59:59", offset=None, orientation=1)
    with tarfile.open(folder.parent / "shard.tar", "w") as tar:
        info = tarfile.TarInfo("000000000.jpg")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    return [str(folder), str(folder.parent / "shard.tar")]


def assert_staged_metadata(staging: Staging, folder: Path) -> None:
    """What `metadata_collection`'s images say about themselves, as their staged records have it."""
    found = {item.path: item for item in staging.records()}
    assert len(found) == 5, sorted(found)
    exif = found[str(folder / "exif.jpg")]
    assert (exif.taken, exif.taken_offset, exif.camera, exif.orientation, exif.format) == (
        "2024-06-01T12:30:00", "+08:00", "Canon EOS R5", 6, "jpeg")
    assert (exif.latitude, exif.longitude) == (pytest.approx(31.23), pytest.approx(121.47))
    assert (exif.width, exif.height) == (30, 40), "upright, from the same open as the metadata"
    nothing = dict(taken=None, taken_offset=None, camera=None, latitude=None, longitude=None, orientation=None)
    for name, kind in (("plain.png", "png"), ("really_a_png.jpg", "png")):
        assert {key: getattr(found[str(folder / name)], key) for key in [*nothing, "format"]} == nothing | {"format": kind}
    assert found[str(folder / "broken_exif.jpg")].format == "jpeg"
    member = found[f"{folder.parent / 'shard.tar'}#000000000.jpg"]
    assert (member.camera, member.taken, member.taken_offset, member.orientation) == ("Apple iPhone 15", "2023-12-31T23:59:59", None, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_build_stages_what_each_image_says_about_itself(tmp_path, tiny_model, workers):
    """A real build, killed as its commit starts, leaves every image staged with its metadata."""
    paths = metadata_collection(tmp_path / "photos")
    out = tmp_path / "index"
    env = dict(os.environ, TUSOU_KILL_AT="commit:1", PYTHONPATH=str(ROOT))
    build = subprocess.run([sys.executable, "-c", BUILD, *paths, str(out), str(workers)], env=env, cwd=ROOT)
    assert build.returncode == -signal.SIGKILL
    assert_staged_metadata(Staging(out / "staging", ModelRef.of(tiny_model)), tmp_path / "photos")


def test_text_is_staged_beside_the_records_and_a_resumed_build_finds_it(tmp_path):
    from retrieval.ocr.engine import OcrLine, OcrResult

    read = OcrResult((OcrLine("老王火锅", ((1.0, 2.0), (30.0, 2.0), (30.0, 12.0), (1.0, 12.0)), 0.98),))
    staging = stage(tmp_path / "staging", [record(1)])
    staging.add_text(record(2).path, record(2).stamp, read)  # an image read alone: its text, no record
    staging.add_text(record(3).path, record(3).stamp, OcrResult(reason="not an image"))
    staging.flush()
    staging.close()
    again = Staging(tmp_path / "staging", MODEL)
    assert again.get(source(record(1))) is not None and again.get(source(record(2))) is None
    assert again.has_text(source(record(2))) and not again.has_text(source(record(2, size=7))) and not again.has_text(source(record(1)))
    texts = {path: OcrResult.from_json(text) for path, *_, text in again.texts}
    assert len(again.texts) == 2 and texts[record(2).path] == read and texts[record(3).path].reason == "not an image"
    again.close()
