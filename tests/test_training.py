"""Contrastive training: the loss, a few real steps on a tiny set, checkpoints and resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import load_model
from retrieval.datasets.cnclip_layout import read_captions, read_images, split_paths
from retrieval.datasets.synthetic import make_split, write_dataset
from train.contrastive import TrainConfig, checkpoint_dir, contrastive_loss, train


def test_loss_is_clip_loss_with_one_positive_and_spares_other_true_matches():
    torch.manual_seed(0)
    text, image = torch.randn(4, 8), torch.randn(4, 8)
    scale = torch.tensor(10.0)
    eye = torch.eye(4, dtype=torch.bool)
    logits = scale * torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(image, dim=-1).T
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(4)) + torch.nn.functional.cross_entropy(logits.T, torch.arange(4))) / 2
    assert contrastive_loss(text, image, scale, eye).item() == pytest.approx(clip.item(), rel=1e-6)
    # text 0 also truly describes image 1: making image 1 look like text 0 must not be penalised
    both = eye.clone()
    both[0, 1] = True
    image_like_text = image.clone()
    image_like_text[1] = text[0]
    assert contrastive_loss(text, image_like_text, scale, both) < contrastive_loss(text, image_like_text, scale, eye)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_dataset(root, {"train": 96, "valid": 16, "test": 16}, seed=3, image_size=32, captions_per_image={"train": 2})
    return root


def config(tiny_set, out, **overrides) -> TrainConfig:
    settings = dict(model="test-tiny", data=tiny_set, out=out, epochs=3, batch_size=32, lr=3e-3, warmup_steps=2,
                    device="cpu", checkpoint_every=4, seed=1)
    return TrainConfig(**settings | overrides)


def test_a_few_steps_lower_the_loss_and_save_a_loadable_checkpoint(tmp_path):
    data = tmp_path / "one-batch"
    write_dataset(data, {"train": 16}, seed=4, image_size=64, captions_per_image={"train": 2})
    settings = dict(model="demo", pretrained=True, data=data, out=tmp_path / "run", epochs=12, batch_size=32,
                    lr=3e-4, warmup_steps=1, device="cpu", checkpoint_every=100, seed=0)
    log = train(TrainConfig(**settings), progress=False)
    losses = [row["loss"] for row in log]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses
    saved = checkpoint_dir(tmp_path / "run")
    model = load_model("demo", device="cpu", text_weights=saved / "text", image_weights=saved / "image.safetensors")
    shipped = load_model("demo", device="cpu")
    assert model.fingerprint() != shipped.fingerprint()
    assert not np.allclose(model.encode_texts(["红色的圆形"]), shipped.encode_texts(["红色的圆形"]))


def test_training_is_deterministic_and_resumes_exactly(tiny_set, tmp_path):
    whole = train(config(tiny_set, tmp_path / "whole"), progress=False)
    train(config(tiny_set, tmp_path / "halves", max_steps=5), progress=False)  # stops after a checkpoint at step 4
    resumed = train(config(tiny_set, tmp_path / "halves"), progress=False)
    assert [row["loss"] for row in resumed] == pytest.approx([row["loss"] for row in whole], abs=1e-4)
    a, b = (checkpoint_dir(tmp_path / name) / "image.safetensors" for name in ("whole", "halves"))
    ma = load_model("test-tiny", device="cpu", image_weights=a)
    mb = load_model("test-tiny", device="cpu", image_weights=b)
    assert ma.fingerprint() == mb.fingerprint()


def test_frozen_image_tower_trains_only_the_text_tower(tiny_set, tmp_path):
    before = load_model("test-tiny", device="cpu")
    train(config(tiny_set, tmp_path / "frozen", freeze_image=True, epochs=1), progress=False)
    saved = checkpoint_dir(tmp_path / "frozen")
    after = load_model("test-tiny", device="cpu", text_weights=saved / "text", image_weights=saved / "image.safetensors")
    for (name, a), (_, b) in zip(before.image_model.state_dict().items(), after.image_model.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(before.text_model.bert.embeddings.word_embeddings.weight, after.text_model.bert.embeddings.word_embeddings.weight)


def test_synthetic_set_is_deterministic_and_its_image_ids_are_fair(tiny_set, tmp_path):
    again = tmp_path / "again"
    write_dataset(again, {"train": 96, "valid": 16, "test": 16}, seed=3, image_size=32, captions_per_image={"train": 2})
    for split in ("train", "valid", "test"):
        for first, second in zip(split_paths(tiny_set, split), split_paths(again, split)):
            assert first.read_bytes() == second.read_bytes()
    split = make_split(300, 1, seed=9, image_size=32)
    for caption in split.captions:
        described = [i for i, scene in enumerate(split.scenes) if _describes(caption.text, scene)]
        assert set(described) <= set(caption.image_ids)
    assert len(dict(read_images(split_paths(tiny_set, "train")[0]))) == 96
    assert len(read_captions(split_paths(tiny_set, "train")[1])) == 192


def _describes(text: str, scene) -> bool:
    """A weak independent check: a one-shape caption naming a colour and shape the scene has
    in one shape on its own (no count, position, size or background words) describes it."""
    extra = ("两", "三", "左", "右", "上", "下", "中间", "大", "小", "背景", "和")
    if scene.layout != "single" or any(word in text for word in extra):
        return False
    shape = scene.shapes[0]
    return shape.colour in text and shape.kind in text
