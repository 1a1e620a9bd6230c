"""Find, for any timm classifier, its final spatial map, the head after it and where CAM is exact.

The map comes from timm's contract (`forward_features` / `forward_head`), not from a search
for "the last Conv2d". Everything else is decided numerically on a probe input:

* the layout (NCHW, NHWC, tokens with a prefix and a grid) from the tensor's shape, checked
  against `output_fmt`, `num_features`, `num_prefix_tokens` and the patch embedding;
* whether the head sees only the spatial mean of the map, and whether it is affine in that
  mean (then CAM is exact: Zhou et al. 2016, `mean_xy M_c + b_c = logit_c`), or affine after a
  per-image normalization (LayerNorm / RMSNorm heads, exact after folding), or neither;
* for class-token heads, which earlier layer the gradient really reaches (Grad-CAM there).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..types import Anatomy
from .capture import Members, capture_outputs, members, model_guard
from .head import HeadFold, analyze_head, describe_head
from .layout import FINAL, MapSpec, infer_spec, param_like, probe_input_size, timm_api
from .rules import ActivationRules
from .stages import feature_info, find_gradient_layer, matches, stage_names, stages_by_shape


class AnatomyError(ValueError):
    """The model's anatomy cannot be determined (raised with the reason, never a guess)."""


@dataclass(frozen=True)
class Inspection:
    """Anatomy plus the tensors the engine needs (the CAM head fold)."""

    anatomy: Anatomy
    fold: HeadFold | None


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Inspection]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _fingerprint(found: Members) -> tuple:
    """Changes when a parameter or buffer is replaced, modified in place or given new data
    (load_state_dict, an optimizer step, a new head, ``p.data = ...``); cheap enough to compute
    on every `explain`."""
    tensors = found.params + found.buffers
    return (
        tuple(map(id, tensors)),
        tuple([t._version for t in tensors]),
        tuple([t.data_ptr() for t in tensors]),
    )


def inspect(model: nn.Module) -> Anatomy:
    """The anatomy of a timm classification model (random or pretrained weights).

    Raises:
        AnatomyError: when no spatial map can be found; the message says why.
    """
    return inspection(model).anatomy


def inspection(model: nn.Module, found: Members | None = None) -> Inspection:
    """`inspect` with the engine's extras; cached per model until its weights change.

    ``found``: ``members(model)`` when the caller has it already.
    """
    found = members(model) if found is None else found
    fp = _fingerprint(found)
    with _LOCK:
        hit = _CACHE.get(model)
    if hit is not None and hit[0] == fp:
        return hit[1]
    with model_guard(model, found):
        result = _inspect(model)
    with _LOCK:
        _CACHE[model] = (fp, result)
    return result


def refold(model: nn.Module, previous: Inspection) -> Inspection | None:
    """The inspection of `model` after its weights changed but not its structure, without a probe pass.

    Everything structural (layout, stages, activations, the head's kind) is kept from `previous`;
    the one weight-dependent tensor, the CAM head fold, is recomputed from the head alone on
    random maps of the anatomy's shape (a few head evaluations, no forward through the body).
    Returns None when the head no longer folds exactly: then inspect it afresh. Used by the
    model-randomization sanity check, which changes a copy's weights step by step.
    """
    anatomy = previous.anatomy
    if previous.fold is None or anatomy.source != FINAL:
        return previous
    spec = MapSpec(anatomy.layout, anatomy.num_prefix_tokens, anatomy.grid)
    device, dtype = param_like(model)
    canon = torch.randn(2, *anatomy.shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.no_grad(), model_guard(model):
        feats = spec.from_canonical(canon)
        logits = timm_api(model).forward_head(feats)
        verdict = analyze_head(model, spec, feats, logits)
    if not verdict.exact or verdict.fold is None:
        return None
    return Inspection(anatomy=anatomy, fold=verdict.fold)


def adopt(model: nn.Module, known: Inspection) -> None:
    """Cache `known` as the inspection of `model` as its weights are now (see `refold`)."""
    found = members(model)
    with _LOCK:
        _CACHE[model] = (_fingerprint(found), known)


def _inspect(model: nn.Module) -> Inspection:
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise AnatomyError(
            f"{type(model).__name__} has no forward_features/forward_head: cnnviz needs a timm "
            "classification model (timm.create_model(...))"
        )
    size = probe_input_size(model)
    hw_in = (size[1], size[2])
    gen = torch.Generator().manual_seed(0)
    device, dtype = param_like(model)
    x = torch.randn(2, *size, generator=gen).to(device, dtype)
    stages = stage_names(model)
    rules = ActivationRules(switchable=False)
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    try:
        with torch.no_grad(), rules, capture_outputs(model, stages) as cap:
            feats = timm_api(model).forward_features(x)
            logits = timm_api(model).forward_head(feats)
    except NotImplementedError as err:  # timm's encoders (*_enc) have no classification path
        raise AnatomyError(f"{arch} cannot classify, so there is nothing to explain: {err}") from err
    spec = infer_spec(feats, hw_in, model, final=True)
    num_classes = int(logits.shape[-1]) if isinstance(logits, torch.Tensor) and logits.dim() == 2 else 0
    classifier = getattr(model, "get_classifier", lambda: None)()
    if isinstance(classifier, nn.Identity) or getattr(model, "num_classes", 1) == 0:
        num_classes = 0

    source, source_note, fold = FINAL, "", None
    head_kind, head_desc, cam_exact, cam_reason = "none", "no classifier", False, ""
    if num_classes == 0:
        cam_reason = "the model has no classifier (num_classes=0); create it with num_classes=K"
    elif spec is not None:
        head_desc = describe_head(model, feats)
        verdict = analyze_head(model, spec, feats, logits)
        head_kind, cam_exact, cam_reason, fold = verdict.kind, verdict.exact, verdict.reason, verdict.fold
    else:
        kind = type(feats).__name__ if not isinstance(feats, torch.Tensor) else f"shape {tuple(feats.shape)}"
        head_kind, head_desc = "spatial", describe_head(model, feats)
        cam_reason = f"forward_features returns {kind}, not a single spatial map"

    if num_classes and (spec is None or head_kind == "token"):
        found = find_gradient_layer(model, x, hw_in)
        why = (
            "class-token pooling: the head reads only the class token" if head_kind == "token" else cam_reason
        )
        if found is not None:
            source, spec, share, source_out = found
            source_note = f"{why}; the gradient reaches this layer's patch tokens ({share:.0%} of its norm)"
        elif spec is None:
            raise AnatomyError(
                f"{arch}: {cam_reason}, and no layer's spatial positions receive the logit's gradient"
            )
        else:
            source_note = f"{why}, and no earlier layer receives a gradient either (an all-zero classifier?)"
    elif spec is None:
        raise AnatomyError(f"{arch}: {cam_reason} and the model has no classifier to follow")

    if source == FINAL:
        with torch.no_grad():
            canon = spec.to_canonical(feats)
    else:
        canon = spec.to_canonical(source_out)
        cap.outputs.setdefault(source, source_out)
        if source not in stages:
            stages.append(source)
    kept_names, stage_shapes = [], []
    for name in stages:
        out = cap.outputs.get(name)
        s = infer_spec(out, hw_in, model)
        if s is not None and out is not None:
            kept_names.append(name)
            stage_shapes.append(tuple(int(v) for v in s.to_canonical(out).shape[1:]))
    missing = [w for w in feature_info(model) if not any(matches(sh, hw_in, *w) for sh in stage_shapes)]
    if missing:
        for name, shape in stages_by_shape(model, x, hw_in, missing):
            if name not in kept_names:
                kept_names.append(name)
                stage_shapes.append(shape)
        order = sorted(range(len(kept_names)), key=lambda i: hw_in[0] / stage_shapes[i][1])
        kept_names = [kept_names[i] for i in order]
        stage_shapes = [stage_shapes[i] for i in order]
    anatomy = Anatomy(
        architecture=str(arch),
        layout=spec.layout,  # type: ignore[arg-type]
        shape=tuple(int(v) for v in canon.shape[1:]),  # type: ignore[arg-type]
        input_size=size,
        num_prefix_tokens=spec.prefix,
        grid=spec.grid,
        source=source,
        source_note=source_note,
        head=head_desc,
        head_kind=head_kind,
        num_classes=num_classes,
        cam_exact=cam_exact,
        cam_reason=cam_reason,
        activations=tuple(sorted(rules.kinds)),
        stages=tuple(kept_names),
        stage_shapes=tuple(stage_shapes),  # type: ignore[arg-type]
    )
    return Inspection(anatomy=anatomy, fold=fold if cam_exact else None)
