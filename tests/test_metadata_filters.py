"""EXIF metadata read from real image files, and filters evaluated by a real SQLite."""

from __future__ import annotations

import io
import sqlite3

import pytest
from PIL import ExifTags, Image

from indexer.metadata import read_metadata
from retrieval.store.records import folder_of
from retrieval.errors import TusouError
from retrieval.search.filters import distance_km, make_filters


def jpeg_with_exif(make="Canon", model="Canon EOS R5", taken="2024:06:01 12:30:00", offset="+08:00", gps=None, orientation=6) -> bytes:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if orientation:
        exif[0x0112] = orientation
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    if taken:
        sub[0x9003] = taken
    if offset:
        sub[0x9011] = offset
    if gps:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
    out = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(out, "JPEG", exif=exif)
    return out.getvalue()


def metadata(data: bytes):
    return read_metadata(Image.open(io.BytesIO(data)))


def test_exif_time_camera_place_and_orientation_are_read():
    shanghai = {1: "N", 2: (31.0, 13.0, 48.0), 3: "E", 4: (121.0, 28.0, 12.0)}
    found = metadata(jpeg_with_exif(gps=shanghai))
    assert (found.taken, found.taken_offset, found.camera, found.orientation, found.format) == (
        "2024-06-01T12:30:00", "+08:00", "Canon EOS R5", 6, "jpeg")
    assert found.latitude == pytest.approx(31.23) and found.longitude == pytest.approx(121.47)


def test_southern_and_western_coordinates_are_negative():
    found = metadata(jpeg_with_exif(gps={1: "S", 2: (33.0, 52.0, 0.0), 3: "W", 4: (70.0, 39.0, 0.0)}))
    assert found.latitude == pytest.approx(-33.8667, abs=1e-3) and found.longitude == pytest.approx(-70.65, abs=1e-3)


def test_make_is_not_repeated_and_nul_padding_is_dropped():
    assert metadata(jpeg_with_exif(make="NIKON CORPORATION", model="NIKON D750\x00\x00")).camera == "NIKON D750"
    assert metadata(jpeg_with_exif(make="Apple", model="iPhone 15")).camera == "Apple iPhone 15"


@pytest.mark.parametrize("taken", ["0000:00:00 00:00:00", "    ", "yesterday", "2024:13:45 99:00:00"])
def test_damaged_dates_are_missing_not_errors(taken):
    assert metadata(jpeg_with_exif(taken=taken)).taken is None


def test_damaged_gps_and_offset_are_missing_not_errors():
    found = metadata(jpeg_with_exif(offset="+99:99", gps={1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)}))
    assert (found.latitude, found.longitude, found.taken_offset) == (None, None, None)


def test_images_without_exif_have_no_metadata_but_their_format():
    for kind, name in (("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp")):
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, kind)
        found = metadata(out.getvalue())
        assert (found.taken, found.camera, found.latitude, found.format) == (None, None, None, name)


def test_a_broken_exif_block_is_ignored():
    data = bytearray(jpeg_with_exif())
    start = data.index(b"Exif\x00\x00") + 6
    data[start + 8 : start + 40] = b"\xff" * 32  # IFD entry counts and offsets now point nowhere
    found = metadata(bytes(data))
    assert found.format == "jpeg"


def test_folder_of_files_and_shard_members():
    assert folder_of("/photos/2024/a.jpg") == "/photos/2024"
    assert folder_of("/data/000001.tar#sub/a.jpg") == "/data"


ROWS = [
    # path, taken, format, camera, latitude, longitude
    ("/p/2024/a.jpg", "2024-06-01T12:00:00", "jpeg", "Canon EOS R5", 31.23, 121.47),
    ("/p/2024/b.png", "2024-07-15T08:00:00", "png", None, None, None),
    ("/p/2024-old/c.jpg", "2023-12-31T23:59:59", "jpeg", "Apple iPhone 15", 39.90, 116.40),
    ("/p/2024/deep/d.webp", "2024-06-30T23:59:59", "webp", "apple iphone 12", 31.30, 121.50),
    ("/s/x.tar#m/e.jpg", None, "jpeg", None, None, None),
]


@pytest.fixture()
def items() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.create_function("distance_km", 4, distance_km, deterministic=True)
    db.execute("CREATE TABLE items (path TEXT, taken TEXT, format TEXT, camera TEXT, latitude REAL, longitude REAL)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", ROWS)
    return db


def matching(db: sqlite3.Connection, **words) -> list[str]:
    where, params = make_filters(**words).where()
    return sorted(row[0] for row in db.execute(f"SELECT path FROM items WHERE {where}", params))


def test_filters_select_by_date_folder_type_camera_and_place(items):
    assert matching(items) == sorted(r[0] for r in ROWS)
    assert matching(items, after="2024-06", before="2024-07") == ["/p/2024/a.jpg", "/p/2024/deep/d.webp"]
    assert matching(items, after="2024") == ["/p/2024/a.jpg", "/p/2024/b.png", "/p/2024/deep/d.webp"]
    assert matching(items, before="2024-01-01") == ["/p/2024-old/c.jpg"]
    assert matching(items, folders=["/p/2024/"]) == ["/p/2024/a.jpg", "/p/2024/b.png", "/p/2024/deep/d.webp"]
    assert matching(items, folders=["/p/2024/deep", "/s/x.tar"]) == ["/p/2024/deep/d.webp", "/s/x.tar#m/e.jpg"]
    assert matching(items, types="jpg") == ["/p/2024-old/c.jpg", "/p/2024/a.jpg", "/s/x.tar#m/e.jpg"]
    assert matching(items, types="png,webp") == ["/p/2024/b.png", "/p/2024/deep/d.webp"]
    assert matching(items, camera="iphone") == ["/p/2024-old/c.jpg", "/p/2024/deep/d.webp"]
    assert matching(items, camera="100%_") == []
    assert matching(items, near="31.23,121.47,10") == ["/p/2024/a.jpg", "/p/2024/deep/d.webp"]
    assert matching(items, near="31.23,121.47,1") == ["/p/2024/a.jpg"]
    assert matching(items, near="31.23,121.47,2000") == ["/p/2024-old/c.jpg", "/p/2024/a.jpg", "/p/2024/deep/d.webp"]
    assert matching(items, types="jpg", after="2024") == ["/p/2024/a.jpg"]


def test_near_a_pole_and_across_the_antimeridian(items):
    items.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                      [("/f/fiji.jpg", None, "jpeg", None, -17.0, 179.9), ("/f/pole.jpg", None, "jpeg", None, 89.9, 10.0)])
    assert matching(items, near="-17,-179.9,50") == ["/f/fiji.jpg"]
    assert matching(items, near="89.9,-170,50") == ["/f/pole.jpg"]


def test_distance_is_the_great_circle():
    assert distance_km(39.9042, 116.4074, 31.2304, 121.4737) == pytest.approx(1067, rel=0.01)  # Beijing–Shanghai


@pytest.mark.parametrize("words, message", [
    (dict(after="June"), "--after 'June'"),
    (dict(before="2024-02-30"), "--before '2024-02-30'"),
    (dict(after="2024-06-01T08:00+08:00"), "without an offset"),
    (dict(after="2024-07", before="2024-06"), "is not before"),
    (dict(near="91,0,5"), "latitude must be within"),
    (dict(near="0,181,5"), "longitude within"),
    (dict(near="0,0,-1"), "positive number"),
    (dict(near="0,0"), "give LAT,LON,KM"),
    (dict(types=" , "), "--type"),
])
def test_bad_filter_values_are_one_line_errors(words, message):
    with pytest.raises(TusouError, match=message.replace("(", r"\(").replace("+", r"\+")) as caught:
        make_filters(**words)
    assert "\n" not in str(caught.value)
