"""Which items a search may return: by date taken, folder, file type, camera and place.

A `Filters` is checked when it is made (a bad value is a one-line TusouError before any model
loads) and becomes one SQL condition on the catalog's items table, whose filtered columns are
indexed. Dates compare as the catalog stores them: local wall-clock time as ISO text.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime

from retrieval.errors import TusouError

EARTH_RADIUS_KM = 6371.0088
FORMAT_ALIASES = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff"}
DATE_FORMATS = {4: "%Y", 7: "%Y-%m", 10: "%Y-%m-%d"}


@dataclass(frozen=True)
class Near:
    latitude: float
    longitude: float
    km: float


@dataclass(frozen=True)
class Filters:
    """Every field narrows the search; an empty Filters matches everything.

    `after` is inclusive and `before` exclusive, so `--after 2024-06 --before 2024-07` is June 2024.
    `folders` match a path or anything under it (any of them); `camera` is a case-insensitive substring.
    """

    after: str | None = None
    before: str | None = None
    folders: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    camera: str | None = None
    near: Near | None = None

    @property
    def active(self) -> bool:
        return any((self.after, self.before, self.folders, self.types, self.camera, self.near))

    def where(self) -> tuple[str, list[object]]:
        """A condition on the items table and its parameters (`1` when nothing is filtered)."""
        clauses: list[str] = []
        params: list[object] = []
        if self.after:
            clauses.append("taken >= ?")
            params.append(self.after)
        if self.before:
            clauses.append("taken < ?")
            params.append(self.before)
        if self.folders:
            clauses.append("(" + " OR ".join(["path = ? OR (path >= ? AND path < ?) OR (path >= ? AND path < ?)"] * len(self.folders)) + ")")
            for folder in self.folders:
                params += [folder, folder + "/", folder + "0", folder + "#", folder + "$"]  # '0' follows '/', '$' follows '#'
        if self.types:
            clauses.append(f"format IN ({', '.join('?' * len(self.types))})")
            params += list(self.types)
        if self.camera:
            clauses.append("camera LIKE ? ESCAPE '\\'")
            params.append("%" + re.sub(r"([%_\\])", r"\\\1", self.camera) + "%")
        if self.near:
            clauses.append(_near_clause(self.near))
            params += _near_params(self.near)
        return (" AND ".join(clauses) or "1"), params


def parse_date(text: str, flag: str, end: bool = False) -> str:
    """`2024`, `2024-06`, `2024-06-01` or `2024-06-01T08:30[:00]` as the catalog's ISO text."""
    value = text.strip()
    try:
        moment = datetime.strptime(value, DATE_FORMATS[len(value)]) if len(value) in DATE_FORMATS else datetime.fromisoformat(value)
    except ValueError:
        raise TusouError(f"{flag} {text!r}: give a date such as 2024, 2024-06, 2024-06-01 or 2024-06-01T08:30") from None
    if moment.tzinfo is not None:
        raise TusouError(f"{flag} {text!r}: give local time without an offset (photos' times are local)")
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def parse_near(text: str) -> Near:
    """`LAT,LON,KM`: within KM kilometres of a point (decimal degrees)."""
    parts = [part.strip() for part in text.split(",")]
    try:
        latitude, longitude, km = (float(part) for part in parts)
    except ValueError:
        raise TusouError(f"--near {text!r}: give LAT,LON,KM, e.g. 31.23,121.47,5") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise TusouError(f"--near {text!r}: latitude must be within -90..90 and longitude within -180..180")
    if not (math.isfinite(km) and km > 0):
        raise TusouError(f"--near {text!r}: the distance must be a positive number of kilometres")
    return Near(latitude, longitude, km)


def parse_types(text: str) -> tuple[str, ...]:
    """`jpg,png` as the catalog's formats (jpg and jpeg are one)."""
    names = [name.strip().lower().lstrip(".") for name in text.split(",") if name.strip()]
    if not names:
        raise TusouError(f"--type {text!r}: give file types such as jpg,png")
    return tuple(dict.fromkeys(FORMAT_ALIASES.get(name, name) for name in names))


def make_filters(
    after: str | None = None,
    before: str | None = None,
    folders: tuple[str, ...] | list[str] = (),
    types: str | None = None,
    camera: str | None = None,
    near: str | None = None,
) -> Filters:
    """Filters from the words a user typed (CLI flags, UI fields, API parameters), checked. None is
    "not given"; a value given empty (`--type ''`) is a mistake like any other bad value."""
    filters = Filters(
        after=parse_date(after, "--after") if after is not None else None,
        before=parse_date(before, "--before") if before is not None else None,
        folders=tuple(_folder(folder) for folder in folders),
        types=parse_types(types) if types is not None else (),
        camera=_camera(camera) if camera is not None else None,
        near=parse_near(near) if near is not None else None,
    )
    if filters.after and filters.before and filters.after >= filters.before:
        raise TusouError(f"--after {after} is not before --before {before}: nothing could match")
    return filters


def _camera(text: str) -> str:
    if not text.strip():
        raise TusouError(f"--camera {text!r}: give some text of the camera's make or model, e.g. Canon")
    return text.strip()


def _folder(text: str) -> str:
    """A folder as the catalog spells paths: a local one absolute (resolved from here), a URL as written."""
    if not text.strip():
        raise TusouError(f"--in {text!r}: give a folder, e.g. photos/2024")
    if "://" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    return text.rstrip("/") or "/"


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), registered as an SQL function for `near`."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _near_clause(near: Near) -> str:
    """A bounding box the (latitude, longitude) index can answer, then the exact distance."""
    box = "latitude BETWEEN ? AND ?"
    if _box(near)[2] is not None:
        box += " AND longitude BETWEEN ? AND ?"
    return f"({box} AND distance_km(latitude, longitude, ?, ?) <= ?)"


def _near_params(near: Near) -> list[object]:
    low, high, west, east = _box(near)
    params: list[object] = [low, high]
    if west is not None:
        params += [west, east]
    return params + [near.latitude, near.longitude, near.km]


def _box(near: Near) -> tuple[float, float, float | None, float | None]:
    """Latitude bounds, and longitude bounds unless the circle reaches a pole or the antimeridian."""
    spread = math.degrees(near.km / EARTH_RADIUS_KM)
    low, high = max(-90.0, near.latitude - spread), min(90.0, near.latitude + spread)
    if low <= -90 or high >= 90:
        return low, high, None, None
    width = math.degrees(math.asin(min(1.0, math.sin(near.km / EARTH_RADIUS_KM) / math.cos(math.radians(near.latitude)))))
    west, east = near.longitude - width, near.longitude + width
    return (low, high, None, None) if west < -180 or east > 180 else (low, high, west, east)
