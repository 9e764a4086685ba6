"""The filter, sort and page controls of a search tab, and how a tab's search is wired to them.

Every field is text as a user types it, checked by retrieval.search.filters (a bad value is the
status line's one line, never a traceback). The page is a hidden offset: the search button and
Enter start at the first page, 上一页 / 下一页 move the offset by k and search again with the
tab's controls as they are. The offset is the handler's last parameter, so an API caller pages too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import gradio as gr

from retrieval.search.filters import Filters, make_filters
from retrieval.search.query import SORT_POOL

SORT_CHOICES = [("按相关度", "score"), ("最新", "newest"), ("最早", "oldest")]
FOLDER_SEPARATORS = re.compile(r"[,，\n]")
"""Folders are split at commas and newlines only: `、` and `;` occur in folder names."""


@dataclass(frozen=True)
class FilterControls:
    after: gr.Textbox
    before: gr.Textbox
    folders: gr.Textbox
    types: gr.Textbox
    camera: gr.Textbox
    near: gr.Textbox
    sort: gr.Radio

    @property
    def filters(self) -> list[gr.Textbox]:
        """The fields `read_filters` takes, in its order."""
        return [self.after, self.before, self.folders, self.types, self.camera, self.near]


@dataclass(frozen=True)
class Pager:
    previous: gr.Button
    next: gr.Button
    offset: gr.Number


def filter_panel(prefix: str) -> FilterControls:
    """Date range, file types, sort order, folders, camera and place (elem_ids `PREFIX-after` ...)."""
    with gr.Accordion("筛选与排序：日期、文件夹、类型、相机、地点", open=True, elem_id=f"{prefix}-filters"):
        with gr.Row():
            after = gr.Textbox("", label="从（含）", placeholder="2024-06", elem_id=f"{prefix}-after")
            before = gr.Textbox("", label="到（不含）", placeholder="2025", elem_id=f"{prefix}-before")
            types = gr.Textbox("", label="文件类型", placeholder="jpg,png", elem_id=f"{prefix}-types")
            sort = gr.Radio(SORT_CHOICES, value="score", label=f"排序（最新/最早：相关度最高的 {SORT_POOL} 个按日期排）",
                            elem_id=f"{prefix}-sort", scale=2)
        with gr.Row():
            folders = gr.Textbox("", label="文件夹（路径前缀，逗号或换行分隔）", placeholder="/photos/2024", elem_id=f"{prefix}-folders", scale=2)
            camera = gr.Textbox("", label="相机", placeholder="例如：Canon", elem_id=f"{prefix}-camera")
            near = gr.Textbox("", label="地点附近（纬度,经度,公里）", placeholder="31.23,121.47,5", elem_id=f"{prefix}-near")
    return FilterControls(after, before, folders, types, camera, near, sort)


def pager(prefix: str) -> Pager:
    with gr.Row():
        previous = gr.Button("上一页", size="sm", scale=0, min_width=96, elem_id=f"{prefix}-previous")
        following = gr.Button("下一页", size="sm", scale=0, min_width=96, elem_id=f"{prefix}-next")
    return Pager(previous, following, gr.Number(0, precision=0, visible=False, label="offset"))


def read_filters(after: str | None, before: str | None, folders: str | None, types: str | None,
                 camera: str | None, near: str | None) -> Filters:
    """The fields' filters, checked; an empty field filters nothing."""
    return make_filters(_given(after), _given(before), [part.strip() for part in FOLDER_SEPARATORS.split(folders or "") if part.strip()],
                        _given(types), _given(camera), _given(near))


def _given(text: str | None) -> str | None:
    return (text or "").strip() or None


def first_page() -> int:
    return 0


def turn_page(step: int, offset: float | None, k: float, shown: list[dict] | None) -> int:
    """The offset `step` pages (of k) away, never below 0; 下一页 stays on a page with fewer than k
    results (the last one)."""
    offset, k = int(offset or 0), int(k)
    if step > 0 and len(shown or []) < k:
        return offset
    return max(0, offset + step * k)


def connect_search(handler, inputs: list, outputs: list, go: gr.Button, submits: tuple[gr.Textbox, ...], pages: Pager,
                   k: gr.Slider, shown: gr.JSON, api_name: str) -> None:
    """A tab's search: `go` (the public `api_name` endpoint) and Enter in `submits` show the first page,
    the page buttons move the offset; `inputs` end with the pager's offset."""
    quick = dict(queue=False, show_progress="hidden", api_visibility="private")
    go.click(first_page, None, pages.offset, **quick).then(handler, inputs, outputs, api_name=api_name)
    for box in submits:
        box.submit(first_page, None, pages.offset, **quick).then(handler, inputs, outputs, api_visibility="private")
    for button, step in ((pages.previous, -1), (pages.next, 1)):
        button.click(partial(turn_page, step), [pages.offset, k, shown], pages.offset, **quick) \
            .then(handler, inputs, outputs, api_visibility="private")
