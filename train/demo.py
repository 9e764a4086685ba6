"""The `demo` model: generate the synthetic set, train, export into the package, measure.

    python -m train.demo train      # about 14 minutes on 2 CPU cores; writes retrieval/assets/demo/
    python -m train.demo measure    # the quality figures of the shipped weights

Everything is seeded, so a retrain reproduces the shipped weights' figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from retrieval.search.metrics import recall_at_k
from retrieval.datasets.synthetic import COLOURS, SHAPES, make_split, split_seed, write_dataset
from retrieval.images import open_image
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.models.registry import PACKAGE_ASSETS
from retrieval.search.zero_shot import label_probabilities, label_vectors
from train.contrastive import TrainConfig, checkpoint_dir, train

DEMO_DIR = PACKAGE_ASSETS / "demo"
SIZES = {"train": 32000, "valid": 1000, "test": 1000}
SEED = 0
IMAGE_SIZE = 64
CONFIG = dict(epochs=3, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_steps=100, seed=SEED)


def ensure_dataset(root: Path) -> None:
    if not (root / "test_texts.jsonl").exists():
        print(f"writing the synthetic caption set to {root} ...")
        write_dataset(root, SIZES, seed=SEED, image_size=IMAGE_SIZE, captions_per_image={"train": 2})


def measure(model: EmbeddingModel, seed: int = SEED, count: int = SIZES["test"]) -> dict[str, float]:
    """Text→image hit@1/5/10 on the held-out test split, and zero-shot colour / shape accuracy
    on its single-shape images with tusou's default Chinese templates."""
    test = make_split(count, 1, split_seed(seed, "test"), IMAGE_SIZE)
    images = model.encode_images([open_image(data) for data in test.images], batch_size=256)
    texts = model.encode_texts([c.text for c in test.captions], batch_size=256)
    recalls = recall_at_k(texts, images, [set(c.image_ids) for c in test.captions])
    figures = {f"text_to_image_R@{k}": round(v, 4) for k, v in recalls.items()}
    single = [i for i, scene in enumerate(test.scenes) if scene.layout == "single"]
    for name, labels, truth in (
        ("colour", [c for c in COLOURS], lambda s: s.shapes[0].colour),
        ("shape", list(SHAPES), lambda s: s.shapes[0].kind),
    ):
        probabilities = label_probabilities(model, images[single], label_vectors(model, labels))
        predicted = [labels[row.argmax()] for row in probabilities]
        correct = sum(p == truth(test.scenes[i]) for p, i in zip(predicted, single))
        figures[f"zero_shot_{name}_accuracy"] = round(correct / len(single), 4)
    figures["single_shape_images"] = len(single)
    return figures


def export(run_dir: Path, target: Path = DEMO_DIR) -> None:
    """Copy a run's final checkpoint into the package, in the layout the registry loads."""
    source = checkpoint_dir(run_dir)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copytree(source / "text", target / "text")
    shutil.copy(source / "image.safetensors", target / "image.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train, export and measure tusou's demo model.")
    parser.add_argument("action", choices=["train", "measure"])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"), help="synthetic set (written if missing)")
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="training output; re-running resumes")
    parser.add_argument("--export", type=Path, default=DEMO_DIR, help="where the weights go (default: the package)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.action == "train":
        ensure_dataset(args.data)
        train(TrainConfig(model="demo", data=args.data, out=args.run, device=args.device, **CONFIG))
        export(args.run, args.export)
    model = load_model("demo", device=args.device, text_weights=args.export / "text", image_weights=args.export / "image.safetensors")
    figures = measure(model)
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    if args.action == "train":
        (args.export / "quality.json").write_text(json.dumps(figures, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main()
