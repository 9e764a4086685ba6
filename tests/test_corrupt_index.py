"""Damaged and mismatched index directories: one clear line, exit 2, the right fix, nothing touched.

One small real index is built once (13 images, then one removed: its segment has a deletion
record), and its format-1 twin written as an older tusou wrote it; each case damages a copy of
one of them the way disks, crashes, hand edits and other programs do, then runs the real CLI
(search, info, index, reindex) on it. When only a FAISS file is bad the fix is `tusou reindex
DIR`, which must repair the index from its stored vectors; anything else needs a rebuild.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import BuildPlan, build_index
from retrieval import Searcher, TusouError
from tests.imagegen import write_images
from tests.legacy_index import downgrade
from tests.stored import read_back
from ui.cli import main

QUERY = "红色"
ROWS = 13
"""Rows of the index's one segment: 12 live, one deleted."""


class Touch:
    """Unpickling this creates `marker`: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def originals(tmp_path_factory, tiny_model) -> tuple[Path, dict[str, Path]]:
    """(collection, {"format 2": index, "format 1": its format-1 twin}) of 12 images."""
    collection = tmp_path_factory.mktemp("corrupt-collection")
    write_images(collection, ROWS)
    index = tmp_path_factory.mktemp("corrupt-original") / "index"
    build_index(BuildPlan([collection], index, model=tiny_model, workers=0, progress=False))
    sorted(collection.rglob("*.png"))[0].unlink()
    build_index(BuildPlan([collection], index, model=tiny_model, workers=0, progress=False))
    legacy = index.with_name("legacy")
    downgrade(index, legacy)
    return collection, {"format 2": index, "format 1": legacy}


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def edit_manifest(directory: Path, change: Callable[[dict], None]) -> None:
    raw = manifest(directory)
    change(raw)
    (directory / "manifest.json").write_text(json.dumps(raw))


def edit_segment(directory: Path, column: str, change: Callable[[dict], None]) -> None:
    """Change segment 1's `files` or `index_entry` JSON in the catalog, as a hand edit would."""
    db = sqlite3.connect(directory / "catalog.sqlite")
    try:
        raw = json.loads(db.execute(f"SELECT {column} FROM segments WHERE id = 1").fetchone()[0])
        change(raw)
        db.execute(f"UPDATE segments SET {column} = ? WHERE id = 1", (json.dumps(raw),))
        db.commit()
    finally:
        db.close()


def run_sql(sql: str) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        db = sqlite3.connect(directory / "catalog.sqlite")
        try:
            db.execute(sql)
            db.commit()
        finally:
            db.close()

    return damage


def data_file(directory: Path, role: str) -> Path:
    """A data file of the index: catalog, embeddings (a segment's vectors), faiss; in format 2 also ids, deleted."""
    raw = manifest(directory)
    if raw.get("format_version", 1) < 2:
        return directory / raw["files"][role]
    if role == "catalog":
        return directory / "catalog.sqlite"
    db = sqlite3.connect(directory / "catalog.sqlite")
    try:
        files = json.loads(db.execute("SELECT files FROM segments WHERE id = 1").fetchone()[0])
    finally:
        db.close()
    return directory / files["vectors" if role == "embeddings" else role]


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def stored_vectors(directory: Path) -> np.ndarray:
    return np.load(data_file(directory, "embeddings"), allow_pickle=False).astype(np.float32)


def swap_faiss(directory: Path, index: faiss.Index, vectors: np.ndarray) -> None:
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    faiss.write_index(index, str(data_file(directory, "faiss")))


def replace_catalog_line(directory: Path, number: int, line: bytes | None) -> None:
    path = data_file(directory, "catalog")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1 : number] = [] if line is None else [line]
    path.write_bytes(b"".join(lines))


def save_array(role: str, array: np.ndarray) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        with open(data_file(directory, role), "wb") as handle:
            np.save(handle, array, allow_pickle=True)

    return damage


def pickled_embeddings(directory: Path) -> None:
    """A .npy of Python objects whose unpickling would create a marker file beside the index."""
    save_array("embeddings", np.array([Touch(directory.parent / "UNPICKLED")] * 12, dtype=object))(directory)


def pickle_as_embeddings(directory: Path) -> None:
    """Not a .npy at all: a bare pickle in the embeddings file's place."""
    data_file(directory, "embeddings").write_bytes(pickle.dumps(Touch(directory.parent / "UNPICKLED")))


def point_outside(role: str, name: str) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        edit_manifest(directory, lambda raw: raw["files"].__setitem__(role, name))

    return damage


def catalog_copied_outside(directory: Path) -> None:
    """A valid catalog outside the directory, named by the manifest: followed, the index would work."""
    shutil.copy(data_file(directory, "catalog"), directory.parent / "outside.jsonl")
    edit_manifest(directory, lambda raw: raw["files"].__setitem__("catalog", "../outside.jsonl"))


def segment_file_outside(role: str, name: str) -> Callable[[Path], None]:
    return lambda directory: edit_segment(directory, "files", lambda files: files.__setitem__(role, name))


def set_entry(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda directory: edit_segment(directory, "index_entry", change)


def delete(role: str) -> Callable[[Path], None]:
    return lambda directory: data_file(directory, role).unlink()


def set_model(name: str) -> Callable[[Path], None]:
    return lambda directory: edit_manifest(directory, lambda raw: raw["model"].__setitem__("name", name))


def set_field(key: str, value: object) -> Callable[[Path], None]:
    return lambda directory: edit_manifest(directory, lambda raw: raw.__setitem__(key, value))


def drop_fields(*keys: str) -> Callable[[Path], None]:
    return lambda directory: edit_manifest(directory, lambda raw: [raw.pop(key) for key in keys])


Cases = dict[str, tuple[Callable[[Path], None], str]]

FAISS_DAMAGE: dict[str, Callable[[Path], None]] = {
    "faiss-truncated-half": lambda d: truncate(data_file(d, "faiss"), 0.5),
    "faiss-zero-bytes": lambda d: truncate(data_file(d, "faiss"), 0),
    "faiss-garbage": lambda d: data_file(d, "faiss").write_bytes(np.random.default_rng(1).bytes(data_file(d, "faiss").stat().st_size)),
    "faiss-deleted": delete("faiss"),
    "faiss-other-dim": lambda d: swap_faiss(d, faiss.IndexFlatIP(32), stored_vectors(d)[:, :32]),
    "faiss-other-type": lambda d: swap_faiss(d, faiss.IndexHNSWFlat(64, 32, faiss.METRIC_INNER_PRODUCT), stored_vectors(d)),
    "faiss-l2-metric": lambda d: swap_faiss(d, faiss.IndexFlatL2(64), stored_vectors(d)),
    "faiss-fewer-vectors": lambda d: swap_faiss(d, faiss.IndexFlatIP(64), stored_vectors(d)[:-1]),
}
FAISS_MESSAGES: dict[str, str] = {  # the same check (retrieval.store.arrays.read_faiss) for both formats
    "faiss-truncated-half": "is damaged (truncated or corrupt)",
    "faiss-zero-bytes": "is damaged (empty)",
    "faiss-garbage": "is damaged (not a FAISS index)",
    "faiss-deleted": "is missing",
    "faiss-other-dim": "(it holds 32-d vectors, the index is 64-d)",
    "faiss-other-type": "(it holds an IndexHNSWFlat; a flat index is an IndexFlatIP)",
    "faiss-l2-metric": "(it holds an IndexFlatL2",
}
FEWER_VECTORS = {"format 2": "(it holds 12 vectors, not 13)", "format 1": "(it holds 11 vectors, not 12)"}
FAISS_CASES: dict[str, Cases] = {
    form: {case: (FAISS_DAMAGE[case], message) for case, message in {**FAISS_MESSAGES, "faiss-fewer-vectors": fewer}.items()}
    for form, fewer in FEWER_VECTORS.items()
}

MANIFEST_CASES: Cases = {
    "manifest-invalid-json": (lambda d: truncate(d / "manifest.json", 0.5), "manifest.json is damaged ("),
    "manifest-not-an-object": (lambda d: (d / "manifest.json").write_text("[]"), "manifest.json is damaged (not a JSON object)"),
    "manifest-wrong-type": (set_field("dim", "64"), "manifest.json is damaged (dim is '64')"),
    "manifest-unknown-field": (set_field("colour", "red"), "manifest.json is damaged (unknown field colour)"),
    "manifest-other-model": (set_model("taiyi-clip-l14"), "model taiyi-clip-l14 makes 768-d vectors, the manifest says 64-d"),
    "manifest-unknown-model": (set_model("no-such-model"), "names model 'no-such-model', which this tusou does not know"),
    "manifest-other-dim": (set_field("dim", 128), "model test-tiny makes 64-d vectors, the manifest says 128-d"),
    "manifest-metric": (set_field("metric", "l2"), "manifest.json is damaged (metric 'l2'"),
    "manifest-unknown-model-field": (
        lambda d: edit_manifest(d, lambda raw: raw["model"].__setitem__("colour", "red")),
        "manifest.json is damaged (unknown model field colour)",
    ),
    "manifest-no-fingerprint": (
        lambda d: edit_manifest(d, lambda raw: raw["model"].pop("fingerprint")),
        "manifest.json is damaged (model fingerprint is None)",
    ),
    "manifest-weights-not-a-path": (
        lambda d: edit_manifest(d, lambda raw: raw["model"].__setitem__("image_weights", 7)),
        "manifest.json is damaged (model image_weights is 7)",
    ),
}

REBUILD_CASES: dict[str, Cases] = {
    "format 2": {
        "catalog-deleted": (delete("catalog"), "its catalog catalog.sqlite is missing"),
        "catalog-truncated-half": (lambda d: truncate(data_file(d, "catalog"), 0.5), "catalog.sqlite is damaged (database disk image is malformed)"),
        "catalog-zero-bytes": (lambda d: truncate(data_file(d, "catalog"), 0), "catalog.sqlite is damaged (empty)"),
        "catalog-garbage": (
            lambda d: data_file(d, "catalog").write_bytes(np.random.default_rng(2).bytes(data_file(d, "catalog").stat().st_size)),
            "catalog.sqlite is damaged (file is not a database)",
        ),
        "catalog-not-a-database": (lambda d: data_file(d, "catalog").write_text("id,path\n0,a.jpg\n"), "catalog.sqlite is damaged (file is not a database)"),
        "segment-count-disagrees": (run_sql("UPDATE segments SET count = 14"), "segment 1 has 13 vectors and 13 ids, its catalog row says 14"),
        "segment-files-not-json": (run_sql("UPDATE segments SET files = '{broken'"), "catalog.sqlite is damaged (segment 1: its files or index entry are not JSON)"),
        "segment-files-incomplete": (run_sql("""UPDATE segments SET files = '{"vectors": "segments/000001.vectors.npy"}'"""),
                                     "catalog.sqlite is damaged (segment 1 does not name its vectors, ids and FAISS files)"),
        "segment-path-escape": (segment_file_outside("vectors", "../../etc/passwd"), "segment 1's vectors file '../../etc/passwd' is not a file inside"),
        "segment-absolute-path": (segment_file_outside("faiss", "/etc/passwd"), "segment 1's faiss file '/etc/passwd' is not a file inside"),
        "segment-deletion-record-outside": (segment_file_outside("deleted", "segments/../../outside.npy"), "segment 1's deleted file 'segments/../../outside.npy' is not a file inside"),
        "segment-unknown-index-type": (set_entry(lambda e: e.__setitem__("type", "annoy")), "catalog.sqlite is damaged (index type 'annoy'"),
        "segment-knob-of-another-type": (set_entry(lambda e: e["search"].__setitem__("nprobe", 8)), "catalog.sqlite is damaged (search setting nprobe on a flat index)"),
        "segment-unknown-index-field": (set_entry(lambda e: e.__setitem__("shards", 4)), "catalog.sqlite is damaged (unknown index field shards)"),
        "segment-index-budget-not-a-size": (set_entry(lambda e: e.__setitem__("max_memory", "1G")), "catalog.sqlite is damaged (index max_memory is '1G')"),
        "segment-unknown-requested-type": (set_entry(lambda e: e.__setitem__("requested", "annoy")), "catalog.sqlite is damaged (requested index type 'annoy')"),
        "vectors-truncated": (lambda d: truncate(data_file(d, "embeddings"), 0.5), "000001.vectors.npy is damaged (truncated)"),
        "vectors-zero-bytes": (lambda d: truncate(data_file(d, "embeddings"), 0), "000001.vectors.npy is damaged (empty)"),
        "vectors-wrong-dim": (save_array("embeddings", np.zeros((ROWS, 32), np.float16)), "(it holds float16 13 × 32, expected float16 × 64)"),
        "vectors-wrong-dtype": (save_array("embeddings", np.zeros((ROWS, 64), np.float64)), "(it holds float64 13 × 64, expected float16 × 64)"),
        "vectors-fewer-rows": (save_array("embeddings", np.zeros((ROWS - 1, 64), np.float16)), "segment 1 has 12 vectors and 13 ids, its catalog row says 13"),
        "vectors-deleted": (delete("embeddings"), "000001.vectors.npy is missing"),
        "vectors-object-array": (pickled_embeddings, "000001.vectors.npy is damaged (holds pickled Python objects"),
        "vectors-bare-pickle": (pickle_as_embeddings, "000001.vectors.npy is damaged (holds pickled Python objects"),
        "ids-truncated": (lambda d: truncate(data_file(d, "ids"), 0.8), "000001.ids.npy is damaged (truncated)"),
        "ids-wrong-dtype": (save_array("ids", np.zeros(ROWS, np.float32)), "000001.ids.npy is damaged (it holds float32 13, expected int64)"),
        "ids-fewer-rows": (save_array("ids", np.arange(ROWS - 1)), "segment 1 has 13 vectors and 12 ids, its catalog row says 13"),
        "ids-deleted": (delete("ids"), "000001.ids.npy is missing"),
        "deletion-record-deleted": (delete("deleted"), "000001.deleted.000002.npy is missing"),
        "deletion-record-zero-bytes": (lambda d: truncate(data_file(d, "deleted"), 0), "000001.deleted.000002.npy is damaged (empty)"),
        "deletion-record-disagrees": (save_array("deleted", np.empty(0, np.int64)), "000001.deleted.000002.npy is damaged (it holds 0 rows, the catalog says 1)"),
        "manifest-missing-keys": (drop_fields("dim", "model"), "manifest.json is damaged (no model, dim)"),
        **MANIFEST_CASES,
    },
    "format 1": {
        "catalog-deleted": (delete("catalog"), "its catalog file catalog.1.jsonl is missing"),
        "catalog-truncated-mid-line": (
            lambda d: data_file(d, "catalog").write_bytes(data_file(d, "catalog").read_bytes()[:-40]),
            "catalog.1.jsonl line 12 is damaged (cut short)",
        ),
        "catalog-garbage-line": (lambda d: replace_catalog_line(d, 5, b"this is not JSON\n"), "catalog.1.jsonl line 5 is damaged (not JSON)"),
        "catalog-binary-line": (lambda d: replace_catalog_line(d, 7, b"\xff\xfe\x00\x81garbage\n"), "catalog.1.jsonl line 7 is damaged (not UTF-8 text)"),
        "catalog-json-not-an-item": (lambda d: replace_catalog_line(d, 2, b"[1, 2, 3]\n"), "catalog.1.jsonl line 2 is damaged"),
        "catalog-line-removed": (lambda d: replace_catalog_line(d, 3, None), "item counts: manifest 12, catalog 11, embeddings 12"),
        "embeddings-truncated": (lambda d: truncate(data_file(d, "embeddings"), 0.5), "embeddings.1.npy is damaged (truncated)"),
        "embeddings-zero-bytes": (lambda d: truncate(data_file(d, "embeddings"), 0), "embeddings.1.npy is damaged (empty)"),
        "embeddings-wrong-dim": (save_array("embeddings", np.zeros((12, 32), np.float16)), "(it holds float16 12 × 32, expected float16 × 64)"),
        "embeddings-wrong-dtype": (save_array("embeddings", np.zeros((12, 64), np.float64)), "(it holds float64 12 × 64, expected float16 × 64)"),
        "embeddings-fewer-rows": (save_array("embeddings", np.zeros((11, 64), np.float16)), "item counts: manifest 12, catalog 12, embeddings 11"),
        "embeddings-deleted": (delete("embeddings"), "its embeddings file embeddings.1.npy is missing"),
        "embeddings-object-array": (pickled_embeddings, "embeddings.1.npy is damaged (holds pickled Python objects"),
        "embeddings-bare-pickle": (pickle_as_embeddings, "embeddings.1.npy is damaged (holds pickled Python objects"),
        "manifest-missing-keys": (drop_fields("dim", "files"), "manifest.json is damaged (no dim, files)"),
        **MANIFEST_CASES,
        "manifest-count-disagrees": (set_field("count", 13), "item counts: manifest 13, catalog 12, embeddings 12"),
        "manifest-unknown-index-type": (
            lambda d: edit_manifest(d, lambda raw: raw["index"].__setitem__("type", "annoy")),
            "manifest.json is damaged (index type 'annoy'",
        ),
        "manifest-knob-of-another-type": (
            lambda d: edit_manifest(d, lambda raw: raw["index"]["search"].__setitem__("nprobe", 8)),
            "manifest.json is damaged (search setting nprobe on a flat index)",
        ),
        "manifest-unknown-index-field": (
            lambda d: edit_manifest(d, lambda raw: raw["index"].__setitem__("shards", 4)),
            "manifest.json is damaged (unknown index field shards)",
        ),
        "manifest-index-budget-not-a-size": (
            lambda d: edit_manifest(d, lambda raw: raw["index"].__setitem__("max_memory", "1G")),
            "manifest.json is damaged (index max_memory is '1G')",
        ),
        "manifest-unknown-requested-type": (
            lambda d: edit_manifest(d, lambda raw: raw["index"].__setitem__("requested", "annoy")),
            "manifest.json is damaged (requested index type 'annoy')",
        ),
        "manifest-path-escape": (point_outside("catalog", "../../etc/passwd"), "its catalog file '../../etc/passwd' is not a file inside"),
        "manifest-absolute-path": (point_outside("embeddings", "/etc/passwd"), "its embeddings file '/etc/passwd' is not a file inside"),
        "manifest-faiss-path-escape": (point_outside("faiss", "../index.1.faiss"), "its faiss file '../index.1.faiss' is not a file inside"),
        "manifest-valid-catalog-outside": (catalog_copied_outside, "its catalog file '../outside.jsonl' is not a file inside"),
    },
}

UPGRADE_CASES: Cases = {
    "manifest-newer-format": (set_field("format_version", 3), "was written by a newer tusou (index format 3, this one reads up to 2)"),
}
FORMATS = ("format 2", "format 1")


def cases_of(table: dict[str, Cases], *more: Cases) -> list[tuple[str, str]]:
    return [(form, case) for form in FORMATS for case in {**table[form], **{k: v for m in more for k, v in m.items()}}]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (the index copy and whatever sits beside it), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def damaged_copy(original: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    directory = tmp_path / "index"
    shutil.copytree(original, directory)
    damage(directory)
    return directory


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("tusou: error: "), err
    return lines[0]


def cli_runs(collection: Path, directory: Path) -> list[list[str]]:
    return [
        ["search", str(directory), QUERY, "--json"],
        ["info", str(directory)],
        ["info", str(directory), "--json"],
        ["index", str(collection), "--out", str(directory)],
    ]


def rebuild_hint(directory: Path) -> str:
    return f"delete {directory} and rebuild it with `tusou index PATH --out {directory}`"


@pytest.mark.parametrize("form, case", cases_of(REBUILD_CASES, UPGRADE_CASES), ids=lambda v: v.replace(" ", "-"))
def test_damage_that_needs_a_rebuild_is_one_line_and_touches_nothing(form, case, originals, tmp_path, capsys):
    collection, indexes = originals
    damage, names = {**REBUILD_CASES[form], **UPGRADE_CASES}[case]
    directory = damaged_copy(indexes[form], tmp_path, damage)
    before = snapshot(tmp_path)

    for argv in cli_runs(collection, directory) + [["reindex", str(directory)]]:
        line = one_error_line(capsys, argv)
        assert names in line, (argv, line)
        if case in UPGRADE_CASES:
            assert line.endswith(": upgrade tusou"), line
        else:
            assert line.endswith(rebuild_hint(directory)), line
            assert "tusou reindex" not in line, "a reindex cannot restore a catalog, vectors, ids, deletions or manifest"
        assert snapshot(tmp_path) == before, f"{argv[0]} changed the damaged directory"

    with pytest.raises(TusouError, match="upgrade tusou" if case in UPGRADE_CASES else "delete .* and rebuild it"):
        Searcher(directory, device="cpu")
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "UNPICKLED").exists(), "the embeddings file was unpickled"
    if case.endswith(("-object-array", "-bare-pickle")):  # the file was armed: numpy with pickles allowed runs it
        with open(data_file(directory, "embeddings"), "rb") as handle:
            np.load(handle, allow_pickle=True)
        assert (tmp_path / "UNPICKLED").exists()


@pytest.mark.parametrize("form, case", cases_of(FAISS_CASES), ids=lambda v: v.replace(" ", "-"))
def test_damaged_faiss_file_points_at_reindex_which_repairs_it(form, case, originals, tmp_path, capsys):
    collection, indexes = originals
    assert main(["search", str(indexes[form]), QUERY, "--json"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(expected) == 10

    damage, names = FAISS_CASES[form][case]
    directory = damaged_copy(indexes[form], tmp_path, damage)
    before = snapshot(tmp_path)
    for argv in cli_runs(collection, directory):
        line = one_error_line(capsys, argv)
        assert names in line and data_file(directory, "faiss").name in line, (argv, line)
        # the vectors are still good: nothing needs re-embedding
        assert "rebuild the FAISS" in line and line.endswith(f"from them with `tusou reindex {directory}`"), line
        assert snapshot(tmp_path) == before, f"{argv[0]} changed the damaged directory"
    with pytest.raises(TusouError, match=f"`tusou reindex {directory}`"):
        Searcher(directory, device="cpu")

    assert main(["reindex", str(directory)]) == 0
    capsys.readouterr()
    repaired, intact = read_back(directory), read_back(indexes[form])
    assert [(i.path, i.id) for i in repaired.items] == [(i.path, i.id) for i in intact.items]
    np.testing.assert_array_equal(repaired.embeddings, intact.embeddings)  # nothing re-embedded
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "catalog.sqlite", "manifest.json", "segments"]
    assert {f"segments/{p.name}" for p in (directory / "segments").iterdir()} == {n for row in repaired.segments for n in row.files.values()}
    assert main(["search", str(directory), QUERY, "--json"]) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["rank"], r["path"]) for r in found] == [(r["rank"], r["path"]) for r in expected]
    assert [r["score"] for r in found] == pytest.approx([r["score"] for r in expected], abs=1e-5)  # a rebuilt FAISS file
    assert main(["info", str(directory)]) == 0


@pytest.mark.parametrize("form", FORMATS)
def test_a_clean_index_passes_every_check(form, originals, capsys):
    """The checks above are not so strict that a healthy index fails them."""
    _, indexes = originals
    before = snapshot(indexes[form])
    assert main(["info", str(indexes[form]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["count"], info["dim"], info["index_type"]["type"]) == (12, 64, "flat")
    assert main(["search", str(indexes[form]), QUERY, "-k", "3", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert snapshot(indexes[form]) == before
