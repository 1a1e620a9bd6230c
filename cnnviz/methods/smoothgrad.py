"""SmoothGrad: a method averaged over noisy copies of the input, the copies pushed through the
model in batches.

`smoothgrad` smooths an input-resolution method (the gradient, guided backpropagation,
deconvnet, Input x Gradient, Guided Grad-CAM), `smoothgrad_cam` a map at a layer (Grad-CAM and
its relatives). The methods they can smooth are read from the registry when this module is
imported: every method of the family that reads only the shared passes (no parameters, no
passes of its own), so this module is imported last (see `cnnviz/methods/__init__.py`).
"""

from __future__ import annotations

import torch

from ..engine.passes import Passes, Runner
from ..types import Anatomy
from .cam import BLANK
from .paths import rows, standard_noise
from .registry import Method, Param, Params, Result, get_method, list_methods, register_method

PAPER = (
    "Smilkov, Thorat, Kim, Viégas & Wattenberg, 'SmoothGrad: removing noise by adding noise', "
    "ICML workshop on visualization for deep learning 2017"
)
URL = "https://arxiv.org/abs/1706.03825"
FORMULA = (
    r"\hat M^c(x) = \frac{1}{n} \sum_{k=1}^{n} M^c\big(x + \epsilon_k\big), \qquad "
    r"\epsilon_k \sim \mathcal N\big(0, \sigma^2 (x_{\max} - x_{\min})^2\big)"
)


def smoothable(family: str) -> tuple[str, ...]:
    """Registered methods of `family` that SmoothGrad can average: those that read only the
    shared passes (something from them, no parameters of their own)."""
    return tuple(m.id for m in list_methods() if m.family == family and m.needs and not m.params)


SIGMA_HELP = (
    "noise standard deviation as a fraction of each sample's range (max - min); the paper found 0.1-0.2 best"
)


def _params(family: str, default: str) -> tuple[Param, ...]:
    return (
        Param("base", default, "the method averaged over the noisy copies", choices=smoothable(family)),
        Param("n_samples", 25, "noisy copies averaged per sample", low=1, high=500),
        Param("sigma", 0.15, SIGMA_HELP, low=0.0, high=1.0),
        Param("batch_size", 16, "noisy copies per forward/backward batch", low=1, high=256),
        Param("seed", 0, "random seed of the noise (the same noise for every sample)", low=0, high=2**31 - 1),
    )


def _base_check(anatomy: Anatomy, layer_is_final: bool, params: Params) -> str | None:
    return get_method(str(params.base)).refusal(anatomy, layer_is_final)


def _base_on(base: Method, xs: torch.Tensor, targets: torch.Tensor, runner: Runner) -> Result:
    """`base` on the inputs `xs`, in one batch of the shared passes."""
    return base.compute(
        runner.passes(xs, targets, base.needs, batch_size=xs.shape[0]), base.defaults(), runner
    )


def smooth(passes: Passes, params: Params, runner: Runner) -> Result:
    """The mean of ``params.base`` over ``params.n_samples`` noisy copies of each sample."""
    base: Method = get_method(str(params.base))
    x, n, sigma = passes.x, int(params.n_samples), float(params.sigma)
    if sigma == 0.0:
        # every copy equals x: the mean is the method itself, computed once on the batch
        done = _base_on(base, x, passes.targets, runner)
        notes = (f"sigma = 0: every copy equals the input, so this is {base.id} itself", *done.notes)
        return Result(done.raw, notes)
    flat = x.detach().flatten(1).float()
    scale = sigma * (flat.amax(1) - flat.amin(1))  # (B,) the noise's standard deviation per sample
    noise = standard_noise(n, x, int(params.seed))
    total: torch.Tensor | None = None
    base_notes: tuple[str, ...] = ()
    blank = torch.zeros(x.shape[0], dtype=torch.long)  # copies whose map the base left blank
    for i, k in rows(x.shape[0], n, int(params.batch_size)):
        i, k = i.to(x.device), k.to(x.device)
        noisy = x[i] + scale[i].to(x.dtype).view(-1, 1, 1, 1) * noise[k]
        done = _base_on(base, noisy, passes.targets[i], runner)
        raw = done.raw.float()
        if total is None:
            total = torch.zeros((x.shape[0], *raw.shape[1:]), dtype=torch.float32, device=raw.device)
            base_notes = tuple(note for note in done.notes if not note.startswith("sample "))
        total.index_add_(0, i, raw)
        if any(BLANK in note for note in done.notes):  # the base's own account of a blank copy
            blank.index_add_(0, i.cpu(), (~raw.flatten(1).any(1)).long().cpu())
    stds = ", ".join(f"{float(s):.3g}" for s in scale)
    notes = (
        f"mean of {base.id} over {n} copies x + N(0, s^2), s = {sigma:g} x (max - min) of each sample "
        f"(s = {stds}), noise seed {params.seed}",
        *base_notes,
        *(
            f"sample {b}: {base.id}'s map is blank in all {n} noisy copies (before its ReLU it is "
            f"{BLANK}), so their mean is blank"
            for b in range(x.shape[0])
            if int(blank[b]) == n
        ),
    )
    assert total is not None  # n >= 1 and a non-empty batch: at least one batch ran
    return Result(total / n, notes)


@register_method(
    id="smoothgrad",
    label="SmoothGrad",
    family="gradient",
    paper=PAPER,
    url=URL,
    formula=FORMULA,
    summary="An input-resolution method (the gradient by default; guided backpropagation, "
    "deconvnet, Input x Gradient...) averaged over noisy copies of the input: the noise of the "
    "raw gradient averages out and the object's outline stays.",
    warning="sharper is not more faithful: the average shows what the model responds to near x, "
    "and its look depends on sigma and n",
    cost="n_samples forward + backward passes to the input, batched",
    requires=("what the averaged method requires",),
    check=_base_check,
    params=_params("gradient", "vanilla_gradient"),
)
def smoothgrad(passes: Passes, params: Params, runner: Runner) -> Result:
    return smooth(passes, params, runner)


@register_method(
    id="smoothgrad_cam",
    label="SmoothGrad over a CAM",
    family="cam",
    paper=PAPER + "; applied to Grad-CAM as in Omeiza, Speakman, Cintas & Weldemariam, 'Smooth "
    "Grad-CAM++', arXiv 2019",
    url=URL,
    formula=FORMULA + r", \quad M = \text{Grad-CAM (or another map at the layer)}",
    summary="Grad-CAM (or another method that reads the map at a layer) averaged over noisy copies "
    "of the input: steadier maps, at the layer's resolution.",
    warning="averaging hides how unstable the single map is; compare with the plain map",
    cost="n_samples forward passes + backward passes to the layer, batched",
    requires=("what the averaged method requires",),
    check=_base_check,
    params=_params("cam", "grad_cam"),
)
def smoothgrad_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    return smooth(passes, params, runner)
