"""Gradient times input: Input x Gradient, and its path integral, Integrated Gradients.

Both are signed (B, 3, H, W) images at the input's resolution, in the units of the logit: they
attribute the score to input pixels additively. Input x Gradient is Integrated Gradients with a
zero baseline and a single right-Riemann step.
"""

from __future__ import annotations

import torch

from ..engine.passes import Needs, Passes, Runner
from ..types import Anatomy
from .cam import grad_cam_check as needs_classifier
from .paths import BASELINES, QUADRATURES, make_baseline, quadrature, rows
from .registry import Evidence, Param, Params, Result, Verdict, register_method

PLAIN = Needs(rules=frozenset({"plain"}))


@register_method(
    id="input_x_gradient",
    label="Input x Gradient",
    family="gradient",
    paper="Shrikumar, Greenside, Shcherbina & Kundaje, 'Not Just a Black Box: Learning Important "
    "Features Through Propagating Activation Differences', arXiv 2016",
    url="https://arxiv.org/abs/1605.01713",
    formula=r"A^c(x) = x \odot \frac{\partial y^c}{\partial x}",
    summary="The gradient weighted by the input itself: a first-order estimate of each pixel's "
    "contribution to the score, relative to a zero input. Equals Integrated Gradients with a "
    "zero baseline where the score is linear in the input.",
    warning="zero is the mean colour of the normalized input, so pixels near the dataset mean get no "
    "attribution however much they matter",
    cost="1 forward + 1 backward to the input (shared with the vanilla gradient)",
    requires=("a classifier",),
    needs={"grad:plain"},
    check=needs_classifier,
)
def input_x_gradient(passes: Passes, params: Params, runner: Runner) -> Result:
    raw = passes.x.float() * passes.input_grads["plain"]
    return Result(raw, ("x * d logit[target] / d x in the normalized input space, plain autograd",))


def _ig_verify(ev: Evidence) -> Verdict:
    """Completeness: ``sum(IG) + f(baseline) == f(x)``, up to the quadrature's error. Its
    largest relative error is measured; only a non-finite result is a failure (the error of 50
    steps is a property of the model, not a defect)."""
    att, ex = ev.attribution, ev.explanation
    if att.offset is None:
        return Verdict("check: integrated_gradients returned no offset (f(baseline))")
    logit = ex.logits.double().gather(1, ex.targets[:, None].to(ex.logits.device))[:, 0]
    total = att.raw.double().sum((1, 2, 3))
    delta = logit - att.offset.double()
    err = float(((total - delta).abs() / delta.abs().clamp_min(1e-12)).max())
    measures = {"ig_completeness_err": f"{err:.1e}"}
    if not torch.isfinite(att.raw).all():
        return Verdict("check: integrated gradients are not finite", measures)
    return Verdict("", measures)


def _ig_check(anatomy: Anatomy, layer_is_final: bool, params: Params) -> str | None:
    if params.method == "riemann_trapezoid" and int(params.steps) < 2:
        return "the trapezoid rule needs steps >= 2 (it evaluates both ends of the path)"
    return needs_classifier(anatomy, layer_is_final, params)


@register_method(
    id="integrated_gradients",
    label="Integrated Gradients",
    family="gradient",
    paper="Sundararajan, Taly & Yan, 'Axiomatic Attribution for Deep Networks', ICML 2017",
    url="https://arxiv.org/abs/1703.01365",
    formula=r"\mathrm{IG}^c(x) = (x - x') \odot \int_0^1 \frac{\partial y^c}{\partial x}"
    r"\big(x' + \alpha (x - x')\big)\, d\alpha \approx (x - x') \odot \sum_k w_k\, "
    r"\nabla y^c\big(x' + \alpha_k (x - x')\big), \qquad \sum_i \mathrm{IG}^c_i = y^c(x) - y^c(x')",
    summary="The gradient averaged along the straight path from a baseline x' to the input, times "
    "x - x': complete (the attributions add up to the score's change from the baseline, checked "
    "and reported per sample) and insensitive to saturation along the way.",
    warning="the picture depends on the baseline: pixels that equal it (black pixels with the black "
    "baseline) get zero attribution however much they matter",
    cost="steps forward + backward passes to the input, batched (+ 1 forward of the baseline)",
    requires=("a classifier",),
    needs=(),
    check=_ig_check,
    params=(
        Param("baseline", "black", "the path's start x'", choices=BASELINES),
        Param("steps", 50, "points on the path (gradient evaluations per sample)", low=1, high=1000),
        Param("method", "gausslegendre", "quadrature rule along the path", choices=QUADRATURES),
        Param("batch_size", 16, "path points per forward/backward batch", low=1, high=1024),
        Param("seed", 0, "random seed of the uniform baseline", low=0, high=2**31 - 1),
    ),
    verify=_ig_verify,
    measures=("ig_completeness_err",),
)
def integrated_gradients(passes: Passes, params: Params, runner: Runner) -> Result:
    x = passes.x
    method, batch_size = str(params.method), int(params.batch_size)
    baseline, described = make_baseline(
        str(params.baseline), x, *runner.normalization(), seed=int(params.seed)
    )
    alphas, weights = quadrature(method, int(params.steps))
    alphas, weights = alphas.to(torch.float32), weights.to(torch.float32)
    start, delta_x = baseline.float(), x.float() - baseline.float()
    total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for i, k in rows(x.shape[0], len(alphas), batch_size):
        i = i.to(x.device)
        a = alphas[k].to(x.device).view(-1, 1, 1, 1)
        points = (start[i] + a * delta_x[i]).to(x.dtype)  # x' + alpha (x - x'), one alpha per row
        done = runner.passes(points, passes.targets[i], PLAIN, batch_size=points.shape[0])
        total.index_add_(0, i, done.input_grads["plain"] * weights[k].to(x.device).view(-1, 1, 1, 1))
    raw = total * delta_x
    f_base = runner.forward(baseline, batch_size=batch_size).gather(1, passes.targets[:, None])[:, 0]
    f_x = passes.logits.float().gather(1, passes.targets[:, None])[:, 0]
    notes = [
        f"baseline: {described}",
        f"{len(alphas)} {method} steps, plain autograd gradients",
        *_completeness_notes(raw, f_x, f_base),
    ]
    return Result(raw, tuple(notes), offset=f_base)


def _completeness_notes(raw: torch.Tensor, f_x: torch.Tensor, f_base: torch.Tensor) -> list[str]:
    """Sundararajan et al.'s completeness, per sample: how far sum(IG) is from f(x) - f(x')."""
    total = raw.double().sum((1, 2, 3))
    delta = (f_x - f_base).double()
    notes = []
    for s in range(raw.shape[0]):
        err = abs(float(total[s] - delta[s]))
        rel = err / max(abs(float(delta[s])), 1e-12)
        hint = "; more steps lower it" if rel > 0.05 else ""
        notes.append(
            f"sample {s}: completeness sum(IG) = {float(total[s]):.5g} vs f(x) - f(baseline) = "
            f"{float(delta[s]):.5g}: error {err:.2g} ({rel:.1%}){hint}"
        )
    return notes
