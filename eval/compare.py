"""Several models on one benchmark: weights checked up front, then each loaded, evaluated and freed in turn."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

import torch
from huggingface_hub import constants

from eval.run import EvalResult
from retrieval.models import hub
from retrieval.errors import TusouError
from retrieval.models.families import weight_sources
from retrieval.models.model import EmbeddingModel
from retrieval.models.registry import resolve_model


def check_weights(names: list[str]) -> None:
    """Fail at once when a model's weights are neither on this machine nor downloadable.

    This reads only the local caches (`weight_sources`, no network, no model built), so a list
    whose third model is missing fails in a second instead of after the first two have run;
    loading every model first to find out would either hold them all in memory or load each twice.
    Weights that are missing but downloadable are fetched when their model's turn comes.
    """
    specs = {name: resolve_model(name) for name in names}
    missing = [name for name, spec in specs.items() if not weight_sources(spec.entry, spec.text_weights)["present"]]
    if not missing:
        return
    offline = hub.hub_offline()
    if offline or not hub.hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub is unreachable"
        listed = ", ".join(repr(name) for name in missing)
        raise TusouError(
            f"weights of {listed} are not on this machine and {why}: leave {'it' if len(missing) == 1 else 'them'} out of --model, "
            f"copy the weights into {constants.HF_HUB_CACHE}, or go online once (`tusou models` shows where each comes from)"
        )


def evaluate_each(
    names: list[str], load: Callable[[str], EmbeddingModel], evaluate: Callable[[EmbeddingModel], EvalResult], progress: bool = True
) -> list[EvalResult]:
    """Each model loaded, evaluated and released before the next one loads, so only one set of
    towers is ever in memory (a ViT-H pair alone is several GB)."""
    results = []
    for number, name in enumerate(names, 1):
        if progress:
            print(f"tusou: model {number} of {len(names)}: {name}", file=sys.stderr, flush=True)
        model = load(name)
        results.append(evaluate(model))
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results
