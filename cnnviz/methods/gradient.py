"""Gradient-family methods: signed (B, 3, H, W) images at the input's resolution.

All three are ``d logit_c / d x`` computed through the same forward graph; they differ only
in the backward rule of the rectifying activations (see `cnnviz.engine.rules.ActivationRules`).
"""

from __future__ import annotations

from ..engine.passes import Passes
from ..engine.rules import has_rectifiers
from ..types import Anatomy
from .registry import register_method


def _needs_classifier(anatomy: Anatomy, layer_is_final: bool) -> str | None:
    if anatomy.num_classes == 0:
        return "the model has no classifier (num_classes=0): there is no class score to differentiate"
    return None


def _rule_result(passes: Passes, rule: str, intro: str) -> tuple:
    notes = [intro]
    if not has_rectifiers(passes.kinds):
        notes.append("no rectifying activation in this network: the result equals the plain gradient")
    notes.extend(passes.rule_notes.get(rule, ()))
    return passes.input_grads[rule], tuple(notes)


@register_method(
    id="vanilla_gradient",
    label="Vanilla gradient (saliency)",
    family="gradient",
    paper="Simonyan, Vedaldi & Zisserman, 'Deep Inside Convolutional Networks: Visualising Image "
    "Classification Models and Saliency Maps', ICLR workshop 2014 (arXiv 2013)",
    url="https://arxiv.org/abs/1312.6034",
    formula=r"S^c(x) = \frac{\partial y^c}{\partial x}",
    summary="How much each input pixel would change the class score locally. Noisy and sensitive to "
    "saturation; shown signed, or as max |.| over colour channels.",
    cost="1 forward + 1 backward to the input",
    requires=("a classifier",),
    needs={"grad:plain"},
    check=_needs_classifier,
)
def vanilla_gradient(passes: Passes):
    return passes.input_grads["plain"], ("d logit[target] / d input, plain autograd",)


@register_method(
    id="deconvnet",
    label="Deconvnet",
    family="gradient",
    paper="Zeiler & Fergus, 'Visualizing and Understanding Convolutional Networks', ECCV 2014",
    url="https://arxiv.org/abs/1311.2901",
    formula=r"R_{l} = \mathrm{ReLU}(R_{l+1}) \text{ at every rectifier, whatever its input}",
    summary="Backpropagates only positive signals and ignores which units were active in the forward "
    "pass: shows input patterns the network's filters respond to, largely class-insensitive.",
    cost="1 forward + 1 backward to the input (shares the forward with the other gradient methods)",
    requires=("a classifier", "rectifying activations (else it equals the plain gradient)"),
    needs={"grad:deconv"},
    check=_needs_classifier,
)
def deconvnet(passes: Passes):
    return _rule_result(passes, "deconv", "deconvnet rule at every rectifying activation")


@register_method(
    id="guided_backprop",
    label="Guided backpropagation",
    family="gradient",
    paper="Springenberg, Dosovitskiy, Brox & Riedmiller, 'Striving for Simplicity: The All "
    "Convolutional Net', ICLR workshop 2015 (arXiv 2014)",
    url="https://arxiv.org/abs/1412.6806",
    formula=r"R_{l} = \mathbb{1}[f_l > 0] \cdot \mathrm{ReLU}(R_{l+1}) "
    r"\quad(\text{smooth } \sigma: \ \sigma'(f_l)\,\mathrm{ReLU}(R_{l+1}))",
    summary="The gradient with negative signals cut at every rectifier: sharp, edge-like images. "
    "Known to be nearly class-insensitive (Adebayo et al. 2018), so read it with Grad-CAM.",
    cost="1 forward + 1 backward to the input (shares the forward with the other gradient methods)",
    requires=("a classifier", "rectifying activations (else it equals the plain gradient)"),
    needs={"grad:guided"},
    check=_needs_classifier,
)
def guided_backprop(passes: Passes):
    return _rule_result(passes, "guided", "guided backpropagation rule at every rectifying activation")
