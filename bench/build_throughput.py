"""Build throughput: images/s of `tusou index` against the model alone and a naive loop.

On the real taiyi-clip-l14 image tower (ViT-L/14-quickgelu, random weights: timing does
not depend on them), over photo-sized JPEGs written by the benchmark:
- model only: the image tower on pixel batches decoded and preprocessed beforehand,
  the ceiling for any build;
- tusou index: the whole build (scan, decode in worker processes, embed, stage, write);
- naive: one image at a time, full-size decode, batch of one.
And the decode step alone, with and without Pillow's JPEG draft mode.

    python -m bench.build_throughput [--images 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.report import latencies, machine, table, timed
from indexer.build import build_index
from indexer.engine import default_workers
from indexer.plan import BuildPlan
from retrieval.store.model_ref import cast
from retrieval.images import decode
from retrieval.models.model import load_model

MODEL = "taiyi-clip-l14"
PHOTO_SIZE = (2400, 1600)
"""A phone photo after the usual downscale: 3.8 megapixels."""


def write_photos(folder: Path, count: int) -> list[Path]:
    """JPEGs with smooth structure and grain, so they compress and decode like photos."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize(PHOTO_SIZE, Image.BICUBIC)
        grain = rng.normal(0, 8, (PHOTO_SIZE[1], PHOTO_SIZE[0], 1))
        pixels = np.clip(np.asarray(coarse, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        path = folder / f"photo_{number:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    fp32 = load_model(MODEL, device="cpu", pretrained=False)
    fast = cast(fp32, "auto")
    size = fp32.image_size
    with tempfile.TemporaryDirectory() as folder:
        photos = Path(folder) / "photos"
        paths = write_photos(photos, args.images)
        data = [path.read_bytes() for path in paths]

        full = latencies(lambda d: decode(d), data, data[:2])
        draft = latencies(lambda d: decode(d, size), data, data[:2])
        decode_rows = [
            ["full-size decode", float(np.median(full) * 1000), 1.0],
            [f"draft decode (JPEG DCT scaling to ≥{size} px)", float(np.median(draft) * 1000), float(np.median(full) / np.median(draft))],
        ]

        pixels = [torch.stack([fp32.preprocess(decode(d, size)[0]) for d in data[s : s + args.batch_size]])
                  for s in range(0, len(data), args.batch_size)]
        rates = {}
        precisions = {"fp32": fp32} | ({"auto": fast} if fast.dtype != fp32.dtype else {})  # auto = fp32: nothing new to time
        for name, model in precisions.items():
            model.encode_pixels(pixels[0][:2])  # warm-up
            rates[f"model {name}"] = args.images / timed(lambda m=model: [m.encode_pixels(batch) for batch in pixels])[0]
            seconds, summary = timed(lambda m=model, n=name: build_index(BuildPlan(
                [photos], Path(folder) / f"index-{n}", model=m, batch_size=args.batch_size, precision=n, progress=False)))
            assert summary.added == args.images, summary
            rates[f"index {name}"] = args.images / seconds
        naive = timed(lambda: [fp32.encode_pixels(fp32.preprocess(Image.open(p).convert("RGB")).unsqueeze(0)) for p in paths])[0]
        rates["naive"] = args.images / naive

    dtype = str(fast.dtype).removeprefix("torch.")
    build = f"{default_workers()} decode workers, batch {args.batch_size}"
    rows = [
        ["naive loop: full decode, batch of one, float32", rates["naive"], "", 1.0],
        ["model only, float32 (pre-decoded batches)", rates["model fp32"], 1.0, rates["model fp32"] / rates["naive"]],
        [f"tusou index --precision fp32{'' if 'index auto' in rates else ' (= auto on this CPU)'} ({build})", rates["index fp32"], rates["index fp32"] / rates["model fp32"],
         rates["index fp32"] / rates["naive"]],
    ]
    if "index auto" in rates:
        rows += [
            [f"model only, {dtype} (pre-decoded batches)", rates["model auto"], 1.0, rates["model auto"] / rates["naive"]],
            [f"tusou index, default --precision auto = {dtype} ({build})", rates["index auto"],
             rates["index auto"] / rates["model auto"], rates["index auto"] / rates["naive"]],
        ]
    notes = [f"{args.images} JPEGs of {PHOTO_SIZE[0]}×{PHOTO_SIZE[1]}; {MODEL} image tower ({size} px) with random weights, CPU. "
             "of model-only = images/s ÷ the model alone in the same precision on the same pre-decoded batches. "
             f"Machine: {machine()}."]
    print(table("Build throughput", ["path", "images/s", "of model-only", "vs naive"], rows, notes))
    print(table("Decoding one photo", ["decode", "ms / image", "speed-up"], decode_rows))


if __name__ == "__main__":
    main()
