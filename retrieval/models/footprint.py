"""What a registry entry costs to run: parameters per tower, and CPU time per text query.

Both come from the entry's real architecture with random weights, so neither needs a download:
the weights' values change neither the count nor the time a query takes. The counts are also
stored in the registry (`ModelEntry.parameters`), so listing them builds nothing; this module
imports torch only when it builds, so `tusou models` can format them without it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrieval.models.registry import ModelEntry, ParameterCounts, StudentTower, TextTower

if TYPE_CHECKING:
    import torch

    from retrieval.models.model import EmbeddingModel

QUERY = "一只小狗在草地上奔跑"
RUNS = 5


@dataclass
class Footprint:
    parameters: ParameterCounts
    text_query_ms: float | None = None
    """Median wall time of one single-query `encode_texts` call on the CPU in float32, when measured."""


def _uninitialised(name: str) -> EmbeddingModel:
    """The entry's towers at their real size with weights left uninitialised: the memory is
    reserved but never written, so even a ViT-H pair builds in a fraction of a second."""
    from transformers.initialization import no_init_weights

    from retrieval.models.model import load_model

    with no_init_weights():
        return load_model(name, pretrained=False, device="cpu")


def _own_parameters(tower: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters that define a tower (its `weights()` that are parameters, each once).

    Towers that share one model (Chinese-CLIP, multilingual open_clip) each count only their side."""
    parameters = {p.data_ptr() for p in tower.parameters()}
    return list({t.data_ptr(): t for t in tower.weights().values() if t.data_ptr() in parameters}.values())


def _median_ms(call: Callable[[], object], runs: int) -> float:
    call()  # warm-up: first-call allocations and kernel choices
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def text_to_time(name: str) -> EmbeddingModel:
    """The entry at its real size, built fast, for timing its text tower: only the text tower is given
    values (normal, std 0.02), since uninitialised memory may hold NaNs or denormals, which the CPU
    computes more slowly. The image tower is never written, so a ViT-H entry costs only its text
    tower's memory."""
    import torch

    model = _uninitialised(name)
    with torch.no_grad():
        for tensor in _own_parameters(model.text_model):
            tensor.normal_(0.0, 0.02)
    return model


def measure(name: str, latency: bool = False, runs: int = RUNS) -> Footprint:
    """Parameters of both towers; with `latency`, the median of `runs` single-query text encodings
    (on `text_to_time`'s build)."""
    model = text_to_time(name) if latency else _uninitialised(name)
    text, image = _own_parameters(model.text_model), _own_parameters(model.image_model)
    footprint = Footprint(ParameterCounts(sum(t.numel() for t in text), sum(t.numel() for t in image)))
    if latency:
        footprint.text_query_ms = _median_ms(lambda: model.encode_texts([QUERY]), runs)
    return footprint


def text_flops(entry: ModelEntry, tokens: int | None = None) -> int | None:
    """Floating-point operations (2 per multiply-add) of one text query through a BERT text tower at
    `tokens` tokens (default: its context length, to which Taiyi-CLIP pads every query): what a CPU
    query's time follows. None for the other families (their towers are not described by a BertConfig)."""
    spec = entry.text
    if not isinstance(spec, (TextTower, StudentTower)):
        return None
    config, length = spec.bert, tokens or spec.context_length
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    layer = 2 * length * (4 * hidden * hidden + 2 * hidden * inner) + 4 * length * length * hidden  # projections, feed-forward; attention
    head = 2 * hidden * (entry.dim if isinstance(spec, StudentTower) or spec.feature == "logits" else hidden)  # projection or pooler
    return config["num_hidden_layers"] * layer + head


def format_count(count: int) -> str:
    """102267648 → 102M, 1455488 → 1.5M, 117760 → 118K."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.{0 if count >= 10 * size else 1}f}{unit}"
    return str(count)
