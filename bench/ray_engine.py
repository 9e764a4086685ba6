"""The Ray engine against the local build on this machine, and a throughput estimate per GPU type.

Measured, in one run, over webdataset shards of 256-px JPEGs (img2dataset's default size):
- the per-image rate of `tusou index` and of `tusou index --engine ray` on a Ray instance of this
  machine (one actor per core), both with the shipped `demo` model: a small model is the worst case
  for the engine's own costs (moving pixels and vectors through Ray's object store). Each engine
  builds two collection sizes; the rate is the difference in images over the difference in time,
  so the start-up (the actors' model loading; Ray itself is started once, beforehand) drops out
  and is reported apart;
- read + decode + preprocess of one image at 224 px, one process: the CPU work a GPU needs per image.
Computed: the image tower's FLOPs per image (torch's FLOP counter on the real architecture), and
from them images/s per GPU type at an assumed share of each GPU's dense fp16 tensor peak.

    python -m bench.ray_engine [--images 4096] [--model taiyi-clip-l14]
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from bench.report import machine, table, timed
from indexer.build import build_index
from indexer.decode import Unit, decode_unit
from indexer.plan import BuildPlan
from indexer.ray_engine import RayOptions
from retrieval.models.model import load_model

SHARD_SIZE = 256
SIDE = 256
UTILISATION = 0.4
"""Share of the dense fp16 tensor peak a ViT-L forward in fp16 autocast keeps at batch 128 (assumed)."""
GPUS = {"T4": 65, "A10": 125, "L4": 121, "A100": 312, "H100 SXM": 989}
"""Dense fp16 tensor-core TFLOP/s from NVIDIA's data sheets."""


def write_shards(folder: Path, count: int) -> list[str]:
    """Tar shards as img2dataset writes them, of photo-like 256-px JPEGs with their captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = []
    for shard in range(0, count, SHARD_SIZE):
        path = folder / f"{shard // SHARD_SIZE:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(shard, min(count, shard + SHARD_SIZE)):
                coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)
                pixels = np.clip(np.asarray(coarse, np.float32) + rng.normal(0, 8, (SIDE, SIDE, 1)), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
                for name, data in ((f"{row:09d}.jpg", buffer.getvalue()), (f"{row:09d}.txt", f"图片 {row}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(str(path))
    return shards


def build_seconds(shards: list[str], out: Path, ray: RayOptions | None) -> float:
    """A build on one engine: local (`ray` None) or one Ray actor per CPU."""
    plan = BuildPlan(shards, out, "demo", device="cpu", index_type="flat", progress=False, ray=ray,
                     workers=os.cpu_count() if ray else None)
    seconds, summary = timed(lambda: build_index(plan))
    assert summary.embedded == summary.total, summary
    return seconds


def image_flops(name: str) -> float:
    model = load_model(name, device="cpu", pretrained=False)
    pixels = torch.zeros(1, 3, model.image_size, model.image_size)
    with FlopCounterMode(display=False) as counter:  # not inference mode: its fused attention kernel goes uncounted
        model.image_model(pixels)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--model", default="taiyi-clip-l14", help="whose image tower the GPU estimate is for")
    args = parser.parse_args()
    small = max(SHARD_SIZE, args.images // 4 // SHARD_SIZE * SHARD_SIZE)
    ray = RayOptions()
    import ray as ray_module

    ray_module.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)  # one instance for every Ray build

    with tempfile.TemporaryDirectory() as folder:
        shards = write_shards(Path(folder) / "shards", args.images)
        few = shards[: small // SHARD_SIZE]
        rows, rates = [], {}
        for label, options in (("local (tusou index)", None), (f"ray, one machine ({os.cpu_count()} actors)", ray)):
            build_seconds(few, Path(folder) / f"{label}-warm", options)  # first-touch costs (imports, page cache) out of the timings
            t_few = build_seconds(few, Path(folder) / f"{label}-few", options)
            t_all = build_seconds(shards, Path(folder) / f"{label}-all", options)
            rates[label] = (args.images - small) / (t_all - t_few)
            start_up = t_few - small / rates[label]
            rows.append([label, f"{rates[label]:.0f}", f"{start_up:.1f}", f"{t_all:.1f}"])
        baseline = rates["local (tusou index)"]
        rows = [[*row[:2], f"{rates[row[0]] / baseline:.2f}", *row[2:]] for row in rows]

        unit = Unit(shards[0], tuple(f"{row:09d}.jpg" for row in range(SHARD_SIZE)))
        preprocess = load_model(args.model, device="cpu", pretrained=False).preprocess
        seconds, decoded = timed(lambda: list(decode_unit(unit, preprocess, 224)))
        assert all(pixels is not None for _, pixels in decoded)
        decode_ms = 1000 * seconds / SHARD_SIZE
    ray_module.shutdown()

    flops = image_flops(args.model)
    print(f"machine: {machine()}\n")
    print(table(
        "The Ray engine against the local build (measured)",
        ["build", "images/s", "vs local", "start-up s", f"{args.images} images s"],
        rows,
        [f"{args.images} 256-px JPEGs in shards of {SHARD_SIZE}, `demo` model, flat index; images/s from the difference between "
         f"{small} and {args.images} images (start-up = the rest of the smaller build's time)."],
    ))
    print(table(
        f"Per GPU, {args.model} image tower (computed)",
        ["GPU", "fp16 TFLOP/s", "images/s", "decode cores", "100M images, GPU-hours"],
        [
            [gpu, peak, f"{rate:.0f}", f"{rate * decode_ms / 1000:.1f}", f"{1e8 / rate / 3600:.0f}"]
            for gpu, peak in GPUS.items()
            for rate in [peak * 1e12 * UTILISATION / flops]
        ],
        [f"{flops / 1e9:.0f} GFLOP per image (torch's FLOP counter, measured on the architecture); images/s = peak × "
         f"{UTILISATION} / FLOP (assumed utilisation); decode cores = images/s × {decode_ms:.2f} ms, the measured CPU time to "
         "read, decode and preprocess one 256-px JPEG from a shard."],
    ))


if __name__ == "__main__":
    main()
