"""What the app says in words: the index header, each search's status line, each result's caption.

Text that came from a request (a query, a folder) is shown as literal text, never as Markdown or
HTML, and shortened.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

from retrieval.search.filters import Filters
from retrieval.search.query import Query
from retrieval.search.searcher import Searcher, SearchResult

SHOWN_QUERY_CHARS = 40
SHOWN_PATH_CHARS = 30
MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")
SORT_WORDS = {"newest": "最新在前", "oldest": "最早在前"}


def shown_query(text: str, limit: int = SHOWN_QUERY_CHARS) -> str:
    """A query (or other text from outside) as the Markdown status line shows it: short, and as literal text, not markup."""
    short = text if len(text) <= limit else text[:limit] + "…"
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(short, quote=False))


def shown_path(path: str) -> str:
    """A folder as the status line shows it: its end, which tells folders apart, as literal text."""
    return shown_query(path if len(path) <= SHOWN_PATH_CHARS else "…" + path[-SHOWN_PATH_CHARS:])


def narrowing(filters: Filters, sort: str = "score") -> str:
    """The filters and the order of a search, as the status line names them (empty: none)."""
    words = [f"{_day(filters.after)} 起"] if filters.after else []
    words += [f"{_day(filters.before)} 前"] if filters.before else []
    words += [f"在 {'、'.join(shown_path(folder) for folder in filters.folders)}"] if filters.folders else []
    words += [f"类型 {'、'.join(filters.types)}"] if filters.types else []
    words += [f"相机含 {shown_query(filters.camera)}"] if filters.camera else []
    near = filters.near
    words += [f"距 {near.latitude:g},{near.longitude:g} {near.km:g} 公里内"] if near else []
    words += [SORT_WORDS[sort]] if sort in SORT_WORDS else []
    return f"（{'，'.join(words)}）" if words else ""


def _day(moment: str) -> str:
    """A filter's time as typed when it was a day (`2024-06-01`), else in full."""
    return moment.removesuffix("T00:00:00")


def shown_range(found: int, offset: int) -> str:
    """Which results a page shows: `，第 11–20 个`, or that none are left past `offset`."""
    if found:
        return f"，第 {offset + 1}–{offset + found} 个"
    return f"，第 {offset} 个之后没有更多" if offset else ""


def describe_query(query: Query, found: int, folded: int, offset: int = 0) -> str:
    """The status line of a text-tab search: what was asked, within what, how many results, which
    ones, how many folded."""
    asked = " + ".join(([f"“{shown_query(query.text)}”"] if query.text else []) + (["参考图片"] if query.image is not None else []))
    excluded = f"，排除 {'、'.join(shown_query(term) for term in query.negatives)}" if query.negatives else ""
    threshold = f"，分数 ≥ {query.min_score:g}" if query.min_score is not None else ""
    merged = f"（合并了 {folded} 张近似重复）" if folded else ""
    return f"{asked}{excluded}{threshold}{narrowing(query.filters, query.sort)}: {found} 个结果{shown_range(found, offset)}{merged}"


def describe_image_query(query: Query, found: int, offset: int = 0) -> str:
    """The status line of an image-tab search: within what, how many results, which ones."""
    return f"以图搜图{narrowing(query.filters, query.sort)}: {found} 个结果{shown_range(found, offset)}"


def caption(result: SearchResult) -> str:
    """Rank, score, the day it was taken (what a date order sorts by) and the file name; under it, the
    line of text that found it, when its text did."""
    taken = f"  {result.taken[:10]}" if result.taken else ""
    folded = f"  +{result.duplicates} 张近似" if result.duplicates else ""
    line = f"\n文字：{result.ocr.text}" if result.ocr is not None else ""
    return f"#{result.rank}  {result.score:.3f}{taken}  {Path(result.path).name}{folded}{line}"


def precision_of(searcher: Searcher) -> str:
    """What text queries run in: `float32` or `bfloat16` in torch, `onnx float32` or `onnx int8` in ONNX Runtime."""
    return searcher.model.text_model.runs_in


def index_line(searcher: Searcher) -> str:
    """The header: model, images, segments by type (with the lowest tuned recall of the ANN ones),
    query precision and the last update (a format-1 index keeps it in its manifest)."""
    store = searcher.store
    segments = store.view().segments
    types = Counter(segment.entry.type for segment in segments)
    recalls = [s.entry.search["recall_at_10"] for s in segments if s.entry.type != "flat" and "recall_at_10" in s.entry.search]
    recall = f", recall@10 ≥ {min(recalls):.3f}" if recalls else ""
    layout = "、".join(f"{kind} ×{count}" for kind, count in sorted(types.items()))
    precision = precision_of(searcher)
    updated = store.catalog.setting("updated") or store.manifest.updated or "—"
    return (
        f"**模型** `{store.manifest.model.name}` · **图片数** {len(searcher)} · "
        f"**索引** {len(segments)} 段 `{layout or '—'}{recall}` · **查询精度** `{precision}` · **更新时间** {updated}"
    )


WATCH_STATES = {"idle": "空闲", "pending": "等待中", "indexing": "正在索引"}
SHOWN_ERROR_CHARS = 160


def indexing_line(state: dict) -> str:
    """The watcher's line under the header (ui.watch.IndexingState): what it does (n/m while
    embedding), files it waits for, the last commit it made and its last failure."""
    doing = WATCH_STATES.get(state["state"], state["state"])
    if state["state"] == "indexing" and state["total"]:
        doing += f" {state['done']}/{state['total']}"
    words = [f"**文件夹监视** {doing}"]
    words += [f"{state['held']} 个文件仍在写入"] if state["held"] else []
    words += [f"**上次提交** {state['last_commit']}"] if state["last_commit"] else []
    error = state["last_error"]
    words += [f"**上次失败** {shown_query(error, SHOWN_ERROR_CHARS)}"] if error else []
    return " · ".join(words)
