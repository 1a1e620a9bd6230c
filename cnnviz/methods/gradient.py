"""Gradient-family methods: signed (B, 3, H, W) images at the input's resolution.

All three are ``d logit_c / d x`` computed through the same forward graph; they differ only
in the backward rule of the rectifying activations (see `cnnviz.engine.rules.ActivationRules`).
"""

from __future__ import annotations

from ..engine.passes import Passes, Runner
from ..engine.rules import has_rectifiers
from .cam import grad_cam_check as needs_classifier
from .registry import Evidence, Params, Result, Verdict, register_method


def _rule_result(passes: Passes, rule: str, intro: str) -> Result:
    notes = [intro]
    if not has_rectifiers(passes.kinds):
        notes.append("no rectifying activation in this network: the result equals the plain gradient")
    notes.extend(passes.rule_notes.get(rule, ()))
    return Result(passes.input_grads[rule], tuple(notes))


def verify_rule(ev: Evidence) -> Verdict:
    """A modified backward rule changes the gradient exactly where a rectifier is present: it must
    differ from the plain gradient, unless the network has no activation whose rule it changes
    (none, or only gates such as sigmoid), in which case it must equal it."""
    plain = ev.others.get("vanilla_gradient")
    if plain is None:
        return Verdict()  # the plain gradient failed or was not run: its own status says so
    method = ev.attribution.method
    ref = plain.raw
    diff = float((ev.attribution.raw - ref).abs().amax() / ref.abs().amax().clamp_min(1e-30))
    measures = {f"{method}_vs_plain": f"{diff:.1e}"}
    modifiable = has_rectifiers(ev.anatomy.activations)
    if modifiable and diff <= 1e-6:
        kinds = ", ".join(ev.anatomy.activations)
        return Verdict(f"check: equals the plain gradient although the network has {kinds}", measures)
    if not modifiable and diff > 1e-5:
        return Verdict(
            f"check: differs from the plain gradient ({diff:.1e}) with no activation to modify", measures
        )
    return Verdict("", measures)


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
    check=needs_classifier,
    warning="saturated units pass no gradient, so a feature the score depends on can show as zero",
)
def vanilla_gradient(passes: Passes, params: Params, runner: Runner) -> Result:
    return Result(passes.input_grads["plain"], ("d logit[target] / d input, plain autograd",))


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
    check=needs_classifier,
    warning="largely class-insensitive: it shows what the filters respond to, not why this class",
    verify=verify_rule,
    measures=("deconvnet_vs_plain",),
    verify_with=("vanilla_gradient",),
)
def deconvnet(passes: Passes, params: Params, runner: Runner) -> Result:
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
    check=needs_classifier,
    warning="nearly class-insensitive: fails the model-randomization check of Adebayo et al. 2018",
    verify=verify_rule,
    measures=("guided_backprop_vs_plain",),
    verify_with=("vanilla_gradient",),
    preferred=True,
)
def guided_backprop(passes: Passes, params: Params, runner: Runner) -> Result:
    return _rule_result(passes, "guided", "guided backpropagation rule at every rectifying activation")
