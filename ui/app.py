"""The Gradio app: 文搜图, 图搜图, 零样本标注 and 文字识别 over one index.

Safe by default: it binds 127.0.0.1, and it never serves a file by a path that came in a
request. Result images are read from the index's own catalog paths (files, URLs or tar shard
members: retrieval.locations) and sent as thumbnails; a click enlarges a result, and "search by the
picked result" uses the stored vector of its catalog row. Both search tabs filter by date, folder, type, camera and place,
sort by score or date, and page (ui.controls); their status lines say so (ui.status). On an index
built with --ocr, 文搜图 also finds pictures by their text: a result found so shows its line under
it and its box drawn on the picture; 文字识别 shows the lines read in an uploaded image.
"""

from __future__ import annotations

import base64
import binascii
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image, ImageDraw
from starlette.types import ASGIApp

from retrieval.errors import TusouError
from retrieval.images import ImageError, UnusableQueryImage, load_query_image
from retrieval.locations import Unreadable
from retrieval.models.model import load_model, student_model
from retrieval.models.registry import DEFAULT_MODEL
from retrieval.ocr.engine import read_text
from retrieval.search.encoder import MAX_BATCH
from retrieval.search.query import DEDUPE_THRESHOLD, IMAGE_WEIGHT, Query, clean_query, strip_controls
from retrieval.search.searcher import Searcher, SearchResult
from retrieval.search.zero_shot import DEFAULT_TEMPLATES, split_list
from retrieval.store.manifest import MANIFEST
from ui.access import CLIENT_CONCURRENCY, bound_host
from ui.api.limits import MAX_UPLOAD_BYTES
from ui.backend import Backend, checked_labels
from ui.server import listen, run, service
from ui.controls import connect_search, filter_panel, pager, read_filters
from ui.status import caption, describe_image_query, describe_query, index_line, indexing_line, narrowing
from ui.thumbnails import thumbnail
from ui.watch import RESCAN, IndexingState, Watcher

THUMBNAIL = 256
MAX_UPLOAD = f"{MAX_UPLOAD_BYTES >> 20}mb"
GENERIC_EXAMPLES = ["海边的日落", "一只在草地上奔跑的小狗", "城市的夜景", "红色的花"]
Gallery = list[tuple[Image.Image, str]]
Answer = tuple[Gallery, list[dict], str]
BOX_COLOUR = (230, 30, 30)
CLOSE_ENLARGED = "() => document.querySelector('#%s-gallery .preview button[aria-label=Close]')?.click()"
"""A gallery's enlarged view closed in the page: an update from the server leaves it open."""
HEADER_SECONDS = 2.0
"""How often an open page re-reads the header while folders are watched."""
MATCH_CHOICES = [("自动（有文字时两者）", ""), ("两者：外观与文字", "both"), ("只看外观", "visual"), ("只看图中文字", "text")]


def draw_boxes(image: Image.Image, boxes: list, scale: float) -> Image.Image:
    """`image` with each box (corners in the original's pixels, `scale` of them to this image's) outlined."""
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 200))
    for box in boxes:
        pen.polygon([(x * scale, y * scale) for x, y in box], outline=BOX_COLOUR, width=width)
    return image


def image_message(exc: TusouError) -> str:
    """Why an upload cannot be used, without the server's temporary path of it."""
    return f"无法使用这张图片: {str(exc).split(': ', 1)[-1]}"


def upload_message(exc: TusouError) -> str:
    """The status line for a failure with an upload: the image's own (image_message), or another (the
    index's image tower, the OCR's packages) as it is."""
    return image_message(exc) if isinstance(exc, UnusableQueryImage) else str(exc)


def api_result(result: SearchResult, dedupe: bool = False) -> dict:
    """A result as the API returns it: `--json`'s fields, with `file` for `path` (and `duplicate_files`
    for `duplicate_paths`): gradio_client takes any dict with a `path` for a file to download, and
    this server (rightly) refuses such requests."""
    renamed = {"path": "file", "duplicate_paths": "duplicate_files"}
    return {renamed.get(key, key): value for key, value in result.to_dict(dedupe).items()}


class SearchApp:
    """The app's handlers, over the Backend it shares with the JSON API (safe across threads);
    `indexing`: the folder watcher's state, shown under the header (None: no watcher)."""

    def __init__(self, backend: Backend, examples: list[str] | None = None, indexing: IndexingState | None = None):
        self.backend = backend
        self.examples = examples or GENERIC_EXAMPLES
        self.indexing = indexing

    def _results(self, results: list[SearchResult], dedupe: bool = False) -> tuple[Gallery, list[dict]]:
        gallery = []
        for result in results:
            try:
                picture = thumbnail(result.path, THUMBNAIL)
            except (ImageError, Unreadable):
                picture = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (235, 235, 235))
            if result.ocr is not None and result.width:
                draw_boxes(picture, [result.ocr.box], picture.width / result.width)
            gallery.append((picture, caption(result)))
        return gallery, [api_result(result, dedupe) for result in results]

    def _picture(self, upload: str | bytes) -> Image.Image | str:
        """The upload decoded for the image tower, or the line that says why it cannot be used: the
        index's image tower (other weights, or weights not on this machine) or the upload itself."""
        try:
            return self.backend.picture(upload)
        except TusouError as exc:
            return upload_message(exc)

    def search_text(
        self,
        query: str,
        k: int,
        reference: str | bytes | None = None,
        weight: float = IMAGE_WEIGHT,
        negatives: str | None = "",
        min_score: float = -1,
        dedupe: bool = False,
        threshold: float = DEDUPE_THRESHOLD,
        after: str = "",
        before: str = "",
        folders: str = "",
        types: str = "",
        camera: str = "",
        near: str = "",
        sort: str = "score",
        offset: int = 0,
        match: str = "",
    ) -> Answer:
        """A text query, optionally mixed with a reference image, with negative terms (comma-separated),
        a minimum score (-1: none) and near-duplicate folding; a reference image alone also searches.
        Filtered by date (after inclusive, before exclusive: 2024, 2024-06, 2024-06-01), folders (path
        prefixes, comma- or newline-separated), types (jpg,png), camera and place (LAT,LON,KM); sorted
        by score, or newest/oldest first among the best by score; results offset+1 … offset+k. `match`:
        both, visual or text ("": both when the index has text read); a result found by its text has
        `ocr` (its line's text, box and confidence). Every control has a default, so gradio_client
        callers may send only (query, k)."""
        offset = int(offset or 0)
        try:
            text = clean_query(query)
        except TusouError:
            text = None
        if text is None and not reference:
            return [], [], "请输入查询文字或放入参考图片 (type a query, or add a reference image)."
        picture = self._picture(reference) if reference else None
        if isinstance(picture, str):
            return [], [], picture
        try:
            request = Query(text=text, image=picture, weight=float(weight), negatives=split_list(strip_controls(negatives or "")),
                            min_score=None if min_score <= -1 else float(min_score), dedupe=float(threshold) if dedupe else None,
                            filters=read_filters(after, before, folders, types, camera, near), sort=sort, match=match or None)
            results = self._search(request, k, offset)
        except TusouError as exc:
            return [], [], str(exc)
        return *self._results(results, dedupe), describe_query(request, len(results), sum(r.duplicates for r in results), offset)

    def ocr(self, upload: str | bytes | None) -> tuple[Image.Image | None, list[dict], str]:
        """The lines of text in an uploaded image (text, confidence, box), and the image with their boxes drawn."""
        if not upload:
            return None, [], "请上传一张图片 (upload an image)."
        try:
            picture = load_query_image(upload)
            result = read_text(picture)
        except TusouError as exc:  # the upload, or the OCR's packages missing
            return None, [], upload_message(exc)
        if result.reason:
            return None, [], f"无法识别这张图片的文字: {result.reason}"
        lines = [line.to_dict() for line in result.lines]
        shown = picture.copy()
        shown.thumbnail((1280, 1280))
        draw_boxes(shown, [line["box"] for line in lines], shown.width / picture.width)
        return shown, lines, f"{len(lines)} 行文字" if lines else "没有识别到文字"

    def search_image(self, upload: str | bytes | None, k: int, after: str = "", before: str = "", folders: str = "",
                     types: str = "", camera: str = "", near: str = "", sort: str = "score", offset: int = 0) -> Answer:
        """Search by an uploaded image, with the text tab's filters, sort order and pages."""
        offset = int(offset or 0)
        if not upload:
            return [], [], "请上传一张图片 (upload an image)."
        picture = self._picture(upload)
        if isinstance(picture, str):
            return [], [], picture
        try:
            request = Query(image=picture, filters=read_filters(after, before, folders, types, camera, near), sort=sort)
            results = self._search(request, k, offset)
        except TusouError as exc:
            return [], [], str(exc)
        return *self._results(results), describe_image_query(request, len(results), offset)

    def _search(self, request: Query, k: int, offset: int) -> list[SearchResult]:
        return self.backend.search(request, k, offset)

    def search_result(self, results: list[dict], picked: int | None, k: int, after: str, before: str, folders: str, types: str,
                      camera: str, near: str) -> Answer:
        """Search by the result picked in a gallery: by its catalog row's stored vector, not by a path,
        within the tab's filters."""
        if not results or picked is None or not (0 <= picked < len(results)):
            return [], [], "请先搜索，再点选一个结果。"
        picked = int(picked)
        try:
            filters = read_filters(after, before, folders, types, camera, near)
        except TusouError as exc:
            return [], [], str(exc)
        searcher = self.backend.searcher
        vector = searcher.item_vector(int(results[picked]["id"]))
        if vector is None:
            return [], [], "这个结果已不在索引中。"
        found = searcher.search_vectors(vector[None], int(k), filters)[0]
        return *self._results(found), f"与 #{results[picked]['rank']} 相似{narrowing(filters)}: {len(found)} 个结果"

    def label(self, upload: str | bytes | None, labels: str, template: str) -> tuple[dict[str, float], str]:
        if not upload:
            return {}, "请上传一张图片 (upload an image)."
        try:
            names, templates = checked_labels(labels or "", [template or ""])
        except TusouError as exc:
            return {}, str(exc)
        picture = self._picture(upload)
        if isinstance(picture, str):
            return {}, picture
        try:
            scores = self.backend.label(picture, names, templates)
        except TusouError as exc:
            return {}, str(exc)
        return {score.label: score.probability for score in scores}, f"{len(scores)} 个标签"

    def info_markdown(self) -> str:
        """The header: the index as last committed and, when watching folders, what the watcher does."""
        header = index_line(self.backend.searcher)
        return header if self.indexing is None else f"{header}\n\n{indexing_line(self.indexing.to_dict())}"

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="tusou 图搜") as app:
            gr.Markdown("# tusou 图搜\n用中文或图片搜索图片。")
            # read at each page load, and while folders are watched every few seconds: the index changes under the server
            gr.Markdown(self.info_markdown, every=HEADER_SECONDS if self.indexing else None, elem_id="index-info")
            with gr.Tab("文搜图", id="text"):
                self._text_tab()
            with gr.Tab("图搜图", id="image"):
                self._image_tab()
            with gr.Tab("零样本标注", id="label"):
                self._label_tab()
            with gr.Tab("文字识别", id="ocr"):
                self._ocr_tab()
        return app

    def _text_tab(self) -> None:
        with gr.Row():
            query = gr.Textbox(label="查询", placeholder="例如：海边的日落", scale=4, elem_id="query")
            k = _k_slider()
        with gr.Accordion("更多条件：参考图片、排除、最低分数、合并近似重复、匹配方式", open=False, elem_id="query-options"):
            with gr.Row():
                reference = _upload("参考图片（可选，与文字混合）", "reference-upload")
                with gr.Column():
                    weight = gr.Slider(0, 1, value=IMAGE_WEIGHT, step=0.05, label="参考图片权重（0 = 只看文字，1 = 只看图片）",
                                       elem_id="weight")
                    negatives = gr.Textbox("", label="排除（逗号分隔，像这些的图片排在后面）", placeholder="例如：红色,三角形",
                                           elem_id="negatives")
                    min_score = gr.Slider(-1, 1, value=-1, step=0.01, label="最低分数（-1 = 不限）", elem_id="min-score")
                    with gr.Row():
                        dedupe = gr.Checkbox(False, label="合并近似重复", elem_id="dedupe")
                        threshold = gr.Slider(0.5, 1, value=DEDUPE_THRESHOLD, step=0.01, label="近似阈值（余弦）",
                                              elem_id="dedupe-threshold")
                    match = gr.Radio(MATCH_CHOICES, value="", label="匹配方式（图中文字需以 --ocr 建索引）", elem_id="match")
        narrow = filter_panel("text")
        go = gr.Button("搜索", variant="primary", elem_id="search-text")
        gr.Examples(self.examples, inputs=[query], label="示例查询")
        panel = _results_panel("text", "结果（点选一张放大；按文字找到的，标出那行文字）")
        pages = pager("text")
        inputs = [query, k, reference, weight, negatives, min_score, dedupe, threshold, *narrow.filters, narrow.sort, pages.offset, match]
        connect_search(self.search_text, inputs, panel.outputs, go, (query, negatives, *narrow.filters), pages, k, panel.shown, "search_text")
        panel.again.click(self.search_result, [panel.shown, panel.picked, k, *narrow.filters], panel.outputs, api_visibility="private")

    def _image_tab(self) -> None:
        with gr.Row():
            upload = _upload("上传图片", "image-upload")
            k = _k_slider()
        narrow = filter_panel("image")
        go = gr.Button("以图搜图", variant="primary", elem_id="search-image")
        panel = _results_panel("image", "结果（点选一张放大）")
        pages = pager("image")
        connect_search(self.search_image, [upload, k, *narrow.filters, narrow.sort, pages.offset], panel.outputs, go, tuple(narrow.filters),
                       pages, k, panel.shown, "search_image")
        panel.again.click(self.search_result, [panel.shown, panel.picked, k, *narrow.filters], panel.outputs, api_visibility="private")

    def _label_tab(self) -> None:
        with gr.Row():
            upload = _upload("图片", "label-upload")
            with gr.Column():
                labels = gr.Textbox(label="标签（逗号分隔）", value="猫,狗,老虎", elem_id="labels")
                template = gr.Textbox(label="模板（可选，含 {}）", placeholder=DEFAULT_TEMPLATES[0], elem_id="template")
                go = gr.Button("标注", variant="primary", elem_id="run-label")
        status = gr.Markdown(elem_id="label-status")
        out = gr.Label(label="概率", num_top_classes=10, elem_id="label-out")
        go.click(self.label, [upload, labels, template], [out, status], api_name="label")

    def _ocr_tab(self) -> None:
        with gr.Row():
            upload = _upload("图片", "ocr-upload")
            shown = gr.Image(label="识别出的文字（框出）", interactive=False, elem_id="ocr-image")
        go = gr.Button("识别文字", variant="primary", elem_id="run-ocr")
        status = gr.Markdown(elem_id="ocr-status")
        lines = gr.JSON(label="文字行：text、confidence、box", elem_id="ocr-lines")
        go.click(self.ocr, [upload], [shown, lines, status], api_name="ocr")


def _k_slider() -> gr.Slider:
    return gr.Slider(1, 50, value=12, step=1, label="返回数量 k")


def upload_payload(payload: ImageData | None) -> str | bytes | None:
    """An upload as the handlers take it, unopened: its path, or the bytes of a `data:` URL.

    Replaces gr.Image.preprocess, which opens every upload with Pillow: a file that is not an
    image failed there with an opaque error, and a `data:` URL was decoded in full (a
    decompression bomb) before tusou's decoder could check its size and say why.
    """
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        if len(payload.url) > MAX_UPLOAD_BYTES * 4 // 3 + 1024:
            raise gr.Error(f"无法使用这张图片: larger than {MAX_UPLOAD}")
        try:
            return base64.b64decode(payload.url.rsplit(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise gr.Error("无法使用这张图片: not valid base64 data") from None
    # Gradio has already refused any path that was not uploaded to this server.
    return str(payload.path) if payload.path else None


def _upload(label: str, elem_id: str) -> gr.Image:
    """An upload handed to tusou's decoder as a file path or bytes (Gradio does not open it)."""
    image = gr.Image(type="filepath", image_mode=None, label=label, sources=["upload"], elem_id=elem_id)
    # Set on the instance, not by subclassing: Gradio writes a .pyi stub beside any module
    # that defines a component subclass.
    image.preprocess = upload_payload  # type: ignore[method-assign]
    return image


@dataclass(frozen=True)
class ResultsPanel:
    """A tab's results: the status line, the gallery, the results as data (which row a pick refers
    to), the picked result's position, and the button that searches by it."""

    status: gr.Markdown
    gallery: gr.Gallery
    shown: gr.JSON
    picked: gr.State
    again: gr.Button

    @property
    def outputs(self) -> list:
        return [self.gallery, self.shown, self.status]


def _results_panel(prefix: str, label: str) -> ResultsPanel:
    """A click on a result enlarges it (with the box of the line that found it) and picks it; the
    button searches by the picked one. New results pick nothing."""
    status = gr.Markdown(elem_id=f"{prefix}-status")
    gallery = gr.Gallery(label=label, columns=6, height="auto", object_fit="contain", elem_id=f"{prefix}-gallery")
    shown, picked = gr.JSON(visible=False), gr.State(None)
    again = gr.Button("以选中的图再搜", size="sm", elem_id=f"{prefix}-again")
    again.click(None, js=CLOSE_ENLARGED % prefix, api_visibility="private")  # the new results show as the grid
    gallery.select(_picked, None, picked, queue=False, show_progress="hidden", api_visibility="private")
    shown.change(lambda: None, None, picked, queue=False, show_progress="hidden", api_visibility="private")
    return ResultsPanel(status, gallery, shown, picked, again)


def _picked(event: gr.SelectData) -> int:
    return event.index


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          examples: list[str] | None = None, precision: str = "auto", keys: Sequence[str] = (),
          client_concurrency: int = CLIENT_CONCURRENCY, max_batch: int = MAX_BATCH, watch: Sequence[Path] | None = None,
          model: str | None = None, rescan: float = RESCAN, runtime: str | None = None, onnx: str | Path | None = None) -> None:
    """Load the index and its model once, then serve the UI and the JSON API until SIGTERM or Ctrl-C:
    on 127.0.0.1 unless told otherwise, and only with a key when told otherwise (ui.access).

    `watch` (folders checked by ui.watch.check_watch): keep the index in step with them (ui.watch),
    building it from them first when there is none yet, with `model` (default: DEFAULT_MODEL). Without
    `watch`, a `model` that is a student of the index's embeds the text queries.
    `runtime` and `onnx`: what runs text queries (retrieval.models.runtime)."""
    host, warning = bound_host(host, bool(keys))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    listener = listen(host, port)
    # tusou's decoder checks the declared size before decoding anything (MAX_PIXELS), and says
    # so; Pillow's own, lower bomb limit would make some images the index accepts an error here.
    Image.MAX_IMAGE_PIXELS = None
    watcher = Watcher(Path(index_dir), watch, precision, rescan) if watch else None
    loaded = None
    if watcher is not None:
        watcher.observe()  # from now on: what is copied in during the first build is indexed after it
        if not (Path(index_dir) / MANIFEST).is_file():
            loaded = load_model(model or DEFAULT_MODEL, device=device)
            watcher.first_build(loaded)
    elif model is not None:
        loaded = student_model(model, device)  # a student of the index's model answers the queries; else the index loads its own
    searcher = Searcher(index_dir, device=device, model=loaded, precision=precision, max_batch=max_batch, runtime=runtime, onnx=onnx)
    indexing = None
    if watcher is not None:
        watcher.start(searcher.model)
        indexing = watcher.state
    app = server_app(searcher, examples, keys, client_concurrency, indexing)
    shown = f"[{host}]" if ":" in host else host
    print(f"tusou: serving {index_dir} on http://{shown}:{port} (JSON API under /api/v1, docs at /docs)", flush=True)
    run(app, listener)


def server_app(searcher: Searcher, examples: list[str] | None = None, keys: Sequence[str] = (),
               client_concurrency: int = CLIENT_CONCURRENCY, indexing: IndexingState | None = None) -> ASGIApp:
    """The whole of `tusou serve` over a loaded `searcher` (bench/serve.py serves one it made itself);
    `indexing`: the folder watcher's state, when it has one."""
    backend = Backend(searcher)
    ui = SearchApp(backend, examples, indexing).build()
    ui.queue(default_concurrency_limit=4)
    return service(backend, ui, keys, client_concurrency, indexing)
