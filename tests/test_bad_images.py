"""A collection full of bad and odd images: the build finishes, every valid image is
indexed exactly once (as a viewer shows it), every bad file is reported with a reason a
person can act on, and the collection itself is left exactly as it was.

The corpus is generated here (Pillow + numpy), never read from disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from indexer import BuildPlan, build_index
from tests.stored import read_back
from tests.imagegen import draw, png_bomb
from ui.cli import main as cli

NON_UTF8_NAME = b"bad\xff\xfe name.jpg"
ORIENTATION = 0x0112


@dataclass
class Corpus:
    folder: Path
    valid: dict[str, str] = field(default_factory=dict)
    """Label -> absolute path of every file that must be indexed."""
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Label -> (absolute path, text its reason must contain) of every file that must be reported."""
    upright: Image.Image | None = None
    """What the EXIF-rotated photo looks like in a viewer."""


def _upright_picture() -> Image.Image:
    """Asymmetric (no rotation or flip maps it onto itself), wider than tall."""
    image = Image.new("RGB", (120, 80), (240, 240, 230))
    pen = ImageDraw.Draw(image)
    pen.rectangle([0, 0, 40, 80], fill=(200, 20, 20))
    pen.ellipse([70, 5, 115, 35], fill=(20, 20, 200))
    pen.polygon([(50, 75), (115, 75), (115, 45)], fill=(20, 160, 20))
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


def make_corpus(folder: Path) -> Corpus:
    corpus = Corpus(folder)
    folder.mkdir(parents=True)

    def valid(label: str, name: str | Path) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus.valid[label] = str(path)
        return path

    def bad(label: str, name: str, reason: str) -> Path:
        path = folder / name
        corpus.bad[label] = (str(path), reason)
        return path

    # --- valid, if odd ---------------------------------------------------------------
    draw(1).save(valid("plain", "plain.jpg"), quality=95)
    draw(2).convert("CMYK").save(valid("cmyk", "cmyk.jpg"), quality=95)
    ramp = np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)
    Image.fromarray(ramp).save(valid("16-bit", "deep16.png"))  # 16-bit grayscale PNG
    palette = draw(3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(valid("palette+transparency", "palette_alpha.png"), transparency=0)
    frames = [draw(10 + n, size=(64, 64)) for n in range(3)]
    frames[0].save(valid("animated gif", "animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    corpus.upright = _upright_picture()
    # Orientation 6: the viewer turns the stored pixels 90° clockwise to show them upright
    stored = corpus.upright.transpose(Image.Transpose.ROTATE_90)
    valid("exif rotated", "rotated_exif.jpg").write_bytes(_jpeg_bytes(stored, exif=_exif(6)))
    Image.new("RGB", (1, 1), (200, 30, 30)).save(valid("1x1", "one_pixel.png"))
    Image.fromarray(np.tile(np.arange(10000, dtype=np.uint8)[None, :, None], (10, 1, 3))).save(
        valid("10000x10", "strip_10000x10.png")
    )
    draw(4).convert("L").save(valid("grayscale", "gray.jpg"), quality=95)
    draw(5).save(valid("chinese name", "旅行 相册/海边 日落.png"))
    draw(6).save(valid("spaces", "name with  spaces .webp"), quality=95)
    with open(os.path.join(os.fsencode(folder), NON_UTF8_NAME), "wb") as handle:
        handle.write(_jpeg_bytes(draw(7)))
    corpus.valid["non-utf-8 name"] = os.fsdecode(os.path.join(os.fsencode(folder), NON_UTF8_NAME))

    # --- bad ---------------------------------------------------------------------------
    bad("zero bytes", "empty.jpg", "empty file").write_bytes(b"")
    good_jpeg = _jpeg_bytes(draw(8, size=(160, 120)))
    bad("truncated jpeg", "truncated.jpg", "truncated").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    png = io.BytesIO()
    draw(9, size=(160, 120)).save(png, "PNG")
    bad("truncated png", "truncated.png", "truncated").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    bad("text as jpg", "notes.jpg", "not an image").write_text("这不是图片, just some notes\n", encoding="utf-8")
    png_bomb(bad("decompression bomb", "bomb.png", "too large"))
    # few pixels, but scaling its 1-pixel side up to the model's size would need gigabytes
    Image.new("RGB", (1_000_000, 1), (90, 90, 90)).save(bad("thin strip", "strip_1000000x1.png", "too long and thin"))
    os.symlink("loop_b.jpg", bad("symlink loop a", "loop_a.jpg", "symlink loop"))
    os.symlink("loop_a.jpg", bad("symlink loop b", "loop_b.jpg", "symlink loop"))
    # a folder symlink pointing at its parent: not followed, so nothing is found twice
    draw(11).save(valid("in album", "album/inside.png"))
    os.symlink("..", folder / "album" / "parent")

    locked = folder / "locked.jpg"
    draw(12).save(locked, quality=95)
    locked.chmod(0)
    if _readable(locked):  # root reads anything: then it is simply a valid image
        corpus.valid["unreadable (as root)"] = str(locked)
    else:
        corpus.bad["unreadable"] = (str(locked), "permission denied")
    return corpus


def _readable(path: Path) -> bool:
    try:
        path.open("rb").close()
    except PermissionError:
        return False
    return True


def snapshot(folder: Path) -> dict[bytes, tuple]:
    """Every entry under `folder` (bytes names, links not followed): type, size, mtime, content."""
    entries: dict[bytes, tuple] = {}
    root = os.fsencode(folder)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if os.path.islink(path):
                content: object = os.readlink(path)
            elif os.path.isdir(path):
                content = None
            else:
                try:
                    with open(path, "rb") as handle:
                        content = hashlib.sha256(handle.read()).hexdigest()
                except PermissionError:
                    content = "unreadable"
            entries[os.path.relpath(path, root)] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return entries


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """The corpus, its snapshot before any build, and one fp32 build of it."""
    root = tmp_path_factory.mktemp("bad_images")
    corpus = make_corpus(root / "collection")
    before = snapshot(corpus.folder)
    out = root / "index"
    summary = build_index(BuildPlan([corpus.folder], out, model=tiny_model, progress=False, workers=2, precision="fp32"))
    return corpus, before, out, summary


def _rows(out: Path) -> dict[str, int]:
    return {item.path: row for row, item in enumerate(read_back(out).items)}


def test_the_corpus_is_what_it_claims_to_be(built):
    corpus, _, _, _ = built
    modes = {}
    for label in ("cmyk", "16-bit", "palette+transparency", "grayscale", "animated gif", "exif rotated"):
        with Image.open(corpus.valid[label]) as image:
            modes[label] = image.mode
            if label == "palette+transparency":
                assert "transparency" in image.info
            if label == "exif rotated":
                assert image.getexif()[ORIENTATION] == 6 and image.size == (80, 120)
    assert modes == {
        "cmyk": "CMYK",
        "16-bit": "I;16",
        "palette+transparency": "P",
        "grayscale": "L",
        "animated gif": "P",
        "exif rotated": "RGB",
    }
    assert os.path.getsize(corpus.bad["zero bytes"][0]) == 0
    assert os.path.islink(corpus.bad["symlink loop a"][0]) and os.path.islink(corpus.folder / "album" / "parent")
    assert NON_UTF8_NAME in os.listdir(os.fsencode(corpus.folder))


def test_every_valid_image_is_indexed_exactly_once(built):
    corpus, _, out, summary = built
    paths = [item.path for item in read_back(out).items]
    assert sorted(paths) == sorted(corpus.valid.values()), "exactly the valid images, each once"
    assert all(os.path.isabs(path) for path in paths)
    assert summary.total == summary.added == len(corpus.valid)
    # the file whose name is not UTF-8 is stored under a path that opens it again
    assert os.path.join(os.fsencode(corpus.folder), NON_UTF8_NAME) in {os.fsencode(path) for path in paths}


def test_every_bad_file_is_reported_with_its_reason(built):
    corpus, _, _, summary = built
    reasons = {item["path"]: item["reason"] for item in summary.skipped}
    assert len(reasons) == len(summary.skipped), "each bad file is reported once"
    assert set(reasons) == {path for path, _ in corpus.bad.values()}
    for label, (path, expected) in corpus.bad.items():
        assert expected in reasons[path], f"{label}: {reasons[path]!r} does not say {expected!r}"
        assert "\n" not in reasons[path] and len(reasons[path]) < 120, f"{label}: reason is not one short line"


def test_exif_rotation_is_applied_before_embedding(built, tiny_model):
    corpus, _, out, _ = built
    stored = read_back(out)
    row = _rows(out)[corpus.valid["exif rotated"]]
    item = stored.items[row]
    assert (item.width, item.height) == corpus.upright.size == (120, 80)
    upright, sideways = tiny_model.encode_images([corpus.upright, corpus.upright.transpose(Image.Transpose.ROTATE_90)])
    assert cosine(stored.embeddings[row], upright) > 0.999
    assert cosine(stored.embeddings[row], sideways) < 0.999, "the test picture must tell rotations apart"


def test_odd_formats_are_embedded_as_a_viewer_shows_them(built, tiny_model):
    corpus, _, out, _ = built
    stored = read_back(out)
    rows = _rows(out)

    def vector(label: str) -> np.ndarray:
        return stored.embeddings[rows[corpus.valid[label]]]

    items = {item.path: item for item in stored.items}
    assert (items[corpus.valid["1x1"]].width, items[corpus.valid["1x1"]].height) == (1, 1)
    assert (items[corpus.valid["10000x10"]].width, items[corpus.valid["10000x10"]].height) == (10000, 10)
    assert (items[corpus.valid["16-bit"]].width, items[corpus.valid["16-bit"]].height) == (64, 48)
    # CMYK: the colours of the RGB original, not inverted ones
    cmyk_as_rgb = Image.open(corpus.valid["cmyk"]).convert("RGB")
    assert cosine(vector("cmyk"), tiny_model.encode_images([cmyk_as_rgb])[0]) > 0.999
    assert cosine(vector("cmyk"), tiny_model.encode_images([draw(2)])[0]) > 0.99
    # an animated GIF is its first frame
    with Image.open(corpus.valid["animated gif"]) as gif:
        assert gif.n_frames == 3
        first = gif.convert("RGB")
        gif.seek(1)
        second = gif.convert("RGB")
    assert cosine(vector("animated gif"), tiny_model.encode_images([first])[0]) > 0.999
    assert cosine(vector("animated gif"), tiny_model.encode_images([second])[0]) < 0.999
    # 16-bit samples are scaled to 8 bits, not clipped to white
    ramp = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64) / 257).round().astype(np.uint8)).convert("RGB")
    assert cosine(vector("16-bit"), tiny_model.encode_images([ramp])[0]) > 0.999
    # transparency is flattened onto white
    with Image.open(corpus.valid["palette+transparency"]) as palette:
        rgba = palette.convert("RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))
    assert cosine(vector("palette+transparency"), tiny_model.encode_images([white])[0]) > 0.999


def test_rerun_embeds_nothing_and_reports_the_same(built, tiny_model):
    corpus, before, out, first = built
    generation = read_back(out).generation
    again = build_index(BuildPlan([corpus.folder], out, model=tiny_model, progress=False, workers=2, precision="fp32"))
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, len(corpus.valid))
    assert sorted(again.skipped, key=str) == sorted(first.skipped, key=str)
    assert read_back(out).generation == generation, "nothing changed, nothing rewritten"
    assert snapshot(corpus.folder) == before


def test_the_collection_is_left_untouched(built):
    corpus, before, out, _ = built
    assert snapshot(corpus.folder) == before
    assert sorted(os.listdir(corpus.folder.parent)) == ["collection", "index"], "nothing written beside the index"
    assert not any(name.startswith("staging") for name in os.listdir(out))


def test_cli_reports_the_corpus_as_json_and_text(built, tmp_path, capsys):
    corpus, before, _, api = built
    assert cli(["index", str(corpus.folder), "--out", str(tmp_path / "json"), "--model", "test-tiny", "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    summary = json.loads(printed[0])
    assert summary["total"] == summary["added"] == len(corpus.valid)
    assert {item["path"]: item["reason"] for item in summary["skipped"]} == {
        item["path"]: item["reason"] for item in api.skipped
    }
    assert sorted(item.path for item in read_back(tmp_path / "json").items) == sorted(corpus.valid.values())

    # the text output prints every skipped file, and a second run over the same corpus
    assert cli(["index", str(corpus.folder), "--out", str(tmp_path / "json"), "--model", "test-tiny"]) == 0
    output = capsys.readouterr()
    assert f"unchanged {len(corpus.valid)}, skipped {len(corpus.bad)}; embedded 0)" in output.out
    for path, reason in corpus.bad.values():
        assert path in output.err and reason in output.err
    assert snapshot(corpus.folder) == before


def test_unreadable_file_is_reported_as_permission_denied(built):
    corpus, _, _, summary = built
    if os.geteuid() == 0:
        pytest.skip("running as root, which can read a file without read permission")
    path, _ = corpus.bad["unreadable"]
    assert {item["path"]: item["reason"] for item in summary.skipped}[path] == "permission denied"


def test_a_pipe_named_like_an_image_is_reported_not_read(tmp_path, tiny_model):
    """Reading a FIFO blocks until someone writes to it: the build must not even open it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    draw(1).save(folder / "photo.png")
    os.mkfifo(folder / "pipe.jpg")
    summary = build_index(BuildPlan([folder], tmp_path / "index", model=tiny_model, progress=False, workers=0))
    assert summary.total == 1
    assert summary.skipped == [{"path": str(folder / "pipe.jpg"), "reason": "not a regular file (a pipe, socket or device)"}]


def _terminal_streams(monkeypatch) -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    """stdout and stderr as Python opens them for a UTF-8 terminal: strict, and backslashreplace."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True)
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return out, err


def _folder_with_a_broken_non_utf8_name(folder: Path) -> bytes:
    folder.mkdir()
    draw(1).save(folder / "photo.png")
    broken = os.path.join(os.fsencode(folder), b"broken\xfe.png")
    with open(broken, "wb") as handle:
        handle.write(b"not a PNG")
    return broken


def test_cli_text_output_prints_a_non_utf8_name_it_could_not_index(tmp_path, monkeypatch):
    broken = _folder_with_a_broken_non_utf8_name(tmp_path / "photos")
    out, err = _terminal_streams(monkeypatch)
    assert cli(["index", str(tmp_path / "photos"), "--out", str(tmp_path / "index"), "--model", "test-tiny"]) == 0
    printed = err.buffer.getvalue().decode("utf-8")
    assert f"skipped {os.fsdecode(broken)}: not an image".encode("utf-8", "backslashreplace").decode() in printed
    assert "1 images (added 1," in out.buffer.getvalue().decode("utf-8")


def test_cli_json_output_prints_a_non_utf8_name_it_could_not_index(tmp_path, monkeypatch):
    broken = _folder_with_a_broken_non_utf8_name(tmp_path / "photos")
    out, _ = _terminal_streams(monkeypatch)
    assert cli(["index", str(tmp_path / "photos"), "--out", str(tmp_path / "index"), "--model", "test-tiny", "--json"]) == 0
    summary = json.loads(out.buffer.getvalue().decode("utf-8"))
    assert len(summary["skipped"]) == 1 and os.fsencode(summary["skipped"][0]["path"]) == broken
