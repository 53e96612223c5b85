"""ImageNet-1k's classes as torchvision's classification weights order them: by name (the weights' own
`meta["categories"]`) and by WordNet synset id, the folder names of ImageNet's own train/val trees.

The 1000 synset ids ship in imagenet_wnids.txt, one a line in class-index order (the sorted ids: class 0
is n01440764, "tench"; class 999 is n15075141, "toilet tissue").
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

IMAGENET_CLASSES = 1000


@cache
def imagenet_categories() -> list[str]:
    """The class names of torchvision's ImageNet-1k weights (importing torchvision: only when needed)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@cache
def imagenet_wnids() -> list[str]:
    return (Path(__file__).parent / "imagenet_wnids.txt").read_text().split()
