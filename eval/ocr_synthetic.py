"""The OCR benchmark set: pictures with known text, photos with none, and queries with their answers.

`generate(folder, count, seed)` draws `count` pictures, the same ones for the same seed on any
machine: posters, shop signs, chat screenshots, receipts and memes (eval.ocr_scenes) in Noto Sans
and Serif CJK, 14-72 px, a fifth of them in traditional characters (Taiwan's forms, OpenCC's s2tw:
麵 and 吃 as signs write them, not the dictionary's 麪 and 喫); turned up to ±15°, blurred
now and then, saved as JPEG of quality 40-95 (screenshots often PNG). A share are text-free
distractors: real photos that ship inside gradio (a dependency of tusou), cropped, flipped and
recoloured. Then the queries, from the text drawn:

- `exact`: a piece of 3-8 characters of a line, as a user types it (no punctuation or spaces);
- `short`: one or two characters (the rarest in the set, so the answer means something);
- `traditional`: the piece in the other script than drawn (traditional for simplified, and back);
- `typo`: a piece of 4-8 characters with one character substituted, inserted or deleted.

Each query's answers are every picture whose drawn text (its simplified source, folded without
OpenCC, so the truth does not lean on the code under test) holds the intended piece.

Files: `images/NNNN-scene.jpg|png`, `images.jsonl` (one picture a line: its lines as drawn, size and
face of each) and `queries.jsonl` (query, kind, target, answers, and the size and scene of its source).
"""

from __future__ import annotations

import argparse
import json
import random
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image, ImageFilter, ImageOps

from eval.fonts import cjk_faces
from eval.ocr_scenes import SCENES, DrawnLine, Pen
from retrieval.errors import TusouError

PHOTOS = ("media_assets/images/cheetah.jpg", "media_assets/images/cheetah1.jpg", "media_assets/images/groot.jpeg",
          "media_assets/images/lion.jpg", "media_assets/images/tower.jpg", "test_data/cheetah2.jpg")
"""Text-free photos inside the gradio package (those present are used)."""
DISTRACTORS = 0.2
TRADITIONAL = 0.2
TYPO_SHORTEST = 4
"""A typo query has at least this many characters, the fewest that are forgiven an edit (as
retrieval.search.text_match.FUZZY_FROM: written here, so that the truth does not lean on the code it tests)."""


@dataclass
class Picture:
    name: str
    scene: str
    lines: list[DrawnLine] = field(default_factory=list)
    traditional: bool = False

    @property
    def keys(self) -> list[str]:
        return [fold(line.source) for line in self.lines]


def fold(text: str) -> str:
    """The ground truth's own folding: NFKC, case folded, letters, marks and digits only (no OpenCC)."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if unicodedata.category(c)[0] in "LMN")


def photos() -> list[Image.Image]:
    found = [resources.files("gradio") / name for name in PHOTOS]
    images = [Image.open(path).convert("RGB") for path in found if path.is_file()]
    if not images:
        raise TusouError("the OCR benchmark's distractors are the photos inside gradio's package: none found (pip install gradio)")
    return images


def generate(folder: Path, count: int = 200, seed: int = 0, distractors: float = DISTRACTORS) -> tuple[list[Picture], list[dict]]:
    """Draw the set into `folder` (created) and write its truth; returns the pictures and the queries."""
    faces, library = cjk_faces(), photos()
    import opencc

    to_traditional, kinds = opencc.OpenCC("s2tw").convert, list(SCENES)  # Taiwan's forms: 麵, 吃, as signs show them
    (folder / "images").mkdir(parents=True, exist_ok=True)
    pictures = []
    for number in range(count):
        rng = random.Random(f"{seed}:{number}")  # each picture its own stream: the set grows without changing
        if rng.random() < distractors:
            pictures.append(_distractor(folder, number, rng, library))
            continue
        scene = kinds[sum(1 for p in pictures if p.lines) % len(kinds)]  # the scenes in turn, over the pictures with text
        draw, sizes = SCENES[scene]
        traditional = rng.random() < TRADITIONAL
        pen = Pen(Image.new("RGB", rng.choice(sizes), "white"), rng, [f for f in faces if f.script == ("TC" if traditional else "SC")],
                  to_traditional if traditional else None)
        draw(pen, rng, rng.choice(library))
        picture = Picture(_save(folder, number, scene, _degraded(pen.image, rng), rng, png=scene == "chat"), scene, pen.lines, traditional)
        pictures.append(picture)
    queries = make_queries(pictures, random.Random(f"{seed}:queries"), to_traditional)
    _write_jsonl(folder / "images.jsonl", ({**asdict(p), "keys": p.keys} for p in pictures))
    _write_jsonl(folder / "queries.jsonl", queries)
    return pictures, queries


def _degraded(image: Image.Image, rng: random.Random) -> Image.Image:
    """Turned by up to 15° (most pictures), now and then blurred."""
    if rng.random() < 0.7:
        image = image.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC, expand=True, fillcolor=image.getpixel((0, 0)))
    radius = rng.choice((0, 0, 0, 0.6, 1.0, 1.5))
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius else image


def _save(folder: Path, number: int, scene: str, image: Image.Image, rng: random.Random, png: bool = False) -> str:
    name = f"{number:04d}-{scene}.{'png' if png and rng.random() < 0.5 else 'jpg'}"
    image.save(folder / "images" / name, quality=rng.randint(40, 95)) if name.endswith("jpg") else image.save(folder / "images" / name)
    return name


def _distractor(folder: Path, number: int, rng: random.Random, library: list[Image.Image]) -> Picture:
    photo = rng.choice(library)
    share = rng.uniform(0.7, 1.0)
    crop = (int(photo.width * share), int(photo.height * share))
    left, top = rng.randint(0, photo.width - crop[0]), rng.randint(0, photo.height - crop[1])
    image = photo.crop((left, top, left + crop[0], top + crop[1]))
    image = ImageOps.mirror(image) if rng.random() < 0.5 else image
    longest = rng.randint(400, 1200)
    image = image.resize((max(1, image.width * longest // max(image.size)), max(1, image.height * longest // max(image.size))))
    image = Image.blend(image, ImageOps.grayscale(image).convert("RGB"), rng.uniform(0, 0.6))
    return Picture(_save(folder, number, "photo", image, rng), "photo")


def make_queries(pictures: list[Picture], rng: random.Random, to_traditional: Callable[[str], str]) -> list[dict]:
    """Up to one query of each kind per picture with text, answered by every picture holding its target."""
    texts = [(p.name, "\n".join(p.keys)) for p in pictures]
    alphabet = sorted({c for _, text in texts for c in text if "\u4e00" <= c <= "\u9fff"})

    def answers(target: str) -> list[str]:
        return [name for name, text in texts if target in text]

    queries = []
    for picture in pictures:
        lines = [(line, key) for line, key in zip(picture.lines, picture.keys) if len(key) >= 4]
        if not lines:
            continue
        line, key = rng.choice(lines)
        piece, short, spelled = _piece(key, rng, 3, 8), _rarest(key, answers, rng), _piece(key, rng, 4, 8)
        other = to_traditional(piece)
        made = [("exact", other if picture.traditional else piece, piece), ("short", short, short)]
        if other != piece:  # the piece in the script the picture is not drawn in
            made.append(("traditional", piece if picture.traditional else other, piece))
        typo = _typo(spelled, rng, alphabet)
        if not answers(typo):
            made.append(("typo", typo, spelled))
        queries += [{"query": query, "kind": kind, "target": target, "answers": answers(target),
                     "image": picture.name, "scene": picture.scene, "size": line.size} for kind, query, target in made]
    return queries


def _piece(key: str, rng: random.Random, shortest: int, longest: int) -> str:
    length = min(len(key), rng.randint(shortest, longest))
    start = rng.randint(0, len(key) - length)
    return key[start : start + length]


def _rarest(key: str, answers, rng: random.Random) -> str:
    """The one- or two-character piece of `key` found in the fewest pictures."""
    pieces = sorted({key[i : i + n] for n in (1, 2) for i in range(len(key) - n + 1)})
    rng.shuffle(pieces)
    return min(pieces, key=lambda piece: len(answers(piece)))


def _typo(piece: str, rng: random.Random, alphabet: list[str]) -> str:
    """`piece` (4+ characters) with one character substituted, inserted or deleted; deleted only from
    a piece longer than TYPO_SHORTEST, so that the query keeps the length that is forgiven an edit."""
    at = rng.randrange(len(piece))
    other = rng.choice([c for c in alphabet if c != piece[at]])
    edit = rng.choice(("substitute", "insert", "delete"))
    if edit == "substitute" or (edit == "delete" and len(piece) <= TYPO_SHORTEST):
        return piece[:at] + other + piece[at + 1 :]
    if edit == "insert":
        return piece[: max(1, at)] + other + piece[max(1, at) :]
    return piece[:at] + piece[at + 1 :]


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a file the set was written as (images.jsonl, queries.jsonl); none when it is not there."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.ocr_synthetic", description="Draw the OCR benchmark set into a folder.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pictures, queries = generate(args.folder, args.count, args.seed)
    print(f"{args.folder}: {len(pictures)} pictures ({sum(1 for p in pictures if p.lines)} with text), {len(queries)} queries")


if __name__ == "__main__":
    main()
