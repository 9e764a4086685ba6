"""The models tusou knows, as data: one entry per name, nothing model-specific elsewhere.

An entry says where each tower's weights come from and how a text or an image becomes a
vector. Three families: a BERT text tower beside an open_clip image tower (Taiyi-CLIP and
tusou's own models), a transformers ChineseCLIPModel (both towers in one checkpoint), and one
open_clip model whose text side is a Hugging Face transformer (multilingual CLIP). For the
last two an entry's `text` and `image` are the same spec. `load_model` (retrieval.models.model)
picks the family's loader by the specs' types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from retrieval.errors import TusouError

PACKAGE_ASSETS = Path(__file__).resolve().parents[1] / "assets"
"""Files shipped inside tusou: vocabularies, open_clip configs, the demo model's weights."""


@dataclass(frozen=True)
class TextTower:
    """A BERT text tower: the `feature` output of transformers' `architecture` is the text vector."""

    hub_id: str | None = None
    """Hugging Face repo with config, vocab and weights; None for towers tusou builds itself."""
    package_dir: str | None = None
    """Weights shipped inside tusou, relative to retrieval/assets."""
    bert: Mapping[str, Any] = field(default_factory=dict)
    """BertConfig fields, for building the architecture without weights."""
    vocab_dir: str = "char-vocab"
    """Vocabulary (retrieval/assets) for a build without weights, unless the hub's is cached."""
    architecture: str = "BertModel"
    """BertModel (feature pooler_output) or BertForSequenceClassification (feature logits,
    num_labels = the entry's dim), as the tower's model card loads it."""
    feature: str = "pooler_output"
    context_length: int = 77
    dynamic_padding: bool = False
    """False: pad every text to `context_length`, no attention mask (Taiyi-CLIP's own code;
    batch-invariant). True: pad to the longest text in the batch and pass the mask, which gives
    each text the vector it gets alone, unpadded (how the 102M/326M model cards call it)."""


@dataclass(frozen=True)
class ImageTower:
    """An open_clip model whose `encode_image` is the image vector."""

    arch: str
    """open_clip model name (config), e.g. ViT-L-14-quickgelu."""
    pretrained: str | None = None
    """open_clip pretrained tag, fetched through the Hugging Face cache."""
    hub: str | None = None
    """Where the pretrained tag's weights are on the hub (`repo/`), as open_clip's pretrained table
    says (tests/test_model_families.py checks they agree): known without importing open_clip."""
    package_file: str | None = None
    """Checkpoint shipped inside tusou, relative to retrieval/assets."""


@dataclass(frozen=True)
class ChineseClip:
    """Both towers of a transformers ChineseCLIPModel (OFA-Sys/chinese-clip-vit-*).

    Chinese-CLIP's own conventions, from its code: texts padded to 52 tokens with the attention
    mask; images resized to a square (no center crop), bicubic, CLIP mean/std.
    """

    hub_id: str
    config: Mapping[str, Any]
    """ChineseCLIPConfig fields (text_config, vision_config, projection_dim): the architecture
    without weights, for random builds and measurements."""
    context_length: int = 52


@dataclass(frozen=True)
class OpenClip:
    """Both towers of one open_clip model whose text side is a Hugging Face transformer."""

    arch: str
    pretrained: str
    text_hub_id: str
    """The transformer's config and tokenizer (open_clip fetches them by this name)."""
    hub: str
    """Where the pretrained tag's weights are on the hub, as for ImageTower.hub."""
    context_length: int = 77


@dataclass(frozen=True)
class StudentTower:
    """A text tower distilled from a teacher's (`tusou distill`): a BERT, its tokens mean-pooled
    over the attention mask and projected linearly to the teacher's space. It pads to the longest
    text of a batch (so a short query costs a few tokens, not 77) and keeps the teacher's image tower."""

    teacher: str
    bert: Mapping[str, Any]
    """BertConfig fields of the student's architecture (a UER Chinese RoBERTa miniature's, or any L, H)."""
    hub_id: str | None
    """The UER miniature whose pre-trained weights a distillation starts from; None off UER's sizes."""
    context_length: int = 77


TextSpec = TextTower | ChineseClip | OpenClip | StudentTower
ImageSpec = ImageTower | ChineseClip | OpenClip


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of each tower, counted on the built architecture (retrieval.models.footprint):
    stored here so that `tusou models` lists them without building anything. A test builds every
    entry and checks these against it, so they cannot drift from the architecture."""

    text: int
    image: int


@dataclass(frozen=True)
class ModelEntry:
    name: str
    dim: int
    text: TextSpec
    image: ImageSpec
    description: str
    parameters: ParameterCounts | None
    """None where the architecture itself needs files from the hub (xlmr-h14: its transformer's
    config), so it cannot be counted offline; `tusou models NAME --measure` counts it once cached."""
    seed: int = 0
    """Seed for every randomly initialised part, so random builds are reproducible."""

    @property
    def teacher(self) -> str | None:
        """The model a student's text tower was distilled from (its image tower is that model's); None otherwise."""
        return self.text.teacher if isinstance(self.text, StudentTower) else None

    @property
    def image_of(self) -> str:
        """The model whose image tower this is: what an index's image vectors depend on."""
        return self.teacher or self.name


def bert(hidden: int, layers: int, heads: int, positions: int, **extra: Any) -> Mapping[str, Any]:
    """BertConfig fields of a BERT with the usual 4x feed-forward width."""
    return MappingProxyType(
        dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
             intermediate_size=4 * hidden, max_position_embeddings=positions, type_vocab_size=2, **extra)
    )


def vision(hidden: int, layers: int, heads: int, patch: int, size: int = 224) -> dict[str, Any]:
    """ChineseCLIPVisionConfig fields of a ViT with the usual 4x feed-forward width."""
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=4 * hidden, patch_size=patch, image_size=size)


def chinese_clip(hub_id: str, text: Mapping[str, Any], image: dict[str, Any], dim: int) -> dict[str, ChineseClip]:
    """The `text` and `image` of a Chinese-CLIP entry: one spec for both."""
    spec = ChineseClip(hub_id, MappingProxyType(dict(text_config=dict(text), vision_config=image, projection_dim=dim)))
    return dict(text=spec, image=spec)


def classifier_text(hub_id: str, config: Mapping[str, Any]) -> TextTower:
    """A Taiyi-CLIP text tower whose classification head's logits are the text vector (the 102M and
    326M releases), called as their model cards call it: each text unpadded, which padding to the
    longest text with the attention mask reproduces batch by batch."""
    return TextTower(hub_id=hub_id, bert=config, architecture="BertForSequenceClassification", feature="logits", dynamic_padding=True)


BERT_BASE_CHINESE = bert(768, 12, 12, 512, vocab_size=21128)
BERT_LARGE_CHINESE = bert(1024, 24, 16, 512, vocab_size=21128)
DEMO_BERT = bert(128, 4, 4, 64)
TINY_BERT = bert(64, 2, 2, 80)

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry(
            name="taiyi-clip-l14",
            dim=768,
            text=TextTower(hub_id="IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese", bert=BERT_BASE_CHINESE),
            image=ImageTower(arch="ViT-L-14-quickgelu", pretrained="openai", hub="timm/vit_large_patch14_clip_224.openai/"),
            description="Taiyi-CLIP RoBERTa-102M text tower + OpenAI CLIP ViT-L/14 image tower (frozen)",
            parameters=ParameterCounts(102_267_648, 303_966_208),
        ),
        ModelEntry(
            name="taiyi-clip-h14",
            dim=1024,
            text=TextTower(hub_id="IDEA-CCNL/Taiyi-CLIP-RoBERTa-326M-ViT-H-Chinese", bert=BERT_LARGE_CHINESE),
            image=ImageTower(arch="ViT-H-14", pretrained="laion2b_s32b_b79k", hub="laion/CLIP-ViT-H-14-laion2B-s32B-b79K/"),
            description="Taiyi-CLIP RoBERTa-326M text tower + LAION-2B open_clip ViT-H/14 image tower (frozen)",
            parameters=ParameterCounts(325_522_432, 632_076_800),
        ),
        ModelEntry(
            name="taiyi-clip-b32",
            dim=512,
            text=classifier_text("IDEA-CCNL/Taiyi-CLIP-Roberta-102M-Chinese", BERT_BASE_CHINESE),
            image=ImageTower(arch="ViT-B-32-quickgelu", pretrained="openai", hub="timm/vit_base_patch32_clip_224.openai/"),
            description="Taiyi-CLIP RoBERTa-102M (classification head = text vector) + OpenAI CLIP ViT-B/32 (frozen)",
            parameters=ParameterCounts(102_661_376, 87_849_216),
        ),
        ModelEntry(
            name="taiyi-clip-large-l14",
            dim=768,
            text=classifier_text("IDEA-CCNL/Taiyi-CLIP-Roberta-large-326M-Chinese", BERT_LARGE_CHINESE),
            image=ImageTower(arch="ViT-L-14-quickgelu", pretrained="openai", hub="timm/vit_large_patch14_clip_224.openai/"),
            description="Taiyi-CLIP RoBERTa-large-326M (classification head = text vector) + OpenAI CLIP ViT-L/14 (frozen)",
            parameters=ParameterCounts(326_309_632, 303_966_208),
        ),
        ModelEntry(
            name="cn-clip-b16",
            dim=512,
            **chinese_clip("OFA-Sys/chinese-clip-vit-base-patch16", BERT_BASE_CHINESE, vision(768, 12, 12, 16), 512),
            description="Chinese-CLIP ViT-B/16 + RoBERTa-wwm-base, trained jointly on 200M Chinese pairs",
            parameters=ParameterCounts(101_995_776, 86_192_640),
        ),
        ModelEntry(
            name="cn-clip-l14",
            dim=768,
            **chinese_clip("OFA-Sys/chinese-clip-vit-large-patch14", BERT_BASE_CHINESE, vision(1024, 24, 16, 14), 768),
            description="Chinese-CLIP ViT-L/14 + RoBERTa-wwm-base",
            parameters=ParameterCounts(102_192_384, 303_966_208),
        ),
        ModelEntry(
            name="cn-clip-l14-336",
            dim=768,
            **chinese_clip("OFA-Sys/chinese-clip-vit-large-patch14-336px", BERT_BASE_CHINESE, vision(1024, 24, 16, 14, 336), 768),
            description="Chinese-CLIP ViT-L/14 at 336 px + RoBERTa-wwm-base",
            parameters=ParameterCounts(102_192_384, 304_293_888),
        ),
        ModelEntry(
            name="cn-clip-h14",
            dim=1024,
            **chinese_clip("OFA-Sys/chinese-clip-vit-huge-patch14", BERT_LARGE_CHINESE, vision(1280, 32, 16, 14), 1024),
            description="Chinese-CLIP ViT-H/14 + RoBERTa-wwm-large",
            parameters=ParameterCounts(325_422_080, 632_076_800),
        ),
        ModelEntry(
            name="xlmr-h14",
            dim=1024,
            **dict.fromkeys(("text", "image"), OpenClip("xlm-roberta-large-ViT-H-14", "frozen_laion5b_s13b_b90k", "FacebookAI/xlm-roberta-large",
                                                                "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k/")),
            description="open_clip multilingual: frozen XLM-RoBERTa-large text tower + ViT-H/14, LAION-5B (100 languages)",
            parameters=None,
        ),
        ModelEntry(
            name="demo",
            dim=128,
            text=TextTower(package_dir="demo/text", bert=DEMO_BERT, vocab_dir="demo-vocab", context_length=32),
            image=ImageTower(arch="tusou-demo-rn", package_file="demo/image.safetensors"),
            description="small towers trained by tusou on its synthetic Chinese caption set (offline, shipped)",
            parameters=ParameterCounts(841_088, 1_362_200),
        ),
        ModelEntry(
            name="test-tiny",
            dim=64,
            text=TextTower(bert=TINY_BERT),
            image=ImageTower(arch="tusou-tiny-vit"),
            description="tiny random towers (fixed seed) for tests; no weights to fetch",
            parameters=ParameterCounts(1_455_488, 117_760),
        ),
    ]
}

DEFAULT_MODEL = "taiyi-clip-l14"

UER_LAYERS = (2, 4, 6, 8, 10, 12)
UER_HIDDEN = (128, 256, 512, 768)
"""UER's Chinese RoBERTa miniatures (Turc et al.'s 24 sizes, pre-trained by UER on CLUECorpusSmall), on the
hub as uer/chinese_roberta_L-{layers}_H-{hidden}: BERT-base's Chinese vocabulary, a head per 64 dimensions."""
STUDENT_NAME = re.compile(r"(?P<teacher>.+)-student-L(?P<layers>\d+)-H(?P<hidden>\d+)")
STUDENT_TEACHER = DEFAULT_MODEL
"""The teacher of the registered students, one per UER size."""


def uer_hub_id(layers: int, hidden: int) -> str | None:
    """The hub repo of UER's miniature of this size; None for a size UER did not publish."""
    return f"uer/chinese_roberta_L-{layers}_H-{hidden}" if layers in UER_LAYERS and hidden in UER_HIDDEN else None


def student_name(teacher: str, layers: int, hidden: int) -> str:
    return f"{teacher}-student-L{layers}-H{hidden}"


def student_entry(teacher: str, layers: int, hidden: int) -> ModelEntry:
    """The entry of a student of `teacher` with `layers` BERT layers of width `hidden` (a multiple of 64).

    Built at random it has the teacher's vocabulary (UER's, BERT-base Chinese, for Taiyi); from UER's
    weights, theirs. Its parameters are counted from the architecture here (`tests/test_cli.py` builds
    each registered one to check the count)."""
    base = get_entry(teacher)
    if not isinstance(base.text, TextTower):
        raise TusouError(f"a student's teacher must be a BERT + open_clip model (taiyi-clip-*, demo, test-tiny); {teacher!r} is not")
    if layers < 1 or hidden < 64 or hidden % 64:
        raise TusouError(f"a student has at least 1 layer and a width that is a multiple of 64, not L{layers}-H{hidden}")
    hub_id = uer_hub_id(layers, hidden)
    stated = base.text.bert.get("vocab_size")
    config = bert(hidden, layers, hidden // 64, 512 if hub_id else base.text.context_length, **({"vocab_size": stated} if stated else {}))
    counts = None
    if base.parameters is not None:
        vocab = stated or _lines(PACKAGE_ASSETS / base.text.vocab_dir / "vocab.txt")
        counts = ParameterCounts(_student_text_parameters({"vocab_size": vocab, **config}, base.dim), base.parameters.image)
    return ModelEntry(
        name=student_name(teacher, layers, hidden),
        dim=base.dim,
        text=StudentTower(teacher, config, hub_id, base.text.context_length),
        image=base.image,
        description=f"a student of {teacher}: {layers}-layer, {hidden}-wide BERT (distil it with `tusou distill`); {teacher}'s image tower",
        parameters=counts,
        seed=base.seed,
    )


def _lines(path: Path) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def _student_text_parameters(config: Mapping[str, Any], dim: int) -> int:
    """A student's parameters: BERT's embeddings and layers (no pooler: it mean-pools) and the projection."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    embeddings = (config["vocab_size"] + config["max_position_embeddings"] + config["type_vocab_size"]) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * (hidden * config["intermediate_size"]) + config["intermediate_size"] + hidden + 4 * hidden
    return embeddings + layers * layer + hidden * dim + dim


def get_entry(name: str) -> ModelEntry:
    """A registered entry, or a student of a registered teacher by its name (`demo-student-L2-H64`)."""
    if name in MODELS:
        return MODELS[name]
    student = STUDENT_NAME.fullmatch(name)
    if student and student["teacher"] in MODELS:
        return student_entry(student["teacher"], int(student["layers"]), int(student["hidden"]))
    shown = ", ".join(entry for entry in MODELS if MODELS[entry].teacher is None)
    raise TusouError(f"unknown model {name!r}: choose one of {shown}, a student NAME-student-L<layers>-H<width>, "
                     "or a folder `tusou distill` wrote (see `tusou models`)")


def check_builder(name: str, entry: ModelEntry) -> None:
    """Refuse a student as the model an index is built by: an index records its model, and a student's
    image tower is its teacher's, so the teacher builds the index and the student searches it."""
    if entry.teacher is not None:
        raise TusouError(f"{name} is a student: build the index with its teacher, --model {entry.teacher}, "
                         "then search it with the student (`tusou search DIR QUERY --model STUDENT`)")


STUDENT_FILE = "student.json"
"""What a folder `tusou distill` wrote holds: the student's name, its teacher and the teacher's fingerprints."""
STUDENT_WEIGHTS = Path("checkpoint") / "text"
"""Where in such a folder the student's text tower is (its last checkpoint, swapped in whole)."""


@dataclass(frozen=True)
class ModelSpec:
    """What `--model` names: a registry entry, and for a distilled student's folder its weights."""

    entry: ModelEntry
    text_weights: Path | None = None
    teacher_image: str | None = None
    """The teacher's image-tower fingerprint, as the student's folder records it."""


def resolve_model(spec: str | Path) -> ModelSpec:
    """`--model`'s value: a registry name, a student's name, or a folder `tusou distill` wrote."""
    folder = Path(spec)
    if isinstance(spec, Path) or (str(spec) not in MODELS and folder.is_dir()):
        return read_student(folder)
    return ModelSpec(get_entry(str(spec)))


def read_student(folder: Path) -> ModelSpec:
    """A distilled student's folder, as `--model DIR` opens it."""
    import json

    described, weights = folder / STUDENT_FILE, folder / STUDENT_WEIGHTS
    if not described.is_file():
        raise TusouError(f"--model {folder}: a folder, but not a student `tusou distill` wrote (no {STUDENT_FILE})")
    try:
        record = json.loads(described.read_text(encoding="utf-8"))
        name, image = record["model"], record["teacher_fingerprints"]["image"]
    except (ValueError, KeyError, TypeError):
        raise TusouError(f"{described} is damaged: distil the student again") from None
    if not (weights / "config.json").is_file():
        raise TusouError(f"--model {folder}: its distillation has not written a checkpoint yet (no {STUDENT_WEIGHTS}): "
                         "let `tusou distill` run to its first checkpoint")
    return ModelSpec(get_entry(name), weights, image)


MODELS.update(
    (entry.name, entry) for entry in (student_entry(STUDENT_TEACHER, layers, hidden) for layers in UER_LAYERS for hidden in UER_HIDDEN)
)
