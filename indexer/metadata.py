"""What an image says about itself: when it was taken, with which camera, where.

Read from the EXIF block Pillow exposes, at decode time, once per image. Most images have no
EXIF and much of what exists is damaged (zeroed dates, GPS rationals with a zero denominator,
strings padded with NULs), so every field is optional and nothing here ever raises: a bad
field is a missing field.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import ExifTags, Image

ORIENTATION = 0x0112
MAKE, MODEL = 0x010F, 0x0110
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4
FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
"""Pillow's format names → the catalog's `format` (an MPO is a JPEG with extra frames)."""


@dataclass(frozen=True)
class ImageMetadata:
    taken: str | None = None
    """Local wall-clock time the photo was taken, `YYYY-MM-DDTHH:MM:SS` (sorts as text)."""
    taken_offset: str | None = None
    """The EXIF offset of that time from UTC (`+08:00`), when the camera recorded one."""
    camera: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    orientation: int | None = None
    format: str | None = None


def read_metadata(image: Image.Image) -> ImageMetadata:
    """The metadata of an opened (not yet transposed or converted) image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": the fields it could not read are missing
            exif = image.getexif()
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:  # Pillow raises many types on a damaged EXIF block; it is only metadata
        exif, sub, gps = {}, {}, {}
    latitude = _coordinate(gps.get(GPS_LATITUDE), gps.get(GPS_LATITUDE_REF), "S", 90)
    longitude = _coordinate(gps.get(GPS_LONGITUDE), gps.get(GPS_LONGITUDE_REF), "W", 180)
    located = latitude is not None and longitude is not None
    orientation = exif.get(ORIENTATION)
    return ImageMetadata(
        taken=_exif_time(sub.get(DATETIME_ORIGINAL)),
        taken_offset=_offset(sub.get(OFFSET_TIME_ORIGINAL)),
        camera=_camera(_text(exif.get(MAKE)), _text(exif.get(MODEL))),
        latitude=latitude if located else None,
        longitude=longitude if located else None,
        orientation=orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None,
        format=FORMATS.get(image.format or "", (image.format or "").lower() or None),
    )


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\x00", "").strip()
    return cleaned or None


def _camera(make: str | None, model: str | None) -> str | None:
    """`Make Model`, without the make twice when the model already starts with it (Canon, Canon EOS R5)."""
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(part for part in (make, model) if part) or None


def _exif_time(value: object) -> str | None:
    """EXIF's `YYYY:MM:DD HH:MM:SS` as ISO text; zeroed, blank or impossible dates are none."""
    text = _text(value)
    if not text:
        return None
    for pattern in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            moment = datetime.strptime(text[:19], pattern)
        except ValueError:
            continue
        return moment.strftime("%Y-%m-%dT%H:%M:%S") if moment.year >= 1826 else None  # the first photograph
    return None


def _offset(value: object) -> str | None:
    text = _text(value)
    if text and len(text) == 6 and text[0] in "+-" and text[3] == ":" and text[1:3].isdigit() and text[4:].isdigit():
        return text if int(text[1:3]) <= 14 and int(text[4:]) < 60 else None
    return None


def _coordinate(value: object, ref: object, negative: str, limit: float) -> float | None:
    """Degrees from EXIF's (degrees, minutes, seconds) rationals; out of range or malformed is none."""
    try:
        degrees, minutes, seconds = (float(part) for part in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    result = degrees + minutes / 60 + seconds / 3600
    if not math.isfinite(result) or not 0 <= result <= limit:
        return None
    return -result if _text(ref) == negative else result
