"""CAM-family methods: (B, h, w) maps at a layer's resolution."""

from __future__ import annotations

import torch

from ..engine.passes import Passes
from ..types import Anatomy
from .registry import register_method


def _cam_check(anatomy: Anatomy, layer_is_final: bool) -> str | None:
    if not anatomy.cam_exact:
        return anatomy.cam_reason
    if not layer_is_final:
        return (
            "CAM is defined on the final map that the head pools; an intermediate layer has no class weights"
        )
    return None


def _grad_cam_check(anatomy: Anatomy, layer_is_final: bool) -> str | None:
    if anatomy.num_classes == 0:
        return "the model has no classifier (num_classes=0): there is no class score to differentiate"
    return None


@register_method(
    id="cam",
    label="CAM",
    family="cam",
    paper="Zhou, Khosla, Lapedriza, Oliva & Torralba, 'Learning Deep Features for Discriminative "
    "Localization', CVPR 2016",
    url="https://arxiv.org/abs/1512.04150",
    formula=r"M_c(x,y) = \sum_k w_k^c f_k(x,y), \qquad \frac{1}{HW}\sum_{x,y} M_c(x,y) + b_c = y^c",
    summary="The class score written as a sum over positions: exact, signed, needs no gradient. Only "
    "defined where the head is global average pooling followed by an affine map (after folding "
    "BatchNorm, distillation pairs, or a LayerNorm's per-image scale).",
    cost="1 forward (no backward)",
    requires=("a head that is affine in the spatial mean of the final map (checked numerically)",),
    needs={"map"},
    check=_cam_check,
)
def cam(passes: Passes):
    fold = passes.fold
    raw, offset = fold.cam(passes.map, passes.logits, passes.targets)
    notes = [
        "exact: raw.mean((-2, -1)) + offset == logit[target]; not rectified (negative = evidence against)"
    ]
    if fold.normalized:
        notes.append(
            "head folded through a normalization after pooling (LayerNorm/RMSNorm): one scale per image"
        )
    return raw, tuple(notes), offset


def grad_cam_signed(passes: Passes) -> torch.Tensor:
    """``sum_k alpha_k^c A^k`` with ``alpha_k^c`` the spatial mean of the gradient (before the ReLU)."""
    alpha = passes.map_grad.mean((2, 3))
    return torch.einsum("bc,bchw->bhw", alpha, passes.map)


BLANK = "sum_k alpha_k A^k is negative at every position"
"""What a Grad-CAM note says of a sample whose map the ReLU left blank (the sweep looks for it)."""


def blank_notes(passes: Passes, signed: torch.Tensor) -> list[str]:
    """Why Grad-CAM is blank, for each sample where it is: never a silent empty picture."""
    if not bool(passes.map_grad.abs().amax() > 0):
        return ["the gradient at this layer is zero everywhere: the map is blank"]
    peak = signed.amax((-2, -1))
    return [
        f"sample {i}: {BLANK} (largest {float(peak[i]):.3g}): "
        "no position at this layer adds evidence for the target, so the ReLU leaves a blank map; "
        "try another target or layer, or 'cam' for signed evidence where it applies"
        for i in range(signed.shape[0])
        if not bool(peak[i] > 0)
    ]


@register_method(
    id="grad_cam",
    label="Grad-CAM",
    family="cam",
    paper="Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, 'Grad-CAM: Visual Explanations from "
    "Deep Networks via Gradient-based Localization', ICCV 2017",
    url="https://arxiv.org/abs/1610.02391",
    formula=r"\alpha_k^c = \frac{1}{Z}\sum_{i,j} \frac{\partial y^c}{\partial A^k_{ij}}, \qquad "
    r"L^c = \mathrm{ReLU}\Big(\sum_k \alpha_k^c A^k\Big)",
    summary="Channel weights from the averaged gradient at a layer: works on any head. On a "
    "GAP + linear head it equals ReLU(CAM) / (h w).",
    cost="1 forward + 1 backward to the layer",
    requires=("a classifier", "a spatial map at the layer (found automatically)"),
    needs={"map", "map_grad"},
    check=_grad_cam_check,
)
def grad_cam(passes: Passes):
    signed = grad_cam_signed(passes)
    notes = [f"layer: {passes.layer}", *passes.layer_notes, *blank_notes(passes, signed)]
    return torch.relu(signed), tuple(notes)
