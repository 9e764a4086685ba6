"""The Gradio app: 文搜图, 图搜图 and 零样本标注 over one index.

Safe by default: it binds 127.0.0.1, and it never serves a file by a path that came in a
request. Result images are read from the index's own catalog paths (files, URLs or tar shard
members: retrieval.locations) and sent as thumbnails; "search by this result" uses the stored
vector of the catalog row picked.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.data_classes import ImageData
from PIL import Image

from retrieval.errors import TusouError
from retrieval.images import ImageError, load_query_image, open_image
from retrieval.store.index_info import describe
from retrieval.locations import Unreadable, read_item
from retrieval.search.query import DEDUPE_THRESHOLD, IMAGE_WEIGHT, Query, clean_query, strip_controls
from retrieval.search.searcher import Searcher, SearchResult
from retrieval.search.zero_shot import DEFAULT_TEMPLATES, check_templates, parse_labels, split_list

THUMBNAIL = 256
MAX_UPLOAD = "20mb"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_LABELS = 200
"""More labels than this are refused: each is embedded with every template while the model is held."""
SHOWN_QUERY_CHARS = 40
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")
GENERIC_EXAMPLES = ["海边的日落", "一只在草地上奔跑的小狗", "城市的夜景", "红色的花"]
Gallery = list[tuple[Image.Image, str]]


def shown_query(text: str) -> str:
    """A query as the Markdown status line shows it: short, and as literal text, not markup."""
    short = text if len(text) <= SHOWN_QUERY_CHARS else text[:SHOWN_QUERY_CHARS] + "…"
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(short, quote=False))


def describe_query(query: Query, found: int, folded: int) -> str:
    """The status line of a text-tab search: what was asked, how many results, how many folded."""
    asked = " + ".join(([f"“{shown_query(query.text)}”"] if query.text else []) + (["参考图片"] if query.image is not None else []))
    excluded = f"，排除 {'、'.join(shown_query(term) for term in query.negatives)}" if query.negatives else ""
    threshold = f"，分数 ≥ {query.min_score:g}" if query.min_score is not None else ""
    merged = f"（合并了 {folded} 张近似重复）" if folded else ""
    return f"{asked}{excluded}{threshold}: {found} 个结果{merged}"


def image_message(exc: TusouError) -> str:
    """Why an upload cannot be used, without the server's temporary path of it."""
    return f"无法使用这张图片: {str(exc).split(': ', 1)[-1]}"


def api_result(result: SearchResult, dedupe: bool = False) -> dict:
    """A result as the API returns it. The key is `file`, not `path`: gradio_client takes any
    dict with a `path` for a file to download, and this server (rightly) refuses such requests.
    A de-duplicated search adds how many near-duplicates were folded in, and their files."""
    row = {"rank": result.rank, "score": round(result.score, 6), "id": result.id, "file": result.path}
    if dedupe:
        row.update(duplicates=result.duplicates, duplicate_files=list(result.duplicate_paths))
    return row


def caption(result: SearchResult) -> str:
    folded = f"  +{result.duplicates} 张近似" if result.duplicates else ""
    return f"#{result.rank}  {result.score:.3f}  {Path(result.path).name}{folded}"


class SearchApp:
    """The app's handlers, over one Searcher loaded once per process (safe across threads)."""

    def __init__(self, searcher: Searcher, examples: list[str] | None = None):
        self.searcher = searcher
        self.examples = examples or GENERIC_EXAMPLES
        self._lock = threading.Lock()
        """Held while encoding: a fast tokenizer used from two threads at once fails ("Already borrowed")."""
        self.row_of_id = {item.id: row for row, item in enumerate(searcher.index.items)}

    def _results(self, results: list[SearchResult], dedupe: bool = False) -> tuple[Gallery, list[dict]]:
        gallery = []
        for result in results:
            try:
                thumbnail = open_image(read_item(result.path), min_size=THUMBNAIL)
            except (ImageError, Unreadable):
                thumbnail = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (235, 235, 235))
            thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
            gallery.append((thumbnail, caption(result)))
        return gallery, [api_result(result, dedupe) for result in results]

    def _picture(self, upload: str | bytes) -> Image.Image | str:
        """The upload decoded for the image tower, or the line that says why it cannot be used: the
        index's image tower (other weights, or weights not on this machine) or the upload itself."""
        try:
            model = self.searcher.image_model()
        except TusouError as exc:
            return str(exc)
        try:
            return load_query_image(upload, min_size=model.image_size)
        except TusouError as exc:
            return image_message(exc)

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
    ) -> tuple[Gallery, list[dict], str]:
        """A text query, optionally mixed with a reference image, with negative terms (comma-separated),
        a minimum score (-1: none) and near-duplicate folding; a reference image alone also searches.
        Every control has a default, so gradio_client callers may send only (query, k)."""
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
                            min_score=None if min_score <= -1 else float(min_score), dedupe=float(threshold) if dedupe else None)
        except TusouError as exc:
            return [], [], str(exc)
        with self._lock:
            results = self.searcher.search(request, int(k))
        return *self._results(results, dedupe), describe_query(request, len(results), sum(r.duplicates for r in results))

    def search_image(self, upload: str | bytes | None, k: int) -> tuple[Gallery, list[dict], str]:
        if not upload:
            return [], [], "请上传一张图片 (upload an image)."
        picture = self._picture(upload)
        if isinstance(picture, str):
            return [], [], picture
        with self._lock:
            results = self.searcher.search_image(picture, int(k))
        return *self._results(results), f"以图搜图: {len(results)} 个结果"

    def search_result(self, results: list[dict], k: int, event: gr.SelectData) -> tuple[Gallery, list[dict], str]:
        """Search by a result picked in a gallery: by its catalog row's stored vector, not by a path."""
        if not results or not (0 <= event.index < len(results)):
            return [], [], "请先搜索，再点选一个结果。"
        row = self.row_of_id.get(int(results[event.index]["id"]))
        if row is None:
            return [], [], "这个结果已不在索引中。"
        vector = np.asarray(self.searcher.index.embeddings[row], dtype=np.float32)[None]
        found = self.searcher.search_vectors(vector / np.linalg.norm(vector), int(k))[0]
        return *self._results(found), f"与 #{results[event.index]['rank']} 相似: {len(found)} 个结果"

    def label(self, upload: str | bytes | None, labels: str, template: str) -> tuple[dict[str, float], str]:
        if not upload:
            return {}, "请上传一张图片 (upload an image)."
        try:
            # Controls and unpaired surrogates dropped as in a query: the tokenizer raises on the latter.
            names = parse_labels(strip_controls(labels or ""))
            if len(names) > MAX_LABELS:
                raise TusouError(f"最多 {MAX_LABELS} 个标签 (at most {MAX_LABELS} labels), 收到 {len(names)} 个")
            template = strip_controls(template or "").strip()
            templates = check_templates([template]) if template else None
        except TusouError as exc:
            return {}, str(exc)
        picture = self._picture(upload)
        if isinstance(picture, str):
            return {}, picture
        try:
            with self._lock:
                scores = self.searcher.label(picture, names, templates)
        except TusouError as exc:
            return {}, str(exc)
        return {score.label: score.probability for score in scores}, f"{len(scores)} 个标签"

    def info_markdown(self) -> str:
        manifest = self.searcher.index.manifest
        precision = str(self.searcher.model.dtype).removeprefix("torch.")
        return (
            f"**模型** `{manifest.model.name}` · **图片数** {manifest.count} · "
            f"**索引** `{describe(manifest.index)}` · **查询精度** `{precision}` · **建立时间** {manifest.updated}"
        )

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="tusou 图搜") as app:
            gr.Markdown("# tusou 图搜\n用中文或图片搜索图片。")
            gr.Markdown(self.info_markdown(), elem_id="index-info")
            with gr.Tab("文搜图", id="text"):
                with gr.Row():
                    query = gr.Textbox(label="查询", placeholder="例如：海边的日落", scale=4, elem_id="query")
                    k_text = _k_slider()
                with gr.Accordion("更多条件：参考图片、排除、最低分数、合并近似重复", open=False, elem_id="query-options"):
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
                go = gr.Button("搜索", variant="primary", elem_id="search-text")
                gr.Examples(self.examples, inputs=[query], label="示例查询")
                text_status, text_gallery, text_results = _results_panel("text", "结果（点选一张以它再搜）")
            with gr.Tab("图搜图", id="image"):
                with gr.Row():
                    upload = _upload("上传图片", "image-upload")
                    k_image = _k_slider()
                go_image = gr.Button("以图搜图", variant="primary", elem_id="search-image")
                image_status, image_gallery, image_results = _results_panel("image", "结果（点选一张以它再搜）")
            with gr.Tab("零样本标注", id="label"):
                with gr.Row():
                    label_upload = _upload("图片", "label-upload")
                    with gr.Column():
                        labels = gr.Textbox(label="标签（逗号分隔）", value="猫,狗,老虎", elem_id="labels")
                        template = gr.Textbox(label="模板（可选，含 {}）", placeholder=DEFAULT_TEMPLATES[0], elem_id="template")
                        go_label = gr.Button("标注", variant="primary", elem_id="run-label")
                label_status = gr.Markdown(elem_id="label-status")
                label_out = gr.Label(label="概率", num_top_classes=10, elem_id="label-out")

            text_outputs = [text_gallery, text_results, text_status]
            image_outputs = [image_gallery, image_results, image_status]
            text_inputs = [query, k_text, reference, weight, negatives, min_score, dedupe, threshold]
            go.click(self.search_text, text_inputs, text_outputs, api_name="search_text")
            for box in (query, negatives):  # Enter in either box searches
                box.submit(self.search_text, text_inputs, text_outputs, api_visibility="private")
            go_image.click(self.search_image, [upload, k_image], image_outputs, api_name="search_image")
            text_gallery.select(self.search_result, [text_results, k_text], text_outputs, api_visibility="private")
            image_gallery.select(self.search_result, [image_results, k_image], image_outputs, api_visibility="private")
            go_label.click(self.label, [label_upload, labels, template], [label_out, label_status], api_name="label")
        return app


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


def _results_panel(prefix: str, label: str) -> tuple[gr.Markdown, gr.Gallery, gr.JSON]:
    """Status line, result gallery, and the results as data (which rows a click refers to)."""
    status = gr.Markdown(elem_id=f"{prefix}-status")
    gallery = gr.Gallery(label=label, columns=6, height="auto", object_fit="contain", elem_id=f"{prefix}-gallery")
    return status, gallery, gr.JSON(visible=False)


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          examples: list[str] | None = None, block: bool = True, precision: str = "auto") -> gr.Blocks:
    """Load the index and its model once, then serve the app (binding 127.0.0.1 unless told)."""
    # tusou's decoder checks the declared size before decoding anything (MAX_PIXELS), and says
    # so; Pillow's own, lower bomb limit would make some images the index accepts an error here.
    Image.MAX_IMAGE_PIXELS = None
    app = SearchApp(Searcher(index_dir, device=device, precision=precision), examples).build()
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, prevent_thread_lock=not block,
               show_error=False, quiet=not block)
    return app
