"""The build driver's memory an image: comparing the collection with the index, and the commit.

What a build holds for each image decides the machine that drives a big one (a Ray build's driver
scans, compares, stages and commits; only the embedding runs on the cluster). Measured through the
build's own steps (indexer.build.compare, indexer.build.commit_staged), model excluded: a synthetic
index of COUNT items and a staging of COUNT embedded images are written first, through the modules'
APIs, then a fresh process measures each step's peak resident set (VmHWM, reset before the step by
writing 5 to /proc/self/clear_refs) beyond what it held when the step began.

- update: the index holds COUNT items; the scan finds half of them changed, half unchanged, and
  COUNT / 2 new images, all staged; the commit writes COUNT items (COUNT / 2 changed, COUNT / 2 new);
- new index: COUNT staged images, no index yet.

Per image is per COUNT. The commit's figure includes the new segment's FAISS index, built from its
mapped vectors, trained and tuned as every segment is (ivfpq here: its index is ~16 bytes a vector,
what matters is its training); that build is measured again alone in a fresh process, and the
difference is the commit's own. The scan's list of files, which the comparison and the embedding
read, is a figure of its own (synthetic SourceFiles, as the scan of loose files makes them).

    python -m bench.build_memory [--count 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.report import machine, table
from indexer.build import commit_staged, compare
from indexer.commit import Change, create_index
from indexer.faiss_build import index_embeddings
from indexer.plan import Layout
from indexer.sources import SourceFile
from indexer.staging import Staging
from retrieval.store.model_ref import ModelRef
from retrieval.store.records import CatalogItem, ImageRecord
from retrieval.store.store import open_store

MODEL = ModelRef("test-tiny", fingerprint="f" * 16)
"""A manifest names a model of the vectors' dim; none is loaded."""
DIM = 64
LAYOUT = Layout("ivfpq", None)
CHANGED = 10**12
"""Added to the mtime of a changed image."""


def old_path(i: int) -> str:
    return f"/photos/{i % 1000:03d}/{i:08d}.jpg"


def new_path(i: int) -> str:
    return f"/photos/new/{i % 1000:03d}/{i:08d}.jpg"


def staged(i: int, count: int, update: bool) -> ImageRecord:
    """Image i of the staging: in an update, the first half are the index's items changed, the rest new."""
    if update and i < count // 2:
        return ImageRecord(old_path(i), 1000, i + CHANGED, f"{i:064x}", 640, 480, format="jpeg")
    return ImageRecord(new_path(i), 1000, i, f"{i:064x}", 640, 480, format="jpeg")


def scanned(count: int, update: bool) -> dict[str, SourceFile]:
    """What the scan finds, as it returns it (in path order): the staged images, and in an update the unchanged half too."""
    found = {record.path: SourceFile(record.path, record.size, record.mtime_ns) for record in (staged(i, count, update) for i in range(count))}
    if update:
        found |= {old_path(i): SourceFile(old_path(i), 1000, i) for i in range(count // 2, count)}
    return dict(sorted(found.items()))


def write_inputs(out: Path, count: int, update: bool, layout: Layout = LAYOUT) -> None:
    """The index as it was (in an update) and the staging the commit reads, chunk by chunk as a build stages it."""
    vectors = np.random.default_rng(0).standard_normal((count, DIM)).astype(np.float16)
    if update:
        items = [CatalogItem(old_path(i), 1000, i, f"{i:064x}", 640, 480, id=i, format="jpeg") for i in range(count)]
        out.mkdir()
        create_index(out, MODEL, DIM, Change(items, lambda rows: np.copyto(rows, vectors), count, layout), progress=False)
    staging = Staging(out / "staging", MODEL)
    for i in range(count):
        staging.add(staged(i, count, update), vectors[i])
        if (i + 1) % 1024 == 0:
            staging.flush()
    staging.flush()
    staging.close()


def _rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))


def _peak_of(step):
    """(bytes the peak resident set rose by while `step()` ran, its result)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the peak (VmHWM) is the current resident set from here
    before = _rss()
    result = step()
    return _rss("VmHWM") - before, result


def measure(out: Path, count: int, update: bool) -> dict:
    """(Run in a fresh process.) Each step's peak memory beyond what it began with, in bytes."""
    import faiss  # noqa: F401  (its libraries are not the build's memory)

    previous = open_store(out) if update else None
    listing, files = _peak_of(lambda: scanned(count, update))
    comparing, compared = _peak_of(lambda: compare(files, previous.catalog if previous else None))
    staging = Staging(out / "staging", MODEL)
    committing, summary = _peak_of(lambda: commit_staged(out, previous, MODEL, DIM, compared, staging, LAYOUT, LAYOUT if update else None, False))
    staging.close()
    assert summary.added + summary.updated == count, summary
    segment = max((out / "segments").glob("*.vectors.npy"))
    return {"listing": listing, "compare": comparing, "commit": committing, "segment": str(segment)}


def measure_faiss(vectors: Path) -> dict:
    """(Run in a fresh process.) The peak memory of building, training and tuning a segment's FAISS index alone."""
    import faiss  # noqa: F401

    peak, _ = _peak_of(lambda: index_embeddings(np.load(vectors, mmap_mode="r"), LAYOUT.requested, None))
    return {"faiss": peak}


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.build_memory", *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def run(count: int, update: bool, folder: Path) -> dict:
    out = folder / ("update" if update else "new")
    write_inputs(out, count, update)
    found = _child("--measure", str(out), "--count", str(count), *(["--update"] if update else []))
    return found | _child("--faiss", found["segment"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000, help="images staged (and, in the update, items of the index)")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--update", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--faiss", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure or args.faiss:
        print(json.dumps(measure(args.measure, args.count, args.update) if args.measure else measure_faiss(args.faiss)))
        return
    with tempfile.TemporaryDirectory() as folder:
        results = {"update": run(args.count, True, Path(folder)), "new index": run(args.count, False, Path(folder))}
    rows = []
    for name, found in results.items():
        found["own"] = found["commit"] - found["faiss"]
        steps = [("listing", "the scan's list of files"), ("compare", "compare with the index"), ("commit", "commit, all of it"),
                 ("faiss", "its segment's FAISS build, alone"), ("own", "the commit's own (the difference)")]
        rows += [[name, label, f"{found[step] / 2**20:.1f} MB", f"{found[step] / args.count:.0f} B"]
                 for step, label in steps if not (step == "compare" and name == "new index")]
    print(table(
        f"The build driver's peak memory at {args.count:,} images",
        ["build", "step", "peak resident set added", "an image"],
        rows,
        [f"Model excluded; {DIM}-d vectors, the new segment {LAYOUT.requested}. Machine: {machine()}."],
    ))


if __name__ == "__main__":
    main()
