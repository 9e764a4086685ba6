"""The endpoints of /api/v1: search, label, ocr, items, info. Each is a thin client of the same
code the CLI and the UI run (ui.search_request, ui.backend, ui.thumbnails), so a result here has
exactly the fields of `tusou search --json`.

The endpoints are plain functions: FastAPI runs them in its thread pool, where the model's turns
(ui.backend) keep one query on the model at a time while uploads are read and decoded beside it.
"""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, Security, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from retrieval.errors import TusouError
from retrieval.images import ImageError, load_query_image
from retrieval.locations import Unreadable
from retrieval.ocr.engine import read_text
from retrieval.search.searcher import Searcher
from retrieval.store.index_info import served_summary
from retrieval.store.text_lines import item_lines
from ui.api.params import (MAX_K, MAX_LABEL_TEXT, MAX_OFFSET, MAX_TEXT, MAX_VALUES, THUMBNAIL_SIZES, LabelParams,
                           SearchParams, ThumbnailParams, accepts, read)
from ui.backend import MAX_LABELS, Backend, checked_labels
from ui.options import number
from ui.search_request import result_rows, search_query
from ui.status import precision_of
from ui.thumbnails import thumbnail
from ui.watch import IndexingState

PREFIX = "/api/v1"
ITEM_IDS = number(int, 0, 2**63 - 1)
"""SQLite's integers: an id past them is no item, not an overflow."""
LIMITS = {"k": MAX_K, "offset": MAX_OFFSET, "text_characters": MAX_TEXT, "repeated_values": MAX_VALUES,
          "labels": MAX_LABELS, "label_characters": MAX_LABEL_TEXT, "thumbnail_sizes": list(THUMBNAIL_SIZES)}
BEARER = HTTPBearer(auto_error=False, description="an API key of the server (`--api-key`), when it has any")
"""Documents the key in the OpenAPI schema (/docs' Authorize); the check itself is ui.api.keys'."""
ItemId = Annotated[int, Path(description="the item's id, as results give it"), read(ITEM_IDS)]
Image = Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, ...)")]


def upload(image: UploadFile) -> bytes:
    """An upload's bytes (its size is bounded by the server's body limit)."""
    return image.file.read()


def api_router(backend: Backend, indexing: IndexingState | None = None) -> APIRouter:
    router = APIRouter(prefix=PREFIX, dependencies=[Security(BEARER)])
    _queries(router, backend)
    _items(router, backend, indexing)
    return router


def _queries(router: APIRouter, backend: Backend) -> None:
    """Search, label and ocr: what needs the model (or the OCR)."""

    def answer(options: SearchParams, image: bytes | None) -> dict:
        picture = backend.picture(image) if image is not None else None
        query = search_query(options, picture)
        results = backend.search(query, options.k, options.offset)
        return {"results": result_rows(query, results), "k": options.k, "offset": options.offset}

    @router.get("/search", dependencies=[accepts(SearchParams)], summary="search by text")
    def search(options: Annotated[SearchParams, Query()]) -> dict:
        """Results `offset + 1` … `offset + k` for a text query, with `tusou search`'s options."""
        return answer(options, None)

    @router.post("/search", dependencies=[accepts(SearchParams, form=True, files=("image",))], summary="search by image")
    def search_by_image(image: Image, options: Annotated[SearchParams, Form()]) -> dict:
        """An uploaded image alone, or mixed with a text query `q` by `weight`; the same options as GET."""
        return answer(options, upload(image))

    @router.post("/label", dependencies=[accepts(LabelParams, form=True, files=("image",))], summary="zero-shot labels")
    def label(image: Image, options: Annotated[LabelParams, Form()]) -> dict:
        """Each label's probability for the image, most probable first (as `tusou label --json`)."""
        names, templates = checked_labels(options.labels, options.templates.split("|") if options.templates else None)
        scores = backend.label(backend.picture(upload(image)), names, templates)
        return {"labels": [score.to_dict() for score in scores]}

    @router.post("/ocr", dependencies=[accepts(form=True, files=("image",))], summary="the text in an image")
    def ocr(image: Image) -> dict:
        """The lines of text in the image: text, confidence and box (as `tusou ocr --json`)."""
        result = read_text(load_query_image(upload(image)))
        if result.reason:
            raise TusouError(f"cannot read text in upload: {result.reason}")
        return {"lines": [line.to_dict() for line in result.lines]}


def _items(router: APIRouter, backend: Backend, indexing: IndexingState | None) -> None:
    """An item's row and picture, and the index as a whole: catalog reads only."""

    def found(searcher: Searcher, item_id: int) -> dict:
        row = searcher.item(item_id)
        if row is None:
            raise HTTPException(404, f"no item {item_id} in the index")
        return row

    @router.get("/items/{item_id}", dependencies=[accepts()], summary="an item's catalog row")
    def item(item_id: ItemId) -> dict:
        """The catalog row (path, size, dimensions, when taken, camera, place, format, ...) and, on an index
        built with --ocr, the lines read in the image (`ocr`)."""
        searcher = backend.searcher
        row = found(searcher, item_id)
        lines = item_lines(searcher.store.catalog.db, item_id)
        return row if lines is None else row | {"ocr": lines}

    @router.get("/items/{item_id}/thumbnail", dependencies=[accepts(ThumbnailParams)], summary="an item's picture, small",
                response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def item_thumbnail(item_id: ItemId, options: Annotated[ThumbnailParams, Query()]) -> Response:
        """The item's picture as a JPEG fitting `size` × `size`, read from where the catalog says it is."""
        try:
            picture = thumbnail(found(backend.searcher, item_id)["path"], options.size)
        except (ImageError, Unreadable) as exc:
            raise HTTPException(404, f"the image of item {item_id} cannot be read: {exc}") from None
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @router.get("/info", dependencies=[accepts()], summary="the served index and the server's limits")
    def info() -> dict:
        """`tusou info --json` of the served index as the server's searches see it now, the model that
        embeds the queries (the index's, or a student of it) and the precision they run in, whether the
        index has text read in its images, the API's limits, and what the folder watcher does
        (`indexing`; null without --watch)."""
        searcher = backend.searcher
        return {"api": "v1", "index": served_summary(searcher.store), "query_model": searcher.model.name,
                "precision": precision_of(searcher), "text_read": searcher.has_text(), "limits": LIMITS, "indexing": indexing.to_dict() if indexing else None}
