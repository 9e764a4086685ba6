"""Benchmark datasets in the layouts people download them in.

Each reader returns the same shape of data: images (a key and where its bytes are) and texts
(each with the keys of the images it describes), or, for zero-shot, images with a class.
A malformed file is one TusouError naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.datasets.cnclip_layout import Caption, read_captions, read_images, split_paths
from retrieval.errors import TusouError
from retrieval.images import IMAGE_EXTENSIONS, is_image_path

@dataclass
class RetrievalSet:
    """Images by integer id, and captions naming the ids of the images they describe."""

    images: dict[int, bytes | Path]
    captions: list[Caption]
    files: list[Path]
    """The dataset files read (their sizes and mtimes key the feature cache)."""
    missing: list[dict] = field(default_factory=list)
    """Rows whose image is missing or unreadable: counted and reported, never silently dropped."""


@dataclass
class ClassificationSet:
    classes: list[str]
    """Chinese class names, in label order."""
    images: list[tuple[Path, int]]
    files: list[Path]


def read_cnclip(root: Path, split: str) -> RetrievalSet:
    """Chinese-CLIP's layout: `{split}_imgs.tsv` and `{split}_texts.jsonl` (Flickr30k-CN, COCO-CN)."""
    images_path, texts_path = split_paths(root, split)
    images = dict(read_images(images_path))
    captions = read_captions(texts_path)
    for caption in captions:
        unknown = [i for i in caption.image_ids if i not in images]
        if unknown:
            raise TusouError(f"{texts_path}: text_id {caption.text_id} names image ids not in {images_path.name}: {unknown[:3]}")
    return RetrievalSet(images, captions, [images_path, texts_path])


def read_flickr_cna(root: Path, split: str) -> RetrievalSet:
    """IDEA-CCNL's Flickr30k-CN(A) layout: a caption file of `<imgid>#<k><TAB><caption>` lines
    (the `*{split}*.txt` in `root`) and the images as `<imgid>.jpg` in `root/images/` or `root`."""
    candidates = sorted(root.glob(f"*{split}*.txt"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise TusouError(f"{root}: expected one caption file matching *{split}*.txt, found {found}")
    caption_file = candidates[0]
    folder = root / "images" if (root / "images").is_dir() else root
    by_image: dict[int, list[str]] = {}
    with open(caption_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            key, sep, text = line.rstrip("\n").partition("\t")
            image_key, hash_sign, k = key.partition("#")
            if not sep or not hash_sign or not text.strip() or not image_key.strip().isdigit():
                raise TusouError(f"{caption_file} line {number}: expected <imgid>#<k><TAB><caption>")
            by_image.setdefault(int(image_key), []).append(text.strip())
    images: dict[int, bytes | Path] = {}
    missing = []
    for image_id in by_image:
        path = folder / f"{image_id}.jpg"
        if path.is_file():
            images[image_id] = path
        else:
            missing.append({"image_id": image_id, "reason": f"missing {path.name}"})
    captions: list[Caption] = []
    for image_id, texts in by_image.items():
        if image_id in images:
            captions += [Caption(len(captions) + k, text, (image_id,)) for k, text in enumerate(texts)]
    return RetrievalSet(images, captions, [caption_file], missing)


def read_wukong(root: Path, split: str = "test") -> RetrievalSet:
    """Wukong50k: the release CSV (`url,caption` header) and a folder of the fetched images.

    An image is found through img2dataset's sidecar `.json` files (their `url`), or as
    `{row:09d}.<ext>` (img2dataset's key for row `row`). Rows without a readable image are
    reported in `missing`.
    """
    csvs = sorted(root.glob("*.csv"))
    if len(csvs) != 1:
        raise TusouError(f"{root}: expected one release CSV (url,caption), found {len(csvs)}")
    by_url, by_key = _fetched_images(root)
    images: dict[int, bytes | Path] = {}
    captions, missing = [], []
    with open(csvs[0], encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"url", "caption"} <= {name.strip() for name in reader.fieldnames}:
            raise TusouError(f"{csvs[0]} line 1: expected a header with url and caption, found {reader.fieldnames}")
        for row_number, row in enumerate(reader):
            url, caption = (row.get("url") or "").strip(), (row.get("caption") or "").strip()
            if not url or not caption:
                raise TusouError(f"{csvs[0]} line {row_number + 2}: empty url or caption")
            path = by_url.get(url) or by_key.get(f"{row_number:09d}")
            if path is None:
                missing.append({"row": row_number, "url": url, "reason": "image not fetched"})
                continue
            images[row_number] = path
            captions.append(Caption(row_number, caption, (row_number,)))
    return RetrievalSet(images, captions, [csvs[0]], missing)


def _fetched_images(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    by_url: dict[str, Path] = {}
    by_key: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if is_image_path(path):
            by_key.setdefault(path.stem, path)
            sidecar = path.with_suffix(".json")
            if sidecar.is_file():
                try:
                    url = json.loads(sidecar.read_text(encoding="utf-8")).get("url")
                except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                    url = None
                if url:
                    by_url[url] = path
    return by_url, by_key


def read_imagenet_cn(root: Path, split: str = "val") -> ClassificationSet:
    """Zero-shot classification: `root/<split>/<class folder>/*.jpg` (or the class folders in
    `root`), and `root/class_names.txt` with one Chinese name per line, in sorted folder order,
    or `folder<TAB>name` lines."""
    images_root = root / split if (root / split).is_dir() else root
    folders = sorted(p for p in images_root.iterdir() if p.is_dir())
    names_file = root / "class_names.txt"
    if not names_file.is_file():
        raise TusouError(f"missing {names_file}: one Chinese class name per line, in sorted folder order")
    lines = [line.rstrip("\n") for line in names_file.read_text(encoding="utf-8").splitlines()]
    names: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise TusouError(f"{names_file} line {number}: empty class name")
        folder, tab, name = line.partition("\t")
        if tab:
            names[folder.strip()] = name.strip()
        elif number <= len(folders):
            names[folders[number - 1].name] = line.strip()
    if len(lines) != len(folders) or set(names) != {f.name for f in folders}:
        raise TusouError(f"{names_file}: {len(lines)} names for {len(folders)} class folders in {images_root}")
    images = [
        (path, label)
        for label, folder in enumerate(folders)
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return ClassificationSet([names[f.name] for f in folders], images, [names_file, *folders])


def read_templates(path: Path) -> list[str]:
    templates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, template in enumerate(templates, 1):
        if template.count("{}") != 1:
            raise TusouError(f"{path} line {number}: a template needs {{}} exactly once")
    return templates


RETRIEVAL_READERS: dict[str, dict[str, Callable[[Path, str], RetrievalSet]]] = {
    "flickr30k-cn": {"cnclip": read_cnclip, "cna": read_flickr_cna},
    "coco-cn": {"cnclip": read_cnclip},
    "wukong50k": {"csv": read_wukong},
}
DATASETS = [*RETRIEVAL_READERS, "imagenet-cn", "ocr-synthetic"]
"""ocr-synthetic: text→image search by the text in pictures (eval.ocr_search), drawn by eval.ocr_synthetic."""


def reader(dataset: str, fmt: str | None) -> Callable[[Path, str], RetrievalSet]:
    """The reader of a retrieval dataset's layout (None: its first), or a one-line error naming the layouts."""
    readers = RETRIEVAL_READERS[dataset]
    if fmt is not None and fmt not in readers:
        raise TusouError(f"--format {fmt} is not a layout of {dataset}: use one of {', '.join(readers)}")
    return readers[fmt or next(iter(readers))]
