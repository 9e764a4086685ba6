"""Reading text in images with the real RapidOCR models, on pictures this module draws (once)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from eval.fonts import cjk_faces
from retrieval.errors import TusouError
from retrieval.ocr import engine
from retrieval.ocr.engine import MAX_SIDE, read_text
from retrieval.search.normalise import normalise
from tests.test_cli import json_lines, run

NAME, PHONE = "老王火锅店", "电话 010-8888 6666"


def sign(scale: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A shop sign, `scale` times 640x240, and where its name is drawn."""
    face = next(f for f in cjk_faces() if f.family == "Noto Sans CJK" and f.script == "SC")
    image = Image.new("RGB", (640 * scale, 240 * scale), (250, 250, 245))
    pen = ImageDraw.Draw(image)
    pen.text((30 * scale, 40 * scale), NAME, font=face.at(48 * scale), fill=(20, 20, 20))
    pen.text((30 * scale, 130 * scale), PHONE, font=face.at(40 * scale), fill=(180, 30, 30))
    return image, pen.textbbox((30 * scale, 40 * scale), NAME, font=face.at(48 * scale))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ocr")
    small, _ = sign(1)
    small.rotate(3, expand=True, fillcolor=(250, 250, 245)).save(folder / "sign.png")
    sign(4)[0].save(folder / "large.jpg", quality=90)  # 2560 px wide: read shrunk to MAX_SIDE
    Image.linear_gradient("L").convert("RGB").resize((400, 300)).save(folder / "plain.png")
    Image.new("RGB", (4000, 3), "white").save(folder / "strip.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a jpeg")
    return {path.stem: path for path in folder.iterdir()}


def test_a_drawn_sign_is_read(pictures):
    result = read_text(pictures["sign"])
    assert result.reason is None
    read = {normalise(line.text): line for line in result.lines}
    assert normalise(NAME) in read and normalise(PHONE) in read
    assert all(line.confidence > 0.8 and len(line.box) == 4 for line in result.lines)


def test_a_large_image_is_read_shrunk_and_its_boxes_are_in_its_own_pixels(pictures):
    with Image.open(pictures["large"]) as image:
        assert max(image.size) > MAX_SIDE
    left, top, right, bottom = sign(4)[1]
    (name,) = [line for line in read_text(pictures["large"]).lines if normalise(line.text) == normalise(NAME)]
    xs, ys = [x for x, _ in name.box], [y for _, y in name.box]
    assert abs(min(xs) - left) < 40 and abs(max(xs) - right) < 40  # within a few pixels of the shrunk image
    assert min(ys) < (top + bottom) / 2 < max(ys)


def test_what_cannot_be_read_gives_no_lines_and_a_reason(pictures, tmp_path):
    broken = read_text(pictures["broken"])
    assert broken.lines == () and broken.reason.startswith("broken image")
    assert read_text(tmp_path / "missing.png").reason == "file not found"
    for clean in ("plain", "strip"):  # no text; a 4000x3 strip is padded, not blown up to gigabytes
        assert read_text(pictures[clean]) == engine.OcrResult()


def test_ocr_command_prints_lines_and_json(pictures, capsys):
    code, out, _ = run(capsys, "ocr", pictures["sign"], pictures["plain"])
    assert code == 0
    assert out.splitlines()[0] == str(pictures["sign"]) and NAME in out and "(no text found)" in out
    code, out, _ = run(capsys, "ocr", pictures["sign"], "--json")
    (shown,) = json_lines(out)
    assert shown["image"] == str(pictures["sign"]) and {normalise(line["text"]) for line in shown["lines"]} >= {normalise(NAME)}
    for line in shown["lines"]:
        assert set(line) == {"text", "confidence", "box"} and len(line["box"]) == 4 and all(len(xy) == 2 for xy in line["box"])


@pytest.mark.parametrize("name, reason", [("missing.png", "file not found"), ("broken", "broken image")])
def test_ocr_command_errors_are_one_line(pictures, tmp_path, capsys, name, reason):
    image = pictures.get(name, tmp_path / name)
    code, out, err = run(capsys, "ocr", image)
    assert code == 2 and out == ""
    assert err.startswith(f"tusou: error: cannot use image {image}: {reason}") and err.count("\n") == 1


def test_without_the_ocr_packages_it_is_one_line_naming_the_fix(pictures, monkeypatch, capsys):
    engine.ocr_engine.cache_clear()
    monkeypatch.setitem(sys.modules, "rapidocr", None)  # as if `tusou[ocr]` were not installed
    try:
        with pytest.raises(TusouError, match=r"needs rapidocr and onnxruntime .*pip install 'tusou\[ocr\]'"):
            read_text(pictures["sign"])
        code, _, err = run(capsys, "ocr", pictures["sign"])
        assert code == 2 and err.count("\n") == 1 and "pip install 'tusou[ocr]'" in err
    finally:
        engine.ocr_engine.cache_clear()
