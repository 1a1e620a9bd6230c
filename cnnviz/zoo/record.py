"""The JSON record of one explained image: what the CLI's manifest.json and the app's meta.json hold.

One writer, one schema: the model and where its weights came from (stated as random weights
when they are), the anatomy, the layer, the target with its class name, probability and logit,
the top-5, and per method its status, notes, parameters and files, or the reason it was refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import timm
import torch
from PIL import Image

if TYPE_CHECKING:
    from ..types import Explanation
    from . import Model

RANDOM_WEIGHTS_NOTE = (
    "random weights: the model is untrained, so the maps show how its architecture routes a "
    "random classifier's score, not evidence it learned"
)


def class_entry(model: Model, ex: Explanation, index: int, sample: int = 0) -> dict[str, Any]:
    """One class of one sample: index, name, probability and logit."""
    names = model.class_names
    return {
        "index": index,
        "class_name": names[index] if index < len(names) else f"class {index}",
        "probability": round(float(ex.probabilities[sample, index]), 6),
        "logit": round(float(ex.logits[sample, index]), 6),
    }


def method_entries(
    ex: Explanation,
    params: Mapping[str, Mapping[str, object]] | None = None,
    files: Callable[[str], Mapping[str, str]] | None = None,
    sample: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per method: ``ok`` with layer, notes, parameters, the raw map's shape, CAM's offset and the
    files written (`files(method_id)`), or ``refused`` with the reason."""
    import cnnviz  # the registry's labels (the zoo sits above the methods)

    entries: dict[str, dict[str, Any]] = {}
    for mid, att in ex.attributions.items():
        entry: dict[str, Any] = {
            "status": "ok",
            "label": cnnviz.get_method(mid).label,
            "layer": att.layer,
            "notes": list(att.notes),
            "params": dict((params or {}).get(mid, {})),
            "raw_shape": list(att.raw.shape[1:]),
            **(files(mid) if files else {}),
        }
        if att.offset is not None:
            entry["offset"] = float(att.offset[sample])
        entries[mid] = entry
    for mid, reason in ex.refused.items():
        entries[mid] = {"status": "refused", "label": cnnviz.get_method(mid).label, "reason": reason}
    return entries


def explanation_record(
    model: Model,
    ex: Explanation,
    image: Image.Image,
    *,
    source: str,
    target_chosen: str,
    methods: Mapping[str, Mapping[str, Any]],
    render: Mapping[str, Any],
    sample: int = 0,
) -> dict[str, Any]:
    """The record of sample `sample` of `ex` (computed on `image` by `model`).

    Args:
        source: where the image came from (a path for the CLI, the upload's name in the app).
        target_chosen: how the target was chosen (``top-1``, ``--target``, ``class name``...).
        methods: `method_entries` (with the caller's file names).
        render: the drawing settings (colormap, overlay strength).
    """
    import cnnviz

    probs = ex.probabilities[sample].detach().cpu()
    top = torch.topk(probs, k=min(5, probs.numel()))
    target = int(ex.targets[sample])
    return {
        "image": source,
        "image_size": list(image.size),
        "seen_box": [round(float(v), 2) for v in model.seen_box(image)],
        "model": {
            "name": model.name,
            "label": model.display_name,
            "family": model.family,
            "weights_source": model.weights_source,
            "weights_origin": model.weights_origin,
            "weights": RANDOM_WEIGHTS_NOTE
            if model.random_weights
            else f"trained weights: {model.weights_origin}",
            "weights_note": model.weights_note,
            "input_size": list(model.data_config.get("input_size", ())),
        },
        "anatomy": dataclasses.asdict(ex.anatomy),
        "layer": ex.layer,
        "target": {**class_entry(model, ex, target, sample), "chosen": target_chosen},
        "top5": [class_entry(model, ex, int(i), sample) for i in top.indices],
        "methods": dict(methods),
        "render": dict(render),
        "versions": {"cnnviz": cnnviz.__version__, "torch": torch.__version__, "timm": timm.__version__},
    }
