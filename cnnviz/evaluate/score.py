"""`evaluate` and `score`: judge every map of an `Explanation` with registered metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.capture import model_guard
from ..engine.layout import param_like
from ..methods import get_method
from ..types import Explanation
from . import localize
from .perturb import (
    DEFAULT_STEPS,
    BaselineArg,
    ConfidenceChange,
    Curves,
    check_input,
    check_steps,
    confidence_change,
    deletion_insertion,
    input_heatmaps,
)
from .registry import Metric, resolve_metrics
from .sanity import SanityCheck, model_randomization

EvalProgress = Callable[[float, str], None]

RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: this model was not trained, so these scores say whether the code runs, "
    "not whether a method is any good"
)


@dataclass(frozen=True)
class Evaluation:
    """The result of `evaluate`.

    Attributes:
        scores: method id -> metric id -> (B,) float tensor, one value per image.
        curves: method id -> deletion/insertion `Curves` (B rows), when asked for.
        confidence: method id -> `ConfidenceChange` (Average Drop / Increase in Confidence).
        chance: metric id -> (B,) the score of a uniformly random map (localization metrics).
        sanity: the model-randomization check, when asked for.
        refused: method id -> metric id -> why the metric is not defined for that method
            (only with ``strict=False``).
        targets: (B,) the classes the maps explain.
        seconds: wall time of the whole evaluation.
        random_weights: the model was not trained (every caption and file must say so).
        notes: facts to show with the numbers.
    """

    scores: dict[str, dict[str, torch.Tensor]]
    curves: dict[str, Curves]
    confidence: dict[str, ConfidenceChange]
    chance: dict[str, torch.Tensor]
    sanity: SanityCheck | None
    refused: dict[str, dict[str, str]]
    targets: torch.Tensor
    seconds: float
    random_weights: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def mean(self, method: str, metric: str) -> float:
        return float(self.scores[method][metric].float().mean())


def _module_and_flag(model, random_weights: bool | None) -> tuple[nn.Module, bool]:
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise ValueError(f"model must be an nn.Module or a cnnviz.zoo.Model; got {type(model).__name__}")
    if random_weights is None:
        random_weights = bool(getattr(model, "random_weights", False))
    return module, random_weights


def check_explanation(module: nn.Module, x: torch.Tensor, explanation: Explanation) -> torch.Tensor:
    """One forward of `x`: (B,) the target probabilities, after checking they are the explanation's.

    A map is only judged against the model and the images it explains; an explanation of other
    images or of another model raises ValueError instead of giving numbers that mean nothing.
    """
    if not isinstance(explanation, Explanation):
        raise ValueError(f"explanation must be a cnnviz.Explanation; got {type(explanation).__name__}")
    b = x.shape[0]
    if explanation.logits.shape[0] != b:
        raise ValueError(f"the explanation is of {explanation.logits.shape[0]} images, x has {b}")
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    for attr in explanation:
        if tuple(attr.input_size) != hw or attr.raw.shape[0] != b:
            raise ValueError(
                f"the {attr.method} map was computed for {attr.raw.shape[0]} images of size "
                f"{tuple(attr.input_size)}, x is {b} images of size {hw}"
            )
    device, dtype = param_like(module)
    with model_guard(module), torch.inference_mode():
        logits = module(x.detach().to(device, dtype)).float().cpu()
    ref = explanation.logits.float().cpu()
    if logits.shape != ref.shape or (logits - ref).abs().max() > 1e-3 * max(1.0, float(ref.abs().max())):
        raise ValueError(
            "the explanation was not computed by this model on these images (its logits differ from a "
            "forward pass of x); explain and evaluate the same model and input"
        )
    return logits.softmax(-1).gather(1, explanation.targets.cpu().long()[:, None])[:, 0]


def evaluate(
    model,
    x: torch.Tensor,
    explanation: Explanation,
    metrics: str | Sequence[str | Metric] = ("deletion", "insertion"),
    boxes: torch.Tensor | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    baseline: BaselineArg = "zero",
    insertion_start: BaselineArg = "blur",
    batch_size: int | None = None,
    tolerance: float = localize.POINTING_TOLERANCE,
    randomization_steps: int = 1,
    seed: int = 0,
    strict: bool = True,
    random_weights: bool | None = None,
    progress: EvalProgress | None = None,
) -> Evaluation:
    """Judge every map of `explanation` with `metrics` (see `list_metrics()`).

    Args:
        model: the model that produced `explanation` (nn.Module or `cnnviz.zoo.Model`).
        x: (B, 3, H, W) the preprocessed images it explains.
        explanation: `cnnviz.explain(model, x, ...)`.
        metrics: metric ids, a list or a comma-separated string.
        boxes: (B, 4) boxes (x0, y0, x1, y1) in input pixels, or (B, H, W) masks: the object,
            for the localization metrics.
        steps, baseline, insertion_start, batch_size: see `deletion_insertion`.
        tolerance: the pointing game's tolerance in pixels.
        randomization_steps: steps of the cascade for the ``randomization`` metric
            (1 = the classifier only).
        seed: seed of the randomization.
        strict: raise when a metric is not defined for a method (AD/IC for gradient images);
            with False that pair is left out and listed in `Evaluation.refused`.
        random_weights: the model is untrained (default: read from a `cnnviz.zoo.Model`).
        progress: called with (fraction done, what is running).

    Returns:
        An `Evaluation`; its `scores` is what `score` returns.
    """
    t0 = time.perf_counter()
    module, random_weights = _module_and_flag(model, random_weights)
    check_input(x)
    chosen = resolve_metrics(metrics)
    ids = {m.id for m in chosen}
    if "deletion" in ids or "insertion" in ids:
        check_steps(steps)
    b, hw = x.shape[0], (int(x.shape[-2]), int(x.shape[-1]))
    if not isinstance(explanation, Explanation) or not len(explanation):
        raise ValueError("explanation must be a cnnviz.Explanation with at least one map")
    families = {m: get_method(m).family for m in explanation.attributions}
    refused: dict[str, dict[str, str]] = {}
    plan: dict[str, list[str]] = {m.id: [] for m in chosen}  # metric -> methods
    for metric in chosen:
        for method, family in families.items():
            reason = metric.refusal(family)
            if reason is None:
                plan[metric.id].append(method)
            elif strict:
                raise ValueError(f"{metric.id} does not apply to {method}: {reason}")
            else:
                refused.setdefault(method, {})[metric.id] = reason
    masks = None
    if any(m.needs_box for m in chosen):
        if boxes is None:
            needing = [m.id for m in chosen if m.needs_box]
            raise ValueError(f"{', '.join(needing)} need the object's box or mask: pass boxes=")
        masks = localize.region_masks(boxes, b, hw)
    say = progress or (lambda f, s: None)
    targets = explanation.targets.cpu()
    scores: dict[str, dict[str, torch.Tensor]] = {m: {} for m in explanation.attributions}
    curves: dict[str, Curves] = {}
    confidence: dict[str, ConfidenceChange] = {}
    chance: dict[str, torch.Tensor] = {}
    notes: list[str] = [RANDOM_WEIGHTS_NOTE] if random_weights else []
    heat = {m: input_heatmaps(explanation[m].raw, hw, f"the {m} map") for m in explanation.attributions}
    flat = [m for m, h in heat.items() if bool((h.flatten(1).amax(1) == h.flatten(1).amin(1)).any())]
    if flat:
        notes.append(f"constant map ({', '.join(flat)}): its pixel ranking is arbitrary (raster order)")

    perturbing = [i for i in ("deletion", "insertion") if plan.get(i)]
    conf_methods = sorted(set(plan.get("average_drop", [])) | set(plan.get("increase_in_confidence", [])))
    conf_methods = [m for m in explanation.attributions if m in conf_methods]
    if perturbing or conf_methods:
        say(0.0, "checking the explanation against the model")
        original = check_explanation(module, x, explanation)
    if perturbing:
        methods = [m for m in explanation.attributions if any(m in plan[c] for c in perturbing)]
        stacked = torch.cat([heat[m] for m in methods])
        sample = torch.arange(b).repeat(len(methods))
        span = 0.8 if conf_methods else 0.95
        result = deletion_insertion(
            module,
            x,
            stacked,
            targets,
            steps=steps,
            baseline=baseline,
            insertion_start=insertion_start,
            curves=tuple(perturbing),
            sample_index=sample,
            batch_size=batch_size,
            original=original,
            progress=lambda d, t: say(span * d / t, "deletion and insertion"),
        )
        for j, m in enumerate(methods):
            rows = slice(j * b, (j + 1) * b)
            part = Curves(
                result.fractions,
                None if result.deletion is None else result.deletion[rows],
                None if result.insertion is None else result.insertion[rows],
                result.score,
            )
            curves[m] = part
            if m in plan.get("deletion", []):
                scores[m]["deletion"] = part.deletion_auc
            if m in plan.get("insertion", []):
                scores[m]["insertion"] = part.insertion_auc
    if conf_methods:
        stacked = torch.cat(
            [explanation[m].raw if explanation[m].raw.dim() == 3 else heat[m] for m in conf_methods]
        )
        change = confidence_change(
            module,
            x,
            stacked,
            targets,
            sample_index=torch.arange(b).repeat(len(conf_methods)),
            batch_size=batch_size,
            original=original,
            progress=lambda d, t: say(0.8 + 0.15 * d / t, "average drop / increase in confidence"),
        )
        for j, m in enumerate(conf_methods):
            rows = slice(j * b, (j + 1) * b)
            confidence[m] = ConfidenceChange(change.original[rows], change.masked[rows])
            if m in plan.get("average_drop", []):
                scores[m]["average_drop"] = confidence[m].drop
            if m in plan.get("increase_in_confidence", []):
                scores[m]["increase_in_confidence"] = confidence[m].increase
    for metric_id in ("pointing_game", "energy_in_box"):
        if not plan.get(metric_id) or masks is None:  # box metrics are planned only with boxes
            continue
        chance[metric_id] = localize.chance(masks, metric_id, tolerance)
        for m in plan[metric_id]:
            if metric_id == "pointing_game":
                scores[m][metric_id] = localize.pointing_game(heat[m], masks, hw, tolerance)
            else:
                scores[m][metric_id] = localize.energy_in_box(heat[m], masks, hw)
    sanity = None
    if plan.get("randomization"):
        say(0.95, "model randomization")
        sanity = model_randomization(
            module, x, plan["randomization"], explanation=explanation, steps=randomization_steps, seed=seed
        )
        for m in plan["randomization"]:
            scores[m]["randomization"] = sanity.spearman_abs[m][-1]
        notes.extend(sanity.notes)
    say(1.0, "done")
    ordered = {m: {k: scores[m][k].float().cpu() for k in ids if k in scores[m]} for m in scores}
    ordered = {m: {k: ordered[m][k] for k in [c.id for c in chosen] if k in ordered[m]} for m in ordered}
    return Evaluation(
        scores=ordered,
        curves=curves,
        confidence=confidence,
        chance=chance,
        sanity=sanity,
        refused=refused,
        targets=targets,
        seconds=time.perf_counter() - t0,
        random_weights=random_weights,
        notes=tuple(notes),
    )


def score(
    model: nn.Module,
    x: torch.Tensor,
    explanation: Explanation,
    metrics: Sequence[str],
    boxes: torch.Tensor | None = None,
    **params,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-image scores: method id -> metric id -> (B,) float tensor.

    The plain form of `evaluate` (same arguments; `params` are its keyword options); use
    `evaluate` for the curves, the chance levels and the notes.

    >>> import cnnviz, cnnviz.evaluate, timm, torch
    >>> model = timm.create_model("resnet18", pretrained=False).eval()
    >>> x = torch.randn(1, 3, 64, 64)
    >>> ex = cnnviz.explain(model, x, ["grad_cam"])
    >>> s = cnnviz.evaluate.score(model, x, ex, ["deletion", "insertion"], steps=4)
    >>> sorted(s["grad_cam"])
    ['deletion', 'insertion']
    """
    return evaluate(model, x, explanation, metrics, boxes, **params).scores
