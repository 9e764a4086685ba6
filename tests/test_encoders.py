"""The encoders give exactly what the underlying libraries give, for weights saved to disk."""

from __future__ import annotations

import dataclasses

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizer

from retrieval import TusouError, load_model
from retrieval.models.text_tower import CHAR_VOCAB, BertText
from tests.imagegen import draw

QUERIES = ["猫", "一只在草地上奔跑的小狗", "海边的日落，天空是橙色的，远处有几艘帆船和飞翔的海鸥", "红色"]


def saved_bert(directory, seed: int = 7) -> BertModel:
    """A tiny BERT with its own weights and vocab, saved the way transformers saves models."""
    tokenizer = BertTokenizer.from_pretrained(str(CHAR_VOCAB))
    torch.manual_seed(seed)
    model = BertModel(
        BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=128, max_position_embeddings=80)
    ).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def test_text_vector_is_bert_pooler_output_of_saved_weights(tmp_path):
    reference = saved_bert(tmp_path / "text")
    model = load_model("test-tiny", device="cpu", text_weights=tmp_path / "text")
    tokenizer = BertTokenizer.from_pretrained(str(tmp_path / "text"))
    ids = tokenizer(QUERIES, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference(ids)[1], dim=-1).numpy()
    assert ids.shape == (len(QUERIES), 77)
    np.testing.assert_allclose(model.encode_texts(QUERIES), expected, atol=1e-5)
    assert model.sources["text_weights"] == str((tmp_path / "text").resolve())


@pytest.mark.parametrize("filename", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_image_vector_is_open_clip_encode_image_of_saved_checkpoint(tmp_path, filename):
    torch.manual_seed(11)
    reference, _, preprocess = open_clip.create_model_and_transforms("tusou-tiny-vit")
    reference.eval()
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    model = load_model("test-tiny", device="cpu", image_weights=path)
    images = [draw(seed) for seed in range(5)]
    with torch.no_grad():
        expected = reference.encode_image(torch.stack([preprocess(im) for im in images]))
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(model.encode_images(images), expected, atol=1e-5)
    assert not np.allclose(model.encode_images(images), load_model("test-tiny", device="cpu").encode_images(images))


def test_query_vector_does_not_depend_on_its_batch(tiny_model):
    alone = tiny_model.encode_texts([QUERIES[1]])
    batched = tiny_model.encode_texts(QUERIES)
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_dynamic_padding_switch_passes_the_attention_mask(tiny_model):
    text = tiny_model.text_model
    switched = BertText(text.tokenizer, text.bert, text.feature, text.context_length, dynamic_padding=True)
    dynamic = dataclasses.replace(tiny_model, text_model=switched)
    encoded = dynamic.tokenize(QUERIES)
    assert encoded["input_ids"].shape[1] < 77 and "attention_mask" in encoded
    with torch.no_grad():
        expected = text.bert(**encoded).pooler_output
    np.testing.assert_allclose(dynamic.encode_texts(QUERIES), torch.nn.functional.normalize(expected, dim=-1).numpy(), atol=1e-5)
    assert "attention_mask" not in tiny_model.tokenize(QUERIES)


def test_taiyi_architecture_has_quickgelu_and_768d_on_both_sides():
    model = load_model("taiyi-clip-l14", device="cpu", pretrained=False)
    gelus = {type(m.mlp.gelu).__name__ for m in model.image_model.clip.visual.transformer.resblocks}
    assert gelus == {"QuickGELU"}
    assert model.text_model.bert.config.hidden_size == 768 and model.text_model.bert.config.num_hidden_layers == 12
    assert model.image_size == 224 and model.dim == 768
    assert model.encode_texts(["一张猫的照片。"]).shape == (1, 768)
    assert model.encode_images([draw(0)]).shape == (1, 768)
    assert 0 < model.logit_scale <= 100


def test_random_builds_are_reproducible(tiny_model):
    again = load_model("test-tiny", device="cpu")
    assert again.fingerprint() == tiny_model.fingerprint()
    np.testing.assert_array_equal(again.encode_texts(QUERIES), tiny_model.encode_texts(QUERIES))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"name": "test-tiny", "device": "cuda"}, "torch sees no CUDA device"),
        ({"name": "test-tiny", "text_weights": "/nonexistent"}, "not a transformers model directory"),
        ({"name": "test-tiny", "image_weights": "/nonexistent.bin"}, "no such file"),
    ],
)
def test_loading_mistakes_are_one_clear_line(kwargs, message):
    if kwargs.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    name = kwargs.pop("name")
    with pytest.raises(TusouError, match=message) as info:
        load_model(name, **kwargs)
    assert "\n" not in str(info.value)


def test_checkpoint_of_another_architecture_is_a_clear_error_when_the_image_tower_is_needed(tmp_path):
    torch.manual_seed(0)
    other = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(other.visual.state_dict(), tmp_path / "visual_only.bin")
    model = load_model("test-tiny", device="cpu", image_weights=tmp_path / "visual_only.bin")
    assert model.encode_texts(QUERIES[:1]).shape == (1, 64), "a text query never reads the image checkpoint"
    with pytest.raises(TusouError, match="cannot load image weights") as info:
        model.encode_images([draw(0)])
    assert "\n" not in str(info.value)
