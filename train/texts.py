"""The texts a student is distilled on: text alone, no images (teacher learning needs none).

A source is a plain text file (one text a line), a caption file of the eval datasets' layouts
(Chinese-CLIP's `*_texts.jsonl`, Flickr30k-CN(A)'s `<imgid>#<k><TAB>caption` lines, Wukong's
`url,caption` CSV), a webdataset tar shard (its `.txt` members), or the demo's synthetic captions
(`synthetic`, or `synthetic:N` for N of them).
"""

from __future__ import annotations

import csv
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from retrieval.datasets.cnclip_layout import read_captions
from retrieval.errors import TusouError

SYNTHETIC = "synthetic"
SYNTHETIC_COUNT = 64_000
FLICKR_CNA_LINE = re.compile(r"[^\t#]+#\d+\t(.*)")
SOURCES = "a .txt file, a caption .jsonl or .csv, a webdataset .tar, or synthetic[:N]"


def read_texts(sources: Sequence[str]) -> list[str]:
    """Every distinct non-empty text of `sources`, in the order first read."""
    texts: dict[str, None] = {}
    for source in sources:
        for text in _texts_of(source):
            text = " ".join(text.split())
            if text:
                texts.setdefault(text)
    if not texts:
        raise TusouError(f"--texts {' '.join(sources)}: no text in them")
    return list(texts)


def check_source(source: str) -> str:
    """A source that can be read (an argparse type: a mistake is one line before any model loads)."""
    if _synthetic_count(source) is None and not Path(source).is_file():
        raise TusouError(f"--texts {source}: no such file ({SOURCES})")
    return source


def _synthetic_count(source: str) -> int | None:
    name, _, count = source.partition(":")
    if name != SYNTHETIC:
        return None
    if not count:
        return SYNTHETIC_COUNT
    if not count.isdigit() or int(count) < 1:
        raise TusouError(f"--texts {source}: N in synthetic:N is a positive whole number")
    return int(count)


def _texts_of(source: str) -> Iterator[str]:
    count = _synthetic_count(source)
    if count is not None:
        from retrieval.datasets.synthetic import caption_texts, split_seed

        yield from caption_texts(count, split_seed(0, "distill"))
        return
    path = Path(check_source(source))
    try:
        if path.suffix == ".jsonl":
            yield from (caption.text for caption in read_captions(path))
        elif path.suffix == ".csv":
            yield from _csv_captions(path)
        elif tarfile.is_tarfile(path):
            yield from _tar_texts(path)
        else:
            yield from _lines(path)
    except UnicodeDecodeError as exc:
        raise TusouError(f"--texts {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, tarfile.TarError) as exc:
        raise TusouError(f"--texts {path}: cannot be read ({exc})") from None


def _lines(path: Path) -> Iterator[str]:
    """One text a line; Flickr30k-CN(A)'s `<imgid>#<k><TAB>caption` lines give their caption."""
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            caption = FLICKR_CNA_LINE.fullmatch(line.rstrip("\n"))
            yield caption.group(1) if caption else line


def _csv_captions(path: Path) -> Iterator[str]:
    """The `caption` column of a CSV with a header (Wukong's release files: url,caption)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if "caption" not in [name.strip() for name in reader.fieldnames or []]:
            raise TusouError(f"--texts {path}: a CSV needs a caption column (found {reader.fieldnames})")
        for row in reader:
            yield row.get("caption") or ""


def _tar_texts(path: Path) -> Iterator[str]:
    """A webdataset shard's `.txt` members: one caption per sample."""
    with tarfile.open(path) as shard:
        for member in shard:
            if member.isfile() and member.name.endswith(".txt"):
                yield shard.extractfile(member).read().decode("utf-8")
