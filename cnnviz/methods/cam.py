"""CAM and Grad-CAM: (B, h, w) maps at a layer's resolution; the helpers their relatives share."""

from __future__ import annotations

import torch

from ..engine.passes import Passes, Runner
from ..types import Anatomy
from .registry import Evidence, Params, Result, Verdict, register_method


def cam_check(anatomy: Anatomy, layer_is_final: bool, params: Params) -> str | None:
    if not anatomy.cam_exact:
        return anatomy.cam_reason
    if not layer_is_final:
        return (
            "CAM is defined on the final map that the head pools; an intermediate layer has no class weights"
        )
    return None


def grad_cam_check(anatomy: Anatomy, layer_is_final: bool, params: Params) -> str | None:
    """What every method that differentiates the class score needs: a classifier."""
    if anatomy.num_classes == 0:
        return "the model has no classifier (num_classes=0): there is no class score to differentiate"
    return None


def _verify_cam(ev: Evidence) -> Verdict:
    """Zhou et al.'s identity ``mean_xy CAM + offset == logit[target]``, relative to the largest
    |logit| of the sample."""
    att, ex = ev.attribution, ev.explanation
    if att.offset is None:
        return Verdict("check: cam returned no offset")
    logits = ex.logits.double()
    target_logit = logits.gather(1, ex.targets[:, None].to(logits.device))[:, 0]
    lhs = att.raw.double().mean((-2, -1)) + att.offset.double()
    scale = logits.abs().amax(1).clamp_min(1e-30)
    err = float(((lhs - target_logit).abs() / scale).max())
    measures = {"cam_err": f"{err:.1e}"}
    if err > ev.tol:
        return Verdict(
            f"check: mean(CAM) + offset != logit (relative error {err:.1e} > {ev.tol:.0e})", measures
        )
    return Verdict("", measures)


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
    warning="at the final map's coarse resolution (7x7 at 224 px on most CNNs) it localizes only roughly",
    cost="1 forward (no backward)",
    requires=("a head that is affine in the spatial mean of the final map (checked numerically)",),
    needs={"map"},
    check=cam_check,
    verify=_verify_cam,
    measures=("cam_err",),
    preferred=True,
)
def cam(passes: Passes, params: Params, runner: Runner) -> Result:
    fold = passes.fold
    if fold is None:
        raise RuntimeError("cam ran without the head's fold: its check should have refused the model")
    raw, offset = fold.cam(passes.fmap, passes.logits, passes.targets)
    notes = [
        "exact: raw.mean((-2, -1)) + offset == logit[target]; not rectified (negative = evidence against)"
    ]
    if fold.normalized:
        notes.append(
            "head folded through a normalization after pooling (LayerNorm/RMSNorm): one scale per image"
        )
    return Result(raw, tuple(notes), offset)


def grad_cam_signed(passes: Passes) -> torch.Tensor:
    """``sum_k alpha_k^c A^k`` with ``alpha_k^c`` the spatial mean of the gradient (before the ReLU)."""
    alpha = passes.fmap_grad.mean((2, 3))
    return torch.einsum("bc,bchw->bhw", alpha, passes.fmap)


BLANK = "negative at every position"
"""What a CAM-family note says of a sample whose map the ReLU left blank (the sweep looks for it)."""


def layer_notes(passes: Passes) -> list[str]:
    return [f"layer: {passes.layer}", *passes.layer_notes]


def blank_notes(passes: Passes, signed: torch.Tensor, what: str = "sum_k alpha_k A^k") -> list[str]:
    """Why a rectified CAM-family map is blank, for each sample where it is: never a silent empty
    picture. `what` names the map before the ReLU."""
    if passes.map_grad is not None and not bool(passes.map_grad.abs().amax() > 0):
        return ["the gradient at this layer is zero everywhere: the map is blank"]
    peak = signed.amax((-2, -1))
    return [
        f"sample {i}: {what} is {BLANK} (largest {float(peak[i]):.3g}): "
        "no position at this layer adds evidence for the target, so the ReLU leaves a blank map; "
        "try another target or layer, or 'cam' for signed evidence where it applies"
        for i in range(signed.shape[0])
        if not bool(peak[i] > 0)
    ]


def rectified(passes: Passes, signed: torch.Tensor, what: str, *extra: str) -> Result:
    """ReLU of a signed map, with the layer and, where it is blank, why."""
    notes = [*layer_notes(passes), *extra, *blank_notes(passes, signed, what)]
    return Result(torch.relu(signed), tuple(notes))


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
    warning="averaged weights can highlight positions the model did not use (see HiResCAM); the "
    "ReLU hides evidence against the class",
    cost="1 forward + 1 backward to the layer",
    requires=("a classifier", "a spatial map at the layer (found automatically)"),
    needs={"map", "map_grad"},
    check=grad_cam_check,
    preferred=True,
)
def grad_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    return rectified(passes, grad_cam_signed(passes), "sum_k alpha_k A^k")
