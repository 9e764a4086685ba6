"""Every registry entry loads offline from a checkpoint saved in its real format, at a tiny size,
and gives the vectors of its library's own forward pass, called the way its model card calls it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open_clip
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel, XLMRobertaConfig

from retrieval import TusouError, load_model
from retrieval.models.image_tower import checkpoint
from retrieval.models.registry import MODELS, ChineseClip, TextTower, get_entry
from retrieval.models.text_tower import CHAR_VOCAB, load_text_tower
from tests.test_hub_loading import put_in_cache

BERT_ENTRIES = [name for name, entry in MODELS.items() if isinstance(entry.text, TextTower) and entry.text.hub_id]
CHINESE_CLIP_ENTRIES = [name for name, entry in MODELS.items() if isinstance(entry.text, ChineseClip)]
MIXED = ["海边的日落", "a dog 在草地上奔跑", "一只猫"]


def normalised(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features.float(), dim=-1).detach().numpy()


def photo(width: int = 300, height: int = 160, seed: int = 0) -> Image.Image:
    """A non-square image, so a center crop and a square resize give different pixels."""
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[:, : width // 3] = (200, 30, 30)
    return Image.fromarray(pixels)


def test_the_registry_holds_every_release():
    assert {"taiyi-clip-l14", "taiyi-clip-h14", "taiyi-clip-b32", "taiyi-clip-large-l14", "cn-clip-b16", "cn-clip-l14",
            "cn-clip-l14-336", "cn-clip-h14", "xlmr-h14"} <= set(MODELS)
    assert get_entry("taiyi-clip-h14").image.arch == "ViT-H-14" and get_entry("taiyi-clip-h14").image.pretrained == "laion2b_s32b_b79k"
    assert get_entry("taiyi-clip-b32").text.feature == "logits" and get_entry("taiyi-clip-b32").dim == 512


@pytest.mark.parametrize("name", BERT_ENTRIES)
def test_taiyi_text_towers_match_their_model_cards(tmp_path, hub_cache, name):
    """BertModel → pooler output, padded to 77 without a mask; BertForSequenceClassification →
    logits of each text alone (the cards' single-query call), which the batched, masked call must equal."""
    entry = get_entry(name)
    tokenizer = BertTokenizer.from_pretrained(str(CHAR_VOCAB))
    torch.manual_seed(3)
    hidden = entry.dim if entry.text.feature == "pooler_output" else 32  # the pooler output is the hidden state
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=80, num_labels=entry.dim)
    reference = getattr(transformers, entry.text.architecture)(config).eval()
    reference.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    put_in_cache(hub_cache, entry.text.hub_id, tmp_path / "text")

    tower = load_text_tower(entry, pretrained=True, text_weights=None)
    inputs = tower.tokenize(MIXED)
    with torch.no_grad():
        got = tower(**inputs).numpy()
        if entry.text.feature == "pooler_output":
            ids = tokenizer(MIXED, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
            expected = reference(ids)[1].numpy()
        else:
            expected = np.concatenate([reference(tokenizer([t], return_tensors="pt")["input_ids"]).logits.numpy() for t in MIXED])
    assert got.shape == (len(MIXED), entry.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", BERT_ENTRIES)
def test_taiyi_image_towers_resolve_their_open_clip_checkpoints(tmp_path, hub_cache, name):
    entry = get_entry(name)
    cfg = open_clip.get_pretrained_cfg(entry.image.arch, entry.image.pretrained)
    repo = cfg["hf_hub"].rstrip("/")
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"stand-in: only its path is resolved here")
    put_in_cache(hub_cache, repo, weights)
    path, preprocess = checkpoint(entry.name, entry.image, image_weights=None)
    assert path.name == "open_clip_model.safetensors" and repo.replace("/", "--") in str(path)
    assert preprocess["mean"] == pytest.approx(cfg["mean"])


def saved_chinese_clip(directory, entry, seed: int = 5) -> ChineseCLIPModel:
    """A ChineseCLIPModel at a tiny width but the entry's projection size and image size, with a
    vocab, written by save_pretrained as the OFA-Sys repos hold it."""
    tokenizer = BertTokenizer.from_pretrained(str(CHAR_VOCAB))
    vision = entry.text.config["vision_config"]
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           patch_size=vision["patch_size"] * 4, image_size=vision["image_size"]),
        projection_dim=entry.dim,
    )
    torch.manual_seed(seed)
    model = ChineseCLIPModel(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


@pytest.mark.parametrize("name", CHINESE_CLIP_ENTRIES)
def test_chinese_clip_entries_match_the_library_with_chinese_clips_preprocessing(tmp_path, hub_cache, name):
    entry = get_entry(name)
    reference = saved_chinese_clip(tmp_path / "cn", entry)
    put_in_cache(hub_cache, entry.text.hub_id, tmp_path / "cn")
    model = load_model(name, device="cpu")

    tokenizer = BertTokenizer.from_pretrained(str(tmp_path / "cn"))
    inputs = tokenizer(MIXED, padding="max_length", max_length=52, truncation=True, return_tensors="pt")
    size = entry.text.config["vision_config"]["image_size"]
    images = [photo(), photo(120, 260, seed=1)]
    # Chinese-CLIP's transform, written out with PIL and numpy: a square bicubic resize, no crop
    mean, std = np.array(open_clip.OPENAI_DATASET_MEAN), np.array(open_clip.OPENAI_DATASET_STD)
    pixels = torch.tensor(np.stack([
        ((np.asarray(im.resize((size, size), Image.BICUBIC), np.float32) / 255 - mean) / std).transpose(2, 0, 1) for im in images
    ]), dtype=torch.float32)
    with torch.no_grad():
        text = reference.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output
        image = reference.get_image_features(pixel_values=pixels).pooler_output
    np.testing.assert_allclose(model.encode_texts(MIXED), normalised(text), atol=1e-5)
    np.testing.assert_allclose(model.encode_images(images), normalised(image), atol=1e-4)
    assert model.dim == entry.dim and model.image_size == size
    np.testing.assert_allclose(model.encode_texts(MIXED[1:2])[0], model.encode_texts(MIXED)[1], atol=1e-5)  # batch-invariant
    assert model.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))


def test_a_chinese_clip_directory_loads_as_text_weights_and_image_weights_are_refused(tmp_path):
    entry = get_entry("cn-clip-b16")
    saved_chinese_clip(tmp_path / "cn", entry)
    assert load_model("cn-clip-b16", device="cpu", text_weights=tmp_path / "cn").encode_texts(["猫"]).shape == (1, 512)
    with pytest.raises(TusouError, match="--text-weights DIR"):
        load_model("cn-clip-b16", device="cpu", text_weights=tmp_path / "cn", image_weights=tmp_path / "cn" / "model.safetensors")


def test_chinese_clip_random_build_has_the_real_architecture():
    model = load_model("cn-clip-b16", device="cpu", pretrained=False)
    assert model.image_built, "both towers come from one checkpoint: built together"
    config = model.text_model.clip.config
    assert (config.text_config.hidden_size, config.vision_config.hidden_size, config.vision_config.patch_size) == (768, 768, 16)
    assert model.encode_texts(["一只猫"]).shape == (1, 512) and model.encode_images([photo()]).shape == (1, 512)
    assert load_model("cn-clip-b16", device="cpu", pretrained=False).fingerprint() == model.fingerprint()


def tiny_xlm_roberta(directory) -> None:
    """A tiny XLM-R config and fast tokenizer, saved as FacebookAI/xlm-roberta-large holds them."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = [(p, 0.0) for p in specials] + [(ch, -1.0 - i / 100) for i, ch in enumerate("▁海边的日落猫狗在草地上奔跑一只adogrun")] + [("<mask>", 0.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = transformers.XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tokenizer.save_pretrained(directory)
    XLMRobertaConfig(vocab_size=len(pieces), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=80, type_vocab_size=1, pad_token_id=1).save_pretrained(directory)


def test_multilingual_open_clip_matches_open_clip(tmp_path, hub_cache, monkeypatch):
    """xlmr-h14 at a tiny size: the same open_clip class (CustomTextCLIP with an HF text tower), an
    architecture that differs only in widths and depths, loaded through the entry's own code."""
    entry = get_entry("xlmr-h14")
    real = open_clip.get_model_config(entry.text.arch)
    tiny = {"embed_dim": entry.dim, "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 56},
            "text_cfg": real["text_cfg"]}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tusou-test-xlmr.json").write_text(json.dumps(tiny))
    open_clip.add_model_config(tmp_path / "configs")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tusou-test-xlmr", open_clip.pretrained._PRETRAINED[entry.text.arch])
    spec = dataclasses.replace(entry.text, arch="tusou-test-xlmr")
    monkeypatch.setitem(MODELS, "xlmr-h14", dataclasses.replace(entry, text=spec, image=spec))

    tiny_xlm_roberta(tmp_path / "xlmr")
    put_in_cache(hub_cache, entry.text.text_hub_id, tmp_path / "xlmr")
    text_cfg = {**real["text_cfg"], "hf_model_name": str(tmp_path / "xlmr"), "hf_tokenizer_name": str(tmp_path / "xlmr"), "hf_model_pretrained": False}
    torch.manual_seed(9)
    reference = open_clip.create_model("tusou-test-xlmr", text_cfg=text_cfg).eval()
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, weights)
    put_in_cache(hub_cache, "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k", weights)

    model = load_model("xlmr-h14", device="cpu")
    tokens = open_clip.tokenizer.HFTokenizer(str(tmp_path / "xlmr"), context_length=77)(MIXED)
    preprocess = open_clip.image_transform(224, is_train=False)
    images = [photo(), photo(120, 260, seed=1)]
    with torch.no_grad():
        text = reference.encode_text(tokens)
        image = reference.encode_image(torch.stack([preprocess(im) for im in images]))
    np.testing.assert_allclose(model.encode_texts(MIXED), normalised(text), atol=1e-5)
    np.testing.assert_allclose(model.encode_images(images), normalised(image), atol=1e-5)
    assert model.dim == 1024


def test_missing_weights_of_each_family_name_the_fix(hub_cache):
    for name in ("cn-clip-l14", "xlmr-h14", "taiyi-clip-b32"):
        with pytest.raises(TusouError, match="HF_HUB_OFFLINE is set: model .* needs it; use --model demo"):
            load_model(name, device="cpu")


def test_an_index_records_its_model_so_mixing_models_is_an_error(tmp_path, image_folder):
    from indexer import BuildPlan, build_index

    build_index(BuildPlan([image_folder], tmp_path / "index", "test-tiny", device="cpu", workers=0, progress=False))
    with pytest.raises(TusouError, match="built with model 'test-tiny', not 'cn-clip-b16'"):
        build_index(BuildPlan([image_folder], tmp_path / "index", "cn-clip-b16", device="cpu", workers=0, progress=False))


def test_the_registry_knows_where_open_clip_keeps_each_pretrained_tag():
    """The hub locations are registry data (so describing a model imports no open_clip); they must
    stay what open_clip's own pretrained table says."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    from retrieval.models.families import OPEN_CLIP_WEIGHT_FILES

    assert OPEN_CLIP_WEIGHT_FILES == [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    pretrained = {entry.name: entry.image for entry in MODELS.values() if getattr(entry.image, "pretrained", None)}
    assert {"taiyi-clip-l14", "taiyi-clip-h14", "taiyi-clip-b32", "xlmr-h14"} <= set(pretrained)
    for name, spec in pretrained.items():
        assert spec.hub == open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)["hf_hub"], name
