"""Query latency: a Chinese text query → vector → top-10, against the model card's way of running it.

Baseline: taiyi-clip-l14's text tower as IDEA-CCNL's model card runs it — transformers
BertModel with eager attention, float32, one query at a time, every text padded to 77
tokens — then an exact flat scan of the collection. tusou's rows run the same weights
(random: timing does not depend on them) through `Searcher`, tusou's query layer.

    python -m bench.query_latency [--collection 100000] [--queries 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
from pathlib import Path

import faiss
import numpy as np
import torch
from transformers import BertModel

from bench.report import latencies, machine, table
from bench.vectors import ClipLikeSpace
from indexer.commit import Change, create_index
from indexer.plan import Layout
from retrieval.store.records import CatalogItem
from retrieval.store.model_ref import ModelRef
from retrieval.models.model import EmbeddingModel, load_model
from retrieval.search.encoder import QueryEncoder
from retrieval.search.searcher import Searcher
from retrieval.models.text_tower import BertText

MODEL = "taiyi-clip-l14"
SUBJECTS = ["小狗", "小猫", "女孩", "老人", "汽车", "自行车", "花", "房子", "小船", "鸟"]
COLOURS = ["红色的", "白色的", "黑色的", "蓝色的", "黄色的", "绿色的"]
PLACES = ["在草地上", "在海边", "在雪地里", "在城市街道上", "在桌子上", "在湖边"]


def chinese_queries(count: int) -> list[str]:
    """Distinct queries of 6–14 characters, like what people type into an image search."""
    phrases = [f"{c}{s}{p}" for p, c, s in itertools.product(PLACES, COLOURS, SUBJECTS)]
    return [phrases[i] for i in np.random.default_rng(0).permutation(len(phrases))[:count]]


def zipf_stream(queries: list[str], length: int, exponent: float = 1.0) -> list[str]:
    """A query log: a few queries are asked often, most rarely (search logs follow Zipf's law)."""
    weights = 1.0 / np.arange(1, len(queries) + 1) ** exponent
    picks = np.random.default_rng(1).choice(len(queries), length, p=weights / weights.sum())
    return [queries[i] for i in picks]


class ModelCardBaseline:
    """The text tower as the model card runs it, then an exact scan: nothing of tusou's."""

    def __init__(self, model: EmbeddingModel, vectors: np.ndarray):
        self.tokenizer = model.text_model.tokenizer
        self.bert = _eager_copy(model.text_model.bert)
        self.flat = faiss.IndexFlatIP(vectors.shape[1])
        self.flat.add(vectors)

    def encode(self, query: str) -> np.ndarray:
        ids = self.tokenizer([query], padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            vector = self.bert(ids)[1]
        return (vector / vector.norm(dim=-1, keepdim=True)).numpy()

    def search(self, query: str) -> np.ndarray:
        return self.flat.search(self.encode(query), 10)[1][0]


def _eager_copy(bert: BertModel) -> BertModel:
    config = type(bert.config)(**{**bert.config.to_dict(), "attn_implementation": "eager"})
    copy = BertModel(config).eval()
    copy.load_state_dict(bert.state_dict())
    return copy


def _index_dir(folder: Path, model: EmbeddingModel, vectors: np.ndarray) -> Path:
    """A real tusou index directory over the synthetic collection, one segment of the index `auto` picks."""
    items = [CatalogItem(path=f"/collection/{i:07d}.jpg", size=0, mtime_ns=0, sha256="", width=0, height=0, id=i) for i in range(len(vectors))]
    folder.mkdir(parents=True)
    change = Change(items, lambda out: np.copyto(out, vectors, casting="same_kind"), len(items), Layout("auto", None))
    create_index(folder, ModelRef.of(model), vectors.shape[1], change, progress=False)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=int, default=100_000, help="images in the synthetic collection")
    parser.add_argument("--queries", type=int, default=60)
    args = parser.parse_args()

    model = load_model(MODEL, device="cpu", pretrained=False)
    vectors = ClipLikeSpace(dim=model.dim).array(args.collection)
    queries, warmup = chinese_queries(args.queries + 5)[5:], chinese_queries(5)
    baseline = ModelCardBaseline(model, vectors)

    with tempfile.TemporaryDirectory() as folder:
        directory = _index_dir(Path(folder) / "index", model, vectors)
        fp32 = Searcher(directory, model=model, precision="fp32")
        fast = Searcher(directory, model=model, precision="auto")
        int8 = Searcher(directory, model=model, precision="fp32")
        int8_bert = torch.ao.quantization.quantize_dynamic(_eager_copy(model.text_model.bert), {torch.nn.Linear}, dtype=torch.qint8)
        int8.model = dataclasses.replace(model, text_model=BertText(model.text_model.tokenizer, int8_bert, "pooler_output", 77, dynamic_padding=False))
        int8.encoder = QueryEncoder(int8.model)
        reference = np.concatenate([baseline.encode(q) for q in queries])
        truth = [set(baseline.search(q).tolist()) for q in queries]

        rows = []
        base_total = latencies(baseline.search, queries, warmup)
        base_encode = latencies(baseline.encode, queries)
        rows.append(["baseline: model card (eager fp32) + flat scan", *_ms(base_encode, base_total - base_encode, base_total), 1.0,
                     "1", "1", "1"])
        paths = [("tusou, --precision fp32" + (" (= auto on this CPU)" if _dtype(fast) == "float32" else ""), fp32)]
        if _dtype(fast) != "float32":  # auto = fp32 would time the same computation twice
            paths.append((f"tusou default (--precision auto = {_dtype(fast)})", fast))
        for label, searcher in [*paths, ("int8 dynamic quantisation (measured only, not offered)", int8)]:
            searcher.cache.size = 0  # unique queries: nothing to reuse
            encode = latencies(lambda q, s=searcher: s.cache.encode(s.encoder, [q]), queries, warmup)
            vectors_q = np.concatenate([searcher.cache.encode(searcher.encoder, [q]) for q in queries])
            total = latencies(lambda q, s=searcher: s.search_text(q, 10), queries, warmup)
            found = [{r.id for r in searcher.search_text(q, 10)} for q in queries]
            exact = [set(row.tolist()) for row in baseline.flat.search(vectors_q, 10)[1]]
            cosine = float(np.min(np.sum(vectors_q * reference, axis=1)))
            rows.append([label, *_ms(encode, total - encode, total), float(np.median(base_total) / np.median(total)),
                         f"{cosine:.5f}", f"{_overlap(exact, truth):.3f}", f"{_overlap(found, truth):.3f}"])

        rows.append(_cached_row(fast, base_total))
        index = fast.store.view().segments[0].entry

    notes = [
        f"Collection: {args.collection:,} synthetic CLIP-like 768-d vectors; tusou's index: {index.type} "
        f"(auto; {index.search}). {len(queries)} distinct Chinese queries, one at a time; "
        "times in ms; speed-up = baseline p50 / row p50; cosine = lowest over the queries to the baseline's "
        "vectors; top-10 = share of the baseline's exact top-10 found by an exact scan with the row's vectors "
        "(the encoder's effect) and by the row's whole path (index included). The random-weight text vectors "
        "bear no relation to the synthetic images, so their neighbours are near-ties: see the index table "
        "for recall on CLIP-like queries.",
        f"Machine: {machine()}.",
    ]
    print(table("Query latency: text → vector → top-10", ["path", "encode p50", "search p50", "total p50", "total p90",
                                                           "speed-up", "cosine", "top-10 exact", "top-10 path"], rows, notes))


def _cached_row(searcher: Searcher, base_total: np.ndarray) -> list:
    """The default path on a Zipf-shaped query log, where repeated queries come from the cache."""
    stream = zipf_stream(chinese_queries(len(PLACES) * len(COLOURS) * len(SUBJECTS)), 600)
    searcher.cache.size = 1024
    searcher.cache.vectors.clear()
    total = latencies(lambda q: searcher.search_text(q, 10), stream)
    hits = 1 - len(set(stream)) / len(stream)
    return [f"tusou default, a Zipf query log ({hits:.0%} repeats, cached)", "", "", *_ms(total)[2:],
            float(np.median(base_total) / np.median(total)), "", "", ""]


def _ms(encode: np.ndarray, search: np.ndarray | None = None, total: np.ndarray | None = None) -> list[float]:
    if search is None:
        return [0.0, 0.0, float(np.median(encode) * 1000), float(np.percentile(encode, 90) * 1000)]
    return [float(np.median(encode) * 1000), float(np.median(search) * 1000),
            float(np.median(total) * 1000), float(np.percentile(total, 90) * 1000)]


def _overlap(found: list[set[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(f & t) / len(t) for f, t in zip(found, truth)]))


def _dtype(searcher: Searcher) -> str:
    return str(next(searcher.model.text_model.parameters()).dtype).removeprefix("torch.")


if __name__ == "__main__":
    main()
