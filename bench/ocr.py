"""OCR: what shrinking an image before reading it costs in lines read, and saves in time.

The OCR benchmark set (eval.ocr_synthetic: posters, signs, chat screenshots, receipts, memes with
known text, and text-free photos) is read by tusou's engine (retrieval.ocr.engine) at several
longest sides, and, as the baseline measured in the same run, by RapidOCR as it ships (the whole
image; its detector scales a shorter side up to 736 px). Per setting: lines read exactly,
character accuracy (all lines, and lines of 20 px and more), CPU and wall milliseconds per image
with much text (chat, receipt, poster), little (sign, meme) and none (photo), and the CPU time
as a ratio of the baseline's. Each image is read by every setting in turn, so a burst of load
from elsewhere falls on all of them alike.

    python -m bench.ocr [--count 150] [--sides 960,1280,1600]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import cpu_model, table
from eval.ocr_reading import score_reading
from eval.ocr_synthetic import Picture, generate
from retrieval.images import decode
from retrieval.ocr.engine import ocr_engine, read_text

GROUPS = {"chat": "much", "receipt": "much", "poster": "much", "sign": "little", "meme": "little", "photo": "none"}
BASELINE = "RapidOCR defaults, whole image"


def readers(sides: list[int]) -> dict[str, Callable[[Path], list[str]]]:
    """Each setting: how it reads an image file into lines of text."""
    from rapidocr import RapidOCR

    shipped = RapidOCR(params={"Global.log_level": "error"})

    def baseline(path: Path) -> list[str]:
        return list(shipped(decode(path)[0]).txts or ())

    settings = {BASELINE: baseline}
    for side in sides:
        settings[f"tusou, longest side {side}"] = lambda path, side=side: [line.text for line in read_text(path, side).lines]
    return settings


def measure(pictures: list[Picture], folder: Path, settings: dict[str, Callable[[Path], list[str]]]) -> dict[str, dict]:
    """Lines read and seconds (CPU, wall) per setting and picture, round-robin over the settings."""
    found = {name: {"read": {}, "cpu": {}, "wall": {}} for name in settings}
    for read in settings.values():  # warm-up: the models load, onnxruntime plans its kernels
        read(folder / "images" / pictures[0].name)
    for picture in pictures:
        for name, read in settings.items():
            cpu, wall = time.process_time(), time.perf_counter()
            found[name]["read"][picture.name] = read(folder / "images" / picture.name)
            found[name]["cpu"][picture.name] = time.process_time() - cpu
            found[name]["wall"][picture.name] = time.perf_counter() - wall
    return found


def rows(pictures: list[Picture], found: dict[str, dict]) -> list[list[object]]:
    truth = [{"name": p.name, "lines": [{"text": line.text, "size": line.size} for line in p.lines]} for p in pictures]
    groups = {group: [p.name for p in pictures if GROUPS[p.scene] == group] for group in ("much", "little", "none")}
    baseline_cpu = sum(found[BASELINE]["cpu"].values())
    out = []
    for name, result in found.items():
        scores = score_reading(truth, result["read"])
        per_group = [1000 * sum(result[kind][p] for p in groups[group]) / max(1, len(groups[group]))
                     for group in groups for kind in ("cpu", "wall")]
        out.append([name, scores["exact_read"], scores["exact_read_20px"], scores["char_accuracy"], scores["char_accuracy_20px"],
                    scores["lines_per_photo"], *(round(v) for v in per_group), sum(result["cpu"].values()) / baseline_cpu])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=150, help="pictures in the set (a fifth of them text-free photos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default="960,1280,1600", help="longest sides to shrink to, comma-separated")
    args = parser.parse_args()
    ocr_engine()  # a missing package is one line before anything is drawn
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        pictures, _ = generate(folder, args.count, args.seed)
        found = measure(pictures, folder, readers([int(side) for side in args.sides.split(",")]))
        lines = sum(len(p.lines) for p in pictures)
        counts = {group: sum(1 for p in pictures if GROUPS[p.scene] == group) for group in ("much", "little", "none")}
        print(table(
            f"OCR of {len(pictures)} pictures ({lines} lines drawn; {counts['much']} with much text, {counts['little']} little, "
            f"{counts['none']} none), seed {args.seed}",
            ["setting", "exact read", "exact ≥20px", "char acc", "char acc ≥20px", "lines/photo",
             "much CPU ms", "much ms", "little CPU ms", "little ms", "none CPU ms", "none ms", "CPU × baseline"],
            rows(pictures, found),
            [f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; onnxruntime on every core. "
             "CPU ms is the process's CPU time (all threads) per image, ms its wall time."],
        ))


if __name__ == "__main__":
    main()
