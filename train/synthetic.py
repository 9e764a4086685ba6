"""`python -m train.synthetic --out DIR`: write the synthetic caption set (retrieval.datasets.synthetic)
to disk in Chinese-CLIP's layout, for training and evaluation runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.datasets.synthetic import write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic Chinese caption set in Chinese-CLIP's layout.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=32000)
    parser.add_argument("--valid", type=int, default=1000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--train-captions-per-image", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    write_dataset(args.out, sizes, args.seed, args.image_size, {"train": args.train_captions_per_image})


if __name__ == "__main__":
    main()
