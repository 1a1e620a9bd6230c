"""Human class names for a timm model, from timm's own metadata (no hand-written label file)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
from timm.data import ImageNetInfo, infer_imagenet_subset


def class_names(module: torch.nn.Module) -> tuple[str, ...]:
    """One readable name per logit of `module`.

    In order of preference:
    1. ``label_descriptions`` / ``label_names`` of the model's ``pretrained_cfg``, when they have
       one entry per class (models loaded from a Hub config can carry them);
    2. the ImageNet subset timm infers from the number of classes (1k, 12k, 21k-miil (11k),
       22k, 21k-goog, 22k-ms): WordNet lemmas from timm's ``ImageNetInfo``, e.g.
       ``"tench, Tinca tinca"``;
    3. ``"class N"``.

    A model without a classifier (``num_classes == 0``) has no names.
    """
    num_classes = int(getattr(module, "num_classes", 0) or 0)
    cfg: Mapping[str, Any] = getattr(module, "pretrained_cfg", None) or {}
    for key in ("label_descriptions", "label_names"):
        names = cfg.get(key)
        if isinstance(names, Mapping):
            names = list(names.values())
        if names is not None and len(names) == num_classes:
            return tuple(str(n) for n in names)
    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is not None:
        return imagenet_names(subset)
    return fallback_names(num_classes)


@cache
def imagenet_names(subset: str) -> tuple[str, ...]:
    """WordNet lemmas of an ImageNet subset known to timm (``imagenet-1k``, ``imagenet-12k``...)."""
    return tuple(ImageNetInfo(subset).label_descriptions())


def fallback_names(num_classes: int) -> tuple[str, ...]:
    """``("class 0", "class 1", ...)`` for heads whose classes timm does not name."""
    return tuple(f"class {i}" for i in range(num_classes))
