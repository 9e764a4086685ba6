"""A synthetic Chinese image–caption set: coloured shapes drawn with Pillow, captioned in Chinese.

Every image is drawn from a `Scene` (background, one or more shapes with colour, size and
position). Every caption is rendered from a `Description`, which says which facts it
mentions; a caption's `image_ids` are all images of its split whose scene satisfies its
description, so recall is scored fairly when captions repeat or say little. Deterministic
for a seed; written in Chinese-CLIP's layout so every tool reads it like a real dataset.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from retrieval.datasets.cnclip_layout import Caption, write_split

COLOURS: dict[str, tuple[int, int, int]] = {
    "红色": (220, 30, 30),
    "橙色": (245, 140, 20),
    "黄色": (240, 215, 30),
    "绿色": (40, 170, 60),
    "蓝色": (30, 80, 220),
    "紫色": (140, 50, 190),
    "粉色": (250, 150, 200),
    "黑色": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "白色": (250, 250, 250),
    "灰色": (150, 150, 150),
    "黄色": (250, 235, 140),
    "蓝色": (150, 190, 250),
    "绿色": (170, 225, 170),
}
SHAPES = ("圆形", "正方形", "三角形", "星形", "菱形", "十字形")
SIZES = ("大", "小")
POSITIONS: dict[str, tuple[float, float]] = {
    "左边": (0.28, 0.5),
    "右边": (0.72, 0.5),
    "上方": (0.5, 0.28),
    "下方": (0.5, 0.72),
    "中间": (0.5, 0.5),
}
NUMERALS = {1: "一", 2: "两", 3: "三"}
PHOTO_TEMPLATES = ("一张{}的照片。", "一张{}的图片。", "{}的照片。", "这是{}。", "图中是{}。")


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str = "小"
    position: str = "中间"


@dataclass(frozen=True)
class Scene:
    """`layout`: single (one shape), pair-h / pair-v (two different shapes side by side /
    one above the other, in that order), group (two or three identical shapes)."""

    layout: str
    background: str
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Description:
    """What a caption says; None means the caption does not say it."""

    layout: str  # single | pair-h | pair-v | pair (either arrangement) | group
    parts: tuple[tuple[str | None, str | None], ...]  # (colour, kind) per shape, in order
    background: str | None = None
    size: str | None = None
    position: str | None = None

    def key(self) -> tuple:
        """The index key of scenes that can satisfy this description (before the optional facts)."""
        if self.layout == "single":
            return ("single",)
        if self.layout == "group":
            return ("group", len(self.parts), self.parts[0])
        return ("pair", frozenset(self.parts))

    def matches(self, scene: Scene) -> bool:
        if self.background and scene.background != self.background:
            return False
        if self.layout == "single":
            (colour, kind), shape = self.parts[0], scene.shapes[0]
            return (
                scene.layout == "single"
                and colour in (None, shape.colour)
                and kind in (None, shape.kind)
                and self.size in (None, shape.size)
                and self.position in (None, shape.position)
            )
        parts = tuple((s.colour, s.kind) for s in scene.shapes)
        if self.layout == "group":
            return scene.layout == "group" and parts == self.parts
        if self.layout == "pair":
            return scene.layout.startswith("pair") and sorted(parts) == sorted(self.parts)
        return scene.layout == self.layout and parts == self.parts


# ---------------------------------------------------------------- scenes and drawing


def random_scene(rng: random.Random) -> Scene:
    background = rng.choice(list(BACKGROUNDS))
    colours = [c for c in COLOURS if c != background]
    layout = rng.choices(["single", "pair-h", "pair-v", "group"], weights=[6, 2, 1, 2])[0]
    if layout == "single":
        shape = Shape(rng.choice(SHAPES), rng.choice(colours), rng.choice(SIZES), rng.choice(list(POSITIONS)))
        return Scene(layout, background, (shape,))
    if layout == "group":
        shape = Shape(rng.choice(SHAPES), rng.choice(colours))
        return Scene(layout, background, (shape,) * rng.choice([2, 3]))
    first = (rng.choice(colours), rng.choice(SHAPES))
    second = first
    while second == first:
        second = (rng.choice(colours), rng.choice(SHAPES))
    return Scene(layout, background, tuple(Shape(kind, colour) for colour, kind in (first, second)))


def draw_scene(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Render with small random jitter of place, size and rotation, so no two images are equal."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    for (cx, cy), radius, shape in zip(_placements(scene, rng), _radii(scene), scene.shapes):
        cx, cy = (min(max(c, radius + 0.02), 0.98 - radius) for c in (cx, cy))  # keep the shape inside
        jitter = size * 0.03
        centre = (cx * size + rng.uniform(-jitter, jitter), cy * size + rng.uniform(-jitter, jitter))
        _draw_shape(pen, shape.kind, centre, radius * size * rng.uniform(0.9, 1.1), COLOURS[shape.colour], rng)
    return image


def _placements(scene: Scene, rng: random.Random) -> list[tuple[float, float]]:
    if scene.layout == "single":
        return [POSITIONS[scene.shapes[0].position]]
    if scene.layout == "pair-h":
        return [(0.27, 0.5), (0.73, 0.5)]
    if scene.layout == "pair-v":
        return [(0.5, 0.27), (0.5, 0.73)]
    slots = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.5)]
    return rng.sample(slots, len(scene.shapes))


def _radii(scene: Scene) -> list[float]:
    if scene.layout == "single":
        return [0.32 if scene.shapes[0].size == "大" else 0.2]
    return [0.2 if scene.layout.startswith("pair") else 0.17] * len(scene.shapes)


def _draw_shape(pen: ImageDraw.ImageDraw, kind: str, centre: tuple[float, float], r: float, colour, rng) -> None:
    cx, cy = centre
    turn = rng.uniform(-0.15, 0.15)

    def polygon(points: list[tuple[float, float]]) -> None:
        pen.polygon([(cx + x * math.cos(turn) - y * math.sin(turn), cy + x * math.sin(turn) + y * math.cos(turn)) for x, y in points], fill=colour)

    if kind == "圆形":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "正方形":
        s = r * 0.85
        polygon([(-s, -s), (s, -s), (s, s), (-s, s)])
    elif kind == "三角形":
        polygon([(0, -r), (r * 0.95, r * 0.7), (-r * 0.95, r * 0.7)])
    elif kind == "菱形":
        polygon([(0, -r), (r * 0.65, 0), (0, r), (-r * 0.65, 0)])
    elif kind == "星形":
        polygon([(r * (1 if i % 2 == 0 else 0.42) * math.sin(i * math.pi / 5), -r * (1 if i % 2 == 0 else 0.42) * math.cos(i * math.pi / 5)) for i in range(10)])
    elif kind == "十字形":
        a, b = r, r * 0.33
        polygon([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)])
    else:
        raise ValueError(kind)


# ---------------------------------------------------------------- captions


def describe(scene: Scene, rng: random.Random) -> Description:
    """Pick which facts of `scene` a caption mentions."""
    background = scene.background if rng.random() < 0.35 else None
    if scene.layout == "single":
        shape = scene.shapes[0]
        roll = rng.random()
        colour = None if roll < 0.1 else shape.colour
        kind = None if 0.1 <= roll < 0.35 else shape.kind
        partial = colour is None or kind is None
        return Description(
            "single",
            ((colour, kind),),
            background=None if partial else background,
            size=shape.size if not partial and rng.random() < 0.35 else None,
            position=shape.position if not partial and rng.random() < 0.35 else None,
        )
    parts = tuple((s.colour, s.kind) for s in scene.shapes)
    if scene.layout == "group":
        return Description("group", parts, background=background)
    layout = "pair" if rng.random() < 0.3 else scene.layout
    return Description(layout, parts, background=background)


def _noun(colour: str | None, kind: str | None, size: str | None, rng: random.Random) -> str:
    if colour and kind:
        if size:
            return rng.choice([f"{size}的{colour}{kind}", f"{colour}的{size}{kind}"])
        return rng.choice([f"{colour}的{kind}", f"{colour}{kind}"])
    if kind:
        return f"{size}{kind}" if size else kind
    return rng.choice([f"{colour}的图形", f"{colour}的形状"])


def render(description: Description, rng: random.Random) -> str:
    """Natural Chinese for a description, in one of many phrasings."""
    d = description
    if d.layout == "single":
        (colour, kind), size = d.parts[0], d.size
        if colour is None or kind is None or (d.background is None and d.position is None and rng.random() < 0.3):
            if rng.random() < 0.6:
                return rng.choice(PHOTO_TEMPLATES).format(f"{size + '的' if size else ''}{colour or ''}{kind or ''}")
            return _noun(colour, kind, size, rng)
        thing = "一个" + _noun(colour, kind, size, rng)
        if d.position:
            where = d.position
            body = rng.choice([f"{where}有{thing}", f"{thing}在{where}", f"画面{where}是{thing}"])
        else:
            body = rng.choice([thing, f"画面中有{thing}", f"只有{thing}"])
    elif d.layout == "group":
        colour, kind = d.parts[0]
        body = rng.choice(["", "画面中有", "有"]) + f"{NUMERALS[len(d.parts)]}个{_noun(colour, kind, None, rng)}"
    else:
        a, b = (_noun(c, k, None, rng) for c, k in d.parts)
        if d.layout == "pair":
            body = rng.choice([f"一个{a}和一个{b}", f"{a}和{b}", f"一个{b}和一个{a}"])
        elif d.layout == "pair-h":
            body = rng.choice([f"左边一个{a}，右边一个{b}", f"左边是{a}，右边是{b}", f"{a}在{b}的左边", f"{b}在{a}的右边"])
        else:
            body = rng.choice([f"上面一个{a}，下面一个{b}", f"上面是{a}，下面是{b}", f"{a}在{b}的上面", f"{b}在{a}的下面"])
    if d.background:
        bg = d.background
        joined = f"有{body.removeprefix('有')}" if body.startswith(("有", "一", "两", "三")) else f"，{body}"
        body = rng.choice([f"{bg}背景上{joined}", f"{body}，背景是{bg}的", f"在{bg}的背景上，{body}"])
    return body


def vocabulary_text() -> str:
    """Every character a caption can contain (for the demo model's vocabulary)."""
    words = [*COLOURS, *BACKGROUNDS, *SHAPES, *SIZES, *POSITIONS, *NUMERALS.values(), *PHOTO_TEMPLATES]
    phrasing = "一个的图形形状有在画面是中只两三个和左边右边上面下面背景上，。的照片图片这是图中"
    return "".join(words) + phrasing


# ---------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    scenes: list[Scene]
    images: list[bytes]
    captions: list[Caption]


def make_split(count: int, captions_per_image: int, seed: int, image_size: int, first_text_id: int = 0) -> Split:
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    images = [_encode(draw_scene(scene, image_size, rng)) for scene in scenes]
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for image_id, scene in enumerate(scenes):
        for key in _keys(scene):
            by_key[key].append(image_id)
    captions = []
    for image_id, scene in enumerate(scenes):
        for _ in range(captions_per_image):
            description = describe(scene, rng)
            matching = tuple(i for i in by_key[description.key()] if description.matches(scenes[i]))
            assert image_id in matching
            captions.append(Caption(first_text_id + len(captions), render(description, rng), matching))
    return Split(scenes, images, captions)


def caption_texts(count: int, seed: int) -> list[str]:
    """`count` captions of random scenes, with no image drawn: text for distilling a student (train.distill)."""
    rng = random.Random(seed)
    return [render(describe(scene, rng), rng) for scene in (random_scene(rng) for _ in range(count))]


def _keys(scene: Scene) -> Iterator[tuple]:
    parts = tuple((s.colour, s.kind) for s in scene.shapes)
    if scene.layout == "single":
        yield ("single",)
    elif scene.layout == "group":
        yield ("group", len(parts), parts[0])
    else:
        yield ("pair", frozenset(parts))


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


SPLITS = {"train": 0, "valid": 1, "test": 2, "distill": 3}


def split_seed(seed: int, split: str) -> int:
    return seed * 1000 + SPLITS[split]


def write_dataset(
    root: Path, sizes: dict[str, int], seed: int = 0, image_size: int = 64, captions_per_image: dict[str, int] | None = None
) -> None:
    """Write each split in Chinese-CLIP's layout; splits use disjoint seeds."""
    text_id = 0
    for split, count in sizes.items():
        per_image = (captions_per_image or {}).get(split, 1)
        data = make_split(count, per_image, split_seed(seed, split), image_size, first_text_id=text_id)
        write_split(root, split, enumerate(data.images), data.captions)
        text_id += len(data.captions)


def write_collection(folder: Path, count: int, seed: int = 7, image_size: int = 256) -> list[dict]:
    """A folder of `count` PNG images with a `captions.jsonl` of what each shows (for demos)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for number in range(count):
        scene = random_scene(rng)
        path = folder / f"shape_{number:04d}.png"
        draw_scene(scene, image_size, rng).save(path)
        rows.append({
            "file": path.name,
            "caption": render(describe(scene, rng), rng),
            "layout": scene.layout,
            "background": scene.background,
            "shapes": [[shape.colour, shape.kind] for shape in scene.shapes],
        })
    (folder / "captions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows
