"""Pictures of catalog items, small: what the UI's galleries and the API's thumbnail route show.

Only a path from the index's own catalog is ever read here (a file, a URL or a tar shard member:
retrieval.locations), never one that came in a request.
"""

from __future__ import annotations

from PIL import Image

from retrieval.images import open_image
from retrieval.locations import read_item


def thumbnail(path: str, size: int) -> Image.Image:
    """The item at catalog path `path`, scaled to fit `size` × `size` (never up). Raises
    retrieval.images.ImageError or retrieval.locations.Unreadable, with the reason."""
    picture = open_image(read_item(path), min_size=size)
    picture.thumbnail((size, size))
    return picture
