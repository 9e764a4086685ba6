"""Chinese-CLIP's dataset layout, read and written exactly as Chinese-CLIP does.

`{split}_imgs.tsv`: `image_id<TAB>base64(image bytes)` per line (URL-safe alphabet as
Chinese-CLIP writes it; the standard alphabet is accepted too).
`{split}_texts.jsonl`: `{"text_id": int, "text": str, "image_ids": [int, ...]}` per line,
`image_ids` listing every image of the split the text describes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import TusouError


@dataclass(frozen=True)
class Caption:
    text_id: int
    text: str
    image_ids: tuple[int, ...]


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    return root / f"{split}_imgs.tsv", root / f"{split}_texts.jsonl"


def encode_image_bytes(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def decode_image_bytes(text: str) -> bytes:
    """Either base64 alphabet; padding may be missing."""
    text = text.strip()
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)


def read_images(path: Path) -> Iterator[tuple[int, bytes]]:
    """(image_id, encoded image bytes) per line; a malformed line names file and line number."""
    _require(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            try:
                if len(fields) != 2:
                    raise ValueError(f"expected image_id<TAB>base64, found {len(fields)} fields")
                yield int(fields[0]), decode_image_bytes(fields[1])
            except (ValueError, binascii.Error) as exc:
                raise TusouError(f"{path} line {number}: {exc}") from None


def read_captions(path: Path) -> list[Caption]:
    _require(path)
    captions = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ids = row["image_ids"]
                if not isinstance(row["text"], str) or not isinstance(ids, list):
                    raise ValueError("text must be a string and image_ids a list")
                captions.append(Caption(int(row["text_id"]), row["text"], tuple(int(i) for i in ids)))
            except json.JSONDecodeError as exc:
                raise TusouError(f"{path} line {number}: not JSON ({exc.msg})") from None
            except KeyError as exc:
                raise TusouError(f"{path} line {number}: missing field {exc}") from None
            except (TypeError, ValueError) as exc:
                raise TusouError(f"{path} line {number}: {exc}") from None
    return captions


def write_split(root: Path, split: str, images: Iterable[tuple[int, bytes]], captions: Iterable[Caption]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    images_path, texts_path = split_paths(root, split)
    with open(images_path, "w", encoding="utf-8") as handle:
        for image_id, data in images:
            handle.write(f"{image_id}\t{encode_image_bytes(data)}\n")
    with open(texts_path, "w", encoding="utf-8") as handle:
        for caption in captions:
            row = {"text_id": caption.text_id, "text": caption.text, "image_ids": list(caption.image_ids)}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _require(path: Path) -> None:
    if not path.is_file():
        raise TusouError(f"missing dataset file {path}")
