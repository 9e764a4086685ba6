"""A build's staging: records in SQLite beside chunks of vectors, resumed after a kill, discarded
when it is not this build's."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer.sources import SourceFile
from indexer.staging import Staging
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import ImageRecord

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
    out = np.zeros((len(records), 8), np.float16)
    staging.copy_vectors({item.path: row for row, item in enumerate(records)}, out)
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
    with pytest.raises(KeyError):
        staging.copy_vectors({record(7).path: 0}, np.zeros((1, 8), np.float16))
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
