"""`tusou index --ocr`: the text in images read by the build's decode workers with the real RapidOCR
models, into the catalog with the items it belongs to; a later --ocr reads what was not read yet."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from eval.fonts import cjk_faces
from indexer import BuildPlan, build_index
from retrieval.search.normalise import normalise
from retrieval.search.text_match import match_text
from retrieval.store.catalog import Catalog
from retrieval.store.store import CATALOG
from retrieval.store.text_lines import read_items
from tests.stored import read_back, stored_vectors
from tests.test_cli import run
from tests.test_ocr import NAME, sign

MENU = "牛肉拉面十八元"


def poster(text: str) -> Image.Image:
    face = next(f for f in cjk_faces() if f.family == "Noto Sans CJK" and f.script == "SC")
    image = Image.new("RGB", (520, 160), (240, 240, 250))
    ImageDraw.Draw(image).text((24, 40), text, font=face.at(56), fill=(10, 10, 60))
    return image


@pytest.fixture
def photos(tmp_path) -> Path:
    """A shop sign, a poster and a picture without text."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sign(1)[0].save(folder / "sign.png")
    poster(MENU).save(folder / "menu.jpg", quality=92)
    Image.linear_gradient("L").convert("RGB").resize((300, 200)).save(folder / "plain.png")
    return folder


def plan(folder: Path, out: Path, model, **options) -> BuildPlan:
    return BuildPlan([folder], out, model=model, progress=False, **({"workers": 0} | options))


def texts(out: Path) -> dict[str, set[str]]:
    """Path → the folded lines read in it, of every item read (an empty set: read, no text)."""
    catalog = Catalog(out / CATALOG)
    try:
        paths = {item.id: item.path for item, _, _ in catalog.all_items()}
        lines = catalog.db.execute("SELECT item, norm FROM ocr_lines").fetchall()
        found = {paths[item]: set() for item in read_items(catalog.db)}
        for item, norm in lines:
            found[paths[item]].add(norm)
        return {Path(path).name: norms for path, norms in found.items()}
    finally:
        catalog.close()


def matches(out: Path, query: str) -> list[str]:
    catalog = Catalog(out / CATALOG)
    try:
        paths = {item.id: Path(item.path).name for item, _, _ in catalog.all_items()}
        return [paths[match.item] for match in match_text(catalog.db, query)]
    finally:
        catalog.close()


def ocr_setting(out: Path) -> object:
    catalog = Catalog(out / CATALOG)
    try:
        return catalog.setting("ocr")
    finally:
        catalog.close()


def test_an_index_built_with_ocr_has_each_images_text_searchable(tmp_path, photos, tiny_model):
    out = tmp_path / "index"
    summary = build_index(plan(photos, out, tiny_model, ocr=True, workers=1))  # read in a decode worker process
    assert (summary.added, summary.embedded, summary.read) == (3, 3, 3)
    read = texts(out)
    assert normalise(NAME) in read["sign.png"] and normalise(MENU) in read["menu.jpg"] and read["plain.png"] == set()
    assert matches(out, "火鍋") == ["sign.png"] and matches(out, "牛肉拉麵") == ["menu.jpg"]
    assert ocr_setting(out) is True
    # the vectors are the model's, as without OCR (decoded larger for the OCR, then preprocessed alike)
    plain = stored_vectors(out)
    without = tmp_path / "without"
    build_index(plan(photos, without, tiny_model))
    for path, vector in stored_vectors(without).items():
        np.testing.assert_allclose(plain[str(Path(path))], vector, atol=0.02)
    again = build_index(plan(photos, out, tiny_model))  # remembered: nothing left to read
    assert (again.embedded, again.read, again.unchanged) == (0, 0, 3)


def test_ocr_on_an_existing_index_reads_only_what_was_not_read_and_embeds_nothing(tmp_path, photos, tiny_model):
    out = tmp_path / "index"
    build_index(plan(photos, out, tiny_model))
    assert texts(out) == {} and matches(out, "火锅") == [] and ocr_setting(out) is False
    vectors, generation = stored_vectors(out), read_back(out).generation
    summary = build_index(plan(photos, out, tiny_model, ocr=True))
    assert (summary.embedded, summary.read, summary.unchanged, summary.total) == (0, 3, 3, 3)
    assert matches(out, "火锅") == ["sign.png"] and ocr_setting(out) is True
    after = read_back(out)
    assert after.generation == generation + 1 and [row.id for row in after.segments] == [1]  # no segment written
    assert {path: v.tobytes() for path, v in stored_vectors(out).items()} == {path: v.tobytes() for path, v in vectors.items()}

    # remembered: a new image and a changed one are read, the rest is not read again
    shutil.copy(photos / "sign.png", photos / "sign-copy.png")
    poster("火锅").save(photos / "sign.png")
    summary = build_index(plan(photos, out, tiny_model))
    assert (summary.added, summary.updated, summary.embedded, summary.read) == (1, 1, 2, 2)
    assert matches(out, "老王") == ["sign-copy.png"] and "sign.png" in matches(out, "火锅")
    assert texts(out)["sign.png"] == {"火锅"}  # the changed image's old lines went with its old pixels

    # --no-ocr: remembered too; a new image is not read; a removed one takes its lines along
    poster("新品上市").save(photos / "new.png")
    (photos / "sign-copy.png").unlink()
    summary = build_index(plan(photos, out, tiny_model, ocr=False))
    assert (summary.added, summary.removed, summary.read) == (1, 1, 0) and ocr_setting(out) is False
    assert "new.png" not in texts(out) and matches(out, "老王") == []


def test_an_image_that_cannot_be_read_loses_its_text_only(tmp_path, photos, tiny_model):
    out = tmp_path / "index"
    build_index(plan(photos, out, tiny_model))
    menu = photos / "menu.jpg"
    stamp = menu.stat()
    menu.write_bytes(b"\xff\xd8\xff" + bytes(stamp.st_size - 3))  # the same size and time: unchanged to the scan
    os.utime(menu, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    summary = build_index(plan(photos, out, tiny_model, ocr=True))
    assert (summary.unchanged, summary.read, summary.skipped) == (3, 3, [])
    catalog = Catalog(out / CATALOG)
    try:
        reasons = {Path(item.path).name: read_items(catalog.db).get(item.id) for item, _, _ in catalog.all_items()}
    finally:
        catalog.close()
    assert reasons["menu.jpg"].startswith("not an image") and reasons["sign.png"] is None
    assert matches(out, "老王火锅") == ["sign.png"] and read_back(out).items[0].path.endswith("menu.jpg")


def test_index_ocr_flags(tmp_path, photos, capsys):
    out = tmp_path / "index"
    code, printed, _ = run(capsys, "index", photos, "--out", out, "--model", "test-tiny", "--workers", "0", "--ocr")
    assert code == 0 and "text read in 3" in printed
    code, printed, _ = run(capsys, "index", photos, "--out", out, "--model", "test-tiny", "--workers", "0", "--no-ocr")
    assert code == 0 and "text read" not in printed and ocr_setting(out) is False
