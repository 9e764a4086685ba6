"""Published figures to set beside measured ones (data, not code).

Each (model, dataset) pair carries its figures, the page they are printed on, and the test set
and protocol that page names: tusou's `flickr30k-cn` reads both Flickr30k-CN (Chinese-CLIP's
split) and Flickr30k-CNA (IDEA-CCNL's), so a reader must see which one a figure was measured on.
Only zero-shot figures: the ones a model that was not fine-tuned on the benchmark can reproduce.

- Taiyi-CLIP (IDEA-CCNL's model cards): text→image Top-1/5/10 on Flickr30k-CNA test, COCO-CN
  test and Wukong50k, zero-shot Top-1/5 on ImageNet1k-CN. No image→text figures are given.
- Chinese-CLIP (OFA-Sys/Chinese-CLIP Results.md, the per-size tables its README and model cards
  link to; the model cards themselves show only the largest model's figures): zero-shot
  text→image and image→text R@1/5/10 on the official Flickr30K-CN and COCO-CN test sets, and
  zero-shot top-1 on ImageNet with Chinese class names.
- open_clip `xlm-roberta-large-ViT-H-14`: its model card reports English benchmarks only, so
  `xlmr-h14` has no figures here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    metrics: dict[str, float]
    """Metric name (as tusou's results name it) → published value, in percent."""
    source: str
    """The page the figures are printed on."""
    setting: str
    """The test set and protocol, as the source names them."""

    def cite(self) -> str:
        return f"{self.source} ({self.setting})"


T2I = ("text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10")
I2T = ("image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10")
CHINESE_CLIP_RESULTS = "https://github.com/OFA-Sys/Chinese-CLIP/blob/master/Results.md"


def taiyi(
    model: str, hub_id: str, imagenet: tuple[float, float], flickr: tuple[float, ...], coco: tuple[float, ...],
    wukong: tuple[float, ...],
) -> dict[tuple[str, str], Figures]:
    """A Taiyi-CLIP model card's two tables: zero-shot classification and text→image retrieval."""
    card = f"https://huggingface.co/{hub_id}"
    return {
        (model, "flickr30k-cn"): Figures(dict(zip(T2I, flickr)), card, "Flickr30k-CNA test, zero-shot text→image"),
        (model, "coco-cn"): Figures(dict(zip(T2I, coco)), card, "COCO-CN test, zero-shot text→image"),
        (model, "wukong50k"): Figures(dict(zip(T2I, wukong)), card, "Wukong50k, zero-shot text→image"),
        (model, "imagenet-cn"): Figures(dict(zip(("top1", "top5"), imagenet)), card, "ImageNet1k-CN, zero-shot"),
    }


def chinese_clip(
    model: str, size: str, flickr: tuple[float, ...], coco: tuple[float, ...], imagenet_top1: float
) -> dict[tuple[str, str], Figures]:
    """One row of Chinese-CLIP's Results.md: zero-shot text→image then image→text R@1/5/10."""
    def figures(values: tuple[float, ...], test_set: str) -> Figures:
        return Figures(dict(zip(T2I + I2T, values)), CHINESE_CLIP_RESULTS, f"CN-CLIP {size}, {test_set}, zero-shot")

    return {
        (model, "flickr30k-cn"): figures(flickr, "Flickr30K-CN official test set"),
        (model, "coco-cn"): figures(coco, "COCO-CN official test set"),
        (model, "imagenet-cn"): Figures({"top1": imagenet_top1}, CHINESE_CLIP_RESULTS,
                                        f"CN-CLIP {size}, ImageNet with Chinese class names, zero-shot"),
    }


PUBLISHED: dict[tuple[str, str], Figures] = {
    **taiyi("taiyi-clip-l14", "IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese", imagenet=(55.04, 81.75),
            flickr=(58.32, 82.96, 89.40), coco=(55.27, 81.10, 90.78), wukong=(64.95, 91.77, 96.28)),
    **taiyi("taiyi-clip-h14", "IDEA-CCNL/Taiyi-CLIP-RoBERTa-326M-ViT-H-Chinese", imagenet=(54.35, 80.64),
            flickr=(60.82, 85.00, 91.04), coco=(60.02, 83.95, 93.26), wukong=(66.85, 92.81, 96.69)),
    **taiyi("taiyi-clip-b32", "IDEA-CCNL/Taiyi-CLIP-Roberta-102M-Chinese", imagenet=(42.85, 71.48),
            flickr=(46.32, 74.58, 83.44), coco=(47.10, 78.53, 87.84), wukong=(49.18, 81.94, 90.27)),
    **taiyi("taiyi-clip-large-l14", "IDEA-CCNL/Taiyi-CLIP-Roberta-large-326M-Chinese", imagenet=(53.05, 79.55),
            flickr=(54.36, 80.56, 87.90), coco=(51.47, 81.00, 90.40), wukong=(61.18, 90.46, 95.74)),
    **chinese_clip("cn-clip-b16", "ViT-B/16", flickr=(62.7, 86.9, 92.8, 74.6, 93.5, 97.1),
                   coco=(62.2, 86.6, 94.9, 57.0, 84.1, 93.6), imagenet_top1=48.3),
    **chinese_clip("cn-clip-l14", "ViT-L/14", flickr=(68.0, 89.7, 94.4, 80.2, 96.6, 98.2),
                   coco=(64.0, 89.2, 94.4, 60.4, 84.2, 92.9), imagenet_top1=54.7),
    **chinese_clip("cn-clip-l14-336", "ViT-L/14@336px", flickr=(69.0, 90.7, 95.4, 83.3, 97.2, 98.5),
                   coco=(64.7, 89.6, 94.6, 63.4, 87.2, 94.4), imagenet_top1=56.7),
    **chinese_clip("cn-clip-h14", "ViT-H/14", flickr=(71.2, 91.4, 95.5, 81.6, 97.5, 98.8),
                   coco=(69.2, 89.9, 96.1, 63.0, 86.6, 92.9), imagenet_top1=59.6),
}


def figures(model: str, dataset: str) -> Figures | None:
    return PUBLISHED.get((model, dataset))


def published(model: str, dataset: str) -> dict[str, float]:
    """The published metrics alone (empty when there are none)."""
    found = figures(model, dataset)
    return dict(found.metrics) if found else {}
