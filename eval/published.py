"""Published figures to set beside measured ones (data, not code).

Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese, from IDEA-CCNL's model card: text→image Top-1/5/10 on
Flickr30k-CNA test, COCO-CN test and wukong50k; zero-shot Top-1/5 on ImageNet1k-CN.
"""

from __future__ import annotations

PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
    ("taiyi-clip-l14", "flickr30k-cn"): {"text_to_image_R@1": 58.32, "text_to_image_R@5": 82.96, "text_to_image_R@10": 89.40},
    ("taiyi-clip-l14", "coco-cn"): {"text_to_image_R@1": 55.27, "text_to_image_R@5": 81.10, "text_to_image_R@10": 90.78},
    ("taiyi-clip-l14", "wukong50k"): {"text_to_image_R@1": 64.95, "text_to_image_R@5": 91.77, "text_to_image_R@10": 96.28},
    ("taiyi-clip-l14", "imagenet-cn"): {"top1": 55.04, "top5": 81.75},
}
SOURCE = "IDEA-CCNL/Taiyi-CLIP-RoBERTa-102M-ViT-L-Chinese model card"


def published(model: str, dataset: str) -> dict[str, float]:
    return PUBLISHED.get((model, dataset), {})
