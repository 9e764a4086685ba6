"""`tusou eval --dataset ocr-synthetic`: text→image search on the OCR benchmark set, each way and merged.

The set (eval.ocr_synthetic; drawn into --data first when the folder holds none) is indexed with
`--ocr` by the build itself, into the data folder, once per model (a re-run reads nothing again),
together with SHAPE_SCENES pictures of the synthetic shape scenes (retrieval.datasets.synthetic,
what the `demo` model was trained on; drawn into `shapes/`): their captions are queries that name
no text, which a merged ranking must answer as well as the visual one does (the `_shapes` group).
Each query runs four ways: `text` (the text matches alone), `visual` (CLIP alone), `both` (one
ranking, the calibrated lift: retrieval.search.fusion) and `both_rrf` (reciprocal rank fusion). A
query is a hit at k when any picture holding its target is in the first k. Reported, in percent:
hit@1/5/10 of each way over all queries, over those whose source line is 20 px or more, and by
kind (exact, short, traditional, typo); and the OCR's own reading of the set (eval.ocr_reading).
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.ocr_reading import LARGE_PX, score_reading
from eval.ocr_synthetic import generate, read_jsonl
from retrieval.datasets.synthetic import make_split
from retrieval.models.model import EmbeddingModel
from retrieval.search.query import Query
from retrieval.search.searcher import Searcher
from retrieval.store.catalog import Catalog
from retrieval.store.store import CATALOG

KS = (1, 5, 10)
WAYS = {"text": ("text", "calibrated"), "visual": ("visual", "calibrated"), "both": ("both", "calibrated"), "both_rrf": ("both", "rrf")}
"""Each way a query runs: Query.match and Query.fusion."""
KINDS = ("exact", "short", "traditional", "typo")
DRAWN = 200
"""Pictures drawn into an empty --data folder (seed 0; `python -m eval.ocr_synthetic` draws others)."""
SHAPE_SCENES = 100
SHAPES_SEED = 2002
"""Not the demo's training seeds (train.demo): scenes it has not seen."""


def evaluate_ocr_search(model: EmbeddingModel, data: Path, batch_size: int = 32, progress: bool = True):
    """The figures of `model` on the set in `data`, as eval.run.EvalResult (no predictions)."""
    from eval.run import EvalResult, _settings
    from indexer import BuildPlan, build_index

    if not (data / "queries.jsonl").is_file():
        generate(data, DRAWN)
    if not (data / "shapes" / "queries.jsonl").is_file():
        draw_shapes(data / "shapes", SHAPE_SCENES)
    pictures, queries = read_jsonl(data / "images.jsonl"), read_jsonl(data / "queries.jsonl") + read_jsonl(data / "shapes" / "queries.jsonl")
    index = data / f"index-{model.name}-{model.fingerprint()[:12]}"
    build_index(BuildPlan([data / "images", data / "shapes"], index, model=model, batch_size=batch_size, ocr=True, progress=progress))
    searcher = Searcher(index, model=model)
    try:
        ranks = {way: [_first_hit(searcher, query, *how) for query in queries] for way, how in WAYS.items()}
    finally:
        searcher.close()
    metrics = {}
    groups = {"": [q["kind"] in KINDS for q in queries], f"_{LARGE_PX}px": [q["kind"] in KINDS and q["size"] >= LARGE_PX for q in queries]}
    groups |= {f"_{kind}": [q["kind"] == kind for q in queries] for kind in (*KINDS, "shapes")}
    for group, chosen in groups.items():
        for way, found in ranks.items():
            picked = [rank for rank, keep in zip(found, chosen) if keep]
            metrics |= {f"{way}_hit@{k}{group}": 100 * sum(r is not None and r <= k for r in picked) / max(1, len(picked)) for k in KS}
    reading = score_reading(pictures, _lines_read(index))
    metrics |= {"ocr_exact_read": 100 * reading["exact_read"], "ocr_char_accuracy": 100 * reading["char_accuracy"],
                f"ocr_char_accuracy_{LARGE_PX}px": 100 * reading[f"char_accuracy_{LARGE_PX}px"]}
    counts = {"pictures": len(pictures), "photos": reading["photos"], "lines": reading["lines"], "queries": len(queries)}
    counts |= {kind: sum(q["kind"] == kind for q in queries) for kind in (*KINDS, "shapes")}
    results = {
        "dataset": "ocr-synthetic", "split": "all", "model": {"name": model.name, "fingerprint": model.fingerprint()},
        "counts": counts, "metrics": metrics, "published": {}, "published_source": None, "missing": [],
        "settings": _settings(model) | {"index": str(index), "lines_per_photo": reading["lines_per_photo"]},
    }
    return EvalResult(results, [])


def draw_shapes(folder: Path, count: int) -> None:
    """`count` shape scenes as `folder/shape-NNNN.png`, and their captions as queries (`queries.jsonl`)."""
    split = make_split(count, 1, SHAPES_SEED, 224)
    folder.mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(split.images):
        (folder / f"shape-{number:04d}.png").write_bytes(image)
    rows = [{"query": c.text, "kind": "shapes", "answers": [f"shape-{i:04d}.png" for i in c.image_ids], "size": 0} for c in split.captions]
    (folder / "queries.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def _first_hit(searcher: Searcher, query: dict, match: str, fusion: str) -> int | None:
    """The rank of the first result holding the query's target, within the first max(KS)."""
    results = searcher.search(Query(text=query["query"], match=match, fusion=fusion), k=max(KS))
    answers = set(query["answers"])
    return next((r.rank for r in results if Path(r.path).name in answers), None)


def _lines_read(index: Path) -> dict[str, list[str]]:
    """Picture name → the lines the build read in it."""
    catalog = Catalog(index / CATALOG)
    try:
        rows = catalog.db.execute("SELECT i.path, l.text FROM ocr_lines l JOIN items i ON i.id = l.item ORDER BY l.item, l.line")
        read: dict[str, list[str]] = {}
        for path, text in rows:
            read.setdefault(Path(path).name, []).append(text)
        return read
    finally:
        catalog.close()
