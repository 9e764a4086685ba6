"""A text-only use builds only the text tower; the image tower is built on first need, once, and is
the same tower an eager build gives."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from retrieval import TusouError, load_model
from retrieval.models.families import FAMILIES, family_of, weight_sources
from retrieval.models.registry import MODELS
from tests.imagegen import draw

TEXTS = ["一只猫", "海边的日落"]


@pytest.mark.parametrize("name", ["test-tiny", "demo"])
def test_text_only_use_leaves_the_image_tower_unbuilt_and_it_builds_on_demand_alike(name):
    lazy = load_model(name, device="cpu")
    texts = lazy.encode_texts(TEXTS)
    assert not lazy.image_built
    assert lazy.dtype == torch.float32 and lazy.text_fingerprint()
    assert not lazy.image_built, "dtype and the text fingerprint read the text tower alone"

    eager = load_model(name, device="cpu")
    eager.image_model  # built before any text use
    images = [draw(seed) for seed in range(3)]
    np.testing.assert_allclose(lazy.encode_images(images), eager.encode_images(images), atol=1e-5)
    assert lazy.image_built
    assert lazy.fingerprint() == eager.fingerprint() and lazy.image_fingerprint() == eager.image_fingerprint()
    np.testing.assert_allclose(texts, eager.encode_texts(TEXTS), atol=1e-5)


def test_a_precision_chosen_before_the_image_tower_is_built_applies_to_it():
    fp32 = load_model("test-tiny", device="cpu")
    bf16 = fp32.with_dtype(torch.bfloat16)
    assert not fp32.image_built and not bf16.image_built
    assert bf16.dtype == torch.bfloat16 and {p.dtype for p in bf16.image_model.parameters()} == {torch.bfloat16}
    assert not fp32.image_built, "the copy builds its own image tower; the original is left as it is"
    assert {p.dtype for p in fp32.image_model.parameters()} == {torch.float32}
    images = [draw(seed) for seed in range(3)]
    cosines = (bf16.encode_images(images) * fp32.encode_images(images)).sum(axis=1)
    assert cosines.min() > 0.99


def test_threads_asking_at_once_share_one_image_tower():
    model = load_model("test-tiny", device="cpu")
    start = threading.Barrier(4)
    towers = []

    def ask() -> None:
        start.wait()
        towers.append(model.image_model)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(towers) == 4 and all(tower is towers[0] for tower in towers)


def test_an_image_checkpoint_that_does_not_load_fails_each_time_it_is_needed(tmp_path):
    weights = tmp_path / "image.bin"
    weights.write_bytes(b"not a checkpoint\n")
    model = load_model("test-tiny", device="cpu", image_weights=weights)
    assert model.encode_texts(TEXTS).shape == (2, 64)
    for _ in range(2):
        with pytest.raises(TusouError, match="cannot load image weights") as info:
            model.preprocess
        assert "\n" not in str(info.value) and not model.image_built


def test_every_entry_has_one_family_for_loading_and_sources():
    assert {type(entry.text) for entry in MODELS.values()} == set(FAMILIES)
    for entry in MODELS.values():
        info = weight_sources(entry)
        assert family_of(entry) is FAMILIES[type(entry.text)] and isinstance(info["present"], bool)
        assert info["text"] and info["image"]
