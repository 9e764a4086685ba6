"""OCR's cost in a build: `tusou index --ocr` against the build without it and OCR alone, one run.

On the OCR benchmark set (eval.ocr_synthetic: posters, signs, chat screenshots, receipts, memes,
and text-free photos), per model:
- OCR alone: `tusou ocr`'s path (retrieval.ocr.engine.read_text), one image after another in
  this process, onnxruntime on every core; also its images/s on pictures with much text
  (chat, receipt, poster) and with none (photos);
- `tusou index`: the build without OCR (decode workers, embedding here);
- `tusou index --ocr`: the same build with the text read in its decode workers, overlapped with
  embedding. Its goal: at most 1.15 × the slower of the two above. Beside it, the floor that
  the machine sets: the CPU seconds of the two alone spread over every core, × the slower (on 2
  cores and no GPU, a heavy image tower and the OCR each fill both cores, and overlap cannot
  take less than their sum over the cores).
Each build is a fresh index; the three run in turn `--rounds` times and the medians are reported,
so a burst of load from elsewhere falls on all alike. Models have random weights (timing does not
depend on them): `demo` (a small tower: OCR is nearly all the work) and taiyi-clip-l14's real
ViT-L/14 (embedding as heavy as the OCR).

    python -m bench.ocr_build [--count 80] [--models demo,taiyi-clip-l14] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.ocr import GROUPS
from bench.report import machine, table
from eval.ocr_synthetic import generate
from indexer.build import build_index
from indexer.engine import default_workers
from indexer.plan import BuildPlan
from retrieval.models.model import load_model
from retrieval.ocr.engine import ocr_engine, read_text

GOAL = 1.15
"""The overlapped build's most, × the slower of the build alone and OCR alone."""
WAYS = ("ocr", "index", "index --ocr")


def ocr_alone(paths: list[Path]) -> dict[Path, float]:
    """Each picture's seconds, read one after another."""
    each = {}
    for path in paths:
        start = time.perf_counter()
        read_text(path)
        each[path] = time.perf_counter() - start
    return each


def build(images: Path, out: Path, model, ocr: bool) -> None:
    summary = build_index(BuildPlan([images], out, model=model, ocr=ocr, progress=False))
    assert summary.added == len(list(images.iterdir())), summary


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (a build's decode workers)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


@dataclass
class Timings:
    """Wall and CPU seconds of each way, one per round, and OCR alone's seconds per picture in each round."""

    wall: dict[str, list[float]] = field(default_factory=lambda: {way: [] for way in WAYS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {way: [] for way in WAYS})
    each: list[dict[Path, float]] = field(default_factory=list)

    def time(self, way: str, call: Callable[[], object]) -> object:
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = call()
        self.wall[way].append(time.perf_counter() - wall)
        self.cpu[way].append(cpu_seconds() - cpu)
        return result


def measure(images: Path, work: Path, model, rounds: int) -> Timings:
    """The three ways in turn, `rounds` times; a build of each kind and a reading warm up first."""
    paths = sorted(images.iterdir())
    warm = work / "warm"
    warm.mkdir()
    for path in paths[:2]:
        (warm / path.name).write_bytes(path.read_bytes())
    for ocr in (False, True):
        build(warm, work / f"warm-{ocr}", model, ocr)
    read_text(paths[0])
    timings = Timings()
    for round_ in range(rounds):
        timings.each.append(timings.time("ocr", lambda: ocr_alone(paths)))
        timings.time("index", lambda: build(images, work / f"plain-{round_}", model, False))
        timings.time("index --ocr", lambda: build(images, work / f"ocr-{round_}", model, True))
    return timings


def rows(name: str, timings: Timings, scenes: dict[Path, str]) -> list[list[object]]:
    count = len(scenes)
    rate = {}
    for group in ("much", "none"):
        chosen = [p for p, scene in scenes.items() if GROUPS[scene] == group]
        rate[group] = len(chosen) / statistics.median(sum(each[p] for p in chosen) for each in timings.each)
    (ocr, plain, both), cpu = (statistics.median(timings.wall[way]) for way in WAYS), {way: statistics.median(timings.cpu[way]) for way in WAYS}
    slower, floor = max(ocr, plain), (cpu["ocr"] + cpu["index"]) / (os.cpu_count() or 1)
    return [
        [name, "OCR alone (tusou ocr)", ocr, cpu["ocr"], count / ocr, f"much text {rate['much']:.2f}/s, none {rate['none']:.2f}/s", ""],
        [name, "tusou index", plain, cpu["index"], count / plain, "", ""],
        [name, "tusou index --ocr", both, cpu["index --ocr"], count / both, "",
         f"{both / slower:.2f} × the slower ({'met' if both <= GOAL * slower else 'missed'}); "
         f"the two's CPU on every core: {floor / slower:.2f} ×"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=80, help="pictures (a fifth of them text-free photos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="demo,taiyi-clip-l14")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ocr_engine()  # a missing package is one line before anything is drawn
    out = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        pictures, _ = generate(folder, args.count, args.seed)
        images = folder / "images"
        scenes = {images / p.name: p.scene for p in pictures}
        for name in args.models.split(","):
            model = load_model(name, device="cpu", pretrained=False)
            work = folder / f"work-{name}"
            work.mkdir()
            out += rows(name, measure(images, work, model, args.rounds), scenes)
    print(table(
        f"OCR in a build: {args.count} pictures of the OCR benchmark set (seed {args.seed}), median of {args.rounds} rounds",
        ["model", "way", "seconds", "CPU seconds", "images/s", "OCR alone by picture", "overlap"],
        out,
        [f"{default_workers()} decode workers (onnxruntime on 1 thread each), embedding in the build's process; "
         f"OCR alone: onnxruntime on every core. Random weights, CPU, default precision. Machine: {machine()}."],
    ))


if __name__ == "__main__":
    main()
