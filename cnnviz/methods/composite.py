"""Methods composed of others."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine.passes import Passes, Runner
from .cam import blank_notes, grad_cam_check, grad_cam_signed
from .registry import Params, Result, register_method


@register_method(
    id="guided_grad_cam",
    label="Guided Grad-CAM",
    family="gradient",
    paper="Selvaraju et al., 'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
    "Localization', ICCV 2017 (section 3.1)",
    url="https://arxiv.org/abs/1610.02391",
    formula=r"G^c(x) = R_{\text{guided}}(x) \odot \mathrm{up}\big(L^c_{\text{Grad-CAM}}\big)",
    summary="Guided backpropagation masked by the bilinearly upsampled Grad-CAM: fine detail, "
    "restricted to the class-discriminative region.",
    cost="1 forward + 2 backward passes (shared with guided_backprop and grad_cam)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map", "map_grad", "grad:guided"},
    check=grad_cam_check,
    warning="inherits guided backpropagation's class-insensitivity within the Grad-CAM region",
)
def guided_grad_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    signed = grad_cam_signed(passes)
    cam = torch.relu(signed)
    up = F.interpolate(cam[:, None], size=passes.x.shape[-2:], mode="bilinear", align_corners=False)
    notes = [f"Grad-CAM layer: {passes.layer}", *passes.rule_notes.get("guided", ())]
    notes += [f"Grad-CAM is blank, so this is zero: {n}" for n in blank_notes(passes, signed)]
    return Result(passes.input_grads["guided"] * up, tuple(notes))
