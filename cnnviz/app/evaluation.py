"""The app's judging views, free of Gradio: the Explain tab's Evaluate action (deletion and insertion
curves, Average Drop / Increase in Confidence) and the Sanity check tab (cascading model
randomization, Adebayo et al. 2018).

Everything is computed by `cnnviz.evaluate` (the same numbers as the library and the CLI); this
module only checks the visitor's input against the deployment's limits, runs it and lays out
the pictures and tables. Errors are `ValueError`s meant for people; `cnnviz.app.ui` shows them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

import cnnviz
import cnnviz.evaluate as ev
from cnnviz import render
from cnnviz.app.models import short_name

if TYPE_CHECKING:
    from cnnviz.types import Explanation
    from cnnviz.zoo import Model

DEFAULT_STEPS = 20  # RISE's and the library's default
MAX_STEPS = 50  # public limit: each step costs one forward per map and curve
MAX_EVALUATE_METHODS = 6  # public limit: each map costs 2 x steps forwards
EVALUATE_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")
MAX_SANITY_METHODS = 3  # public limit: each step of the cascade explains every method again
MAX_SANITY_STEPS = 12  # more than any curated model's cascade (classifier, stages, stem)
SANITY_DEFAULTS = ("grad_cam", "vanilla_gradient", "guided_backprop")
STRIP_CELL = 112  # pixels per map in the sanity strip
RANDOM_WEIGHTS = "RANDOM WEIGHTS"
SANITY_MEANING = (
    "Each column randomizes one more block of a copy of the network, from the classifier down "
    "(Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018); the curve is the Spearman rank "
    "correlation between the trained model's map and the randomized one's. A map that keeps its look "
    "while the network underneath is destroyed (correlation near 1) shows the image, not what the "
    "model learned; a map worth trusting falls apart at once (correlation near 0)."
)
RANDOM_SANITY = (
    f"**⚠ {RANDOM_WEIGHTS}: this model was not trained, so there is nothing learned for the check to "
    "destroy; these correlations mean nothing. Choose a trained model.**"
)
Say = Callable[[float, str], Any]


def _quiet(fraction: float, what: str) -> None:
    return None


# ----------------------------------------------------------------------------- input checks


def check_steps(steps: object, low: int = 2, high: int = MAX_STEPS, what: str = "steps") -> int:
    """A whole number of steps in [low, high] (a float like 20.0 from a slider is fine)."""
    message = f"{what} must be a whole number from {low} to {high}; got {steps!r}"
    if isinstance(steps, bool) or not isinstance(steps, int | float | str):
        raise ValueError(message)
    try:
        value = float(steps)
    except ValueError:
        raise ValueError(message) from None
    if not math.isfinite(value) or value != int(value) or not low <= value <= high:
        raise ValueError(message)
    return int(value)


def check_methods(methods: Sequence[str] | None, most: int, what: str) -> list[str]:
    """Registered method ids, at least one and at most `most`, without repeats."""
    chosen = list(dict.fromkeys(cnnviz.get_method(m).id for m in methods or []))
    if not chosen:
        raise ValueError(f"choose at least one method to {what}")
    if len(chosen) > most:
        raise ValueError(f"choose at most {most} methods to {what} at once (got {len(chosen)})")
    return chosen


def _refuse_inapplicable(ex: Explanation) -> None:
    """Judge only maps that exist: a method that does not apply is named with its reason."""
    if ex.refused:
        reasons = "; ".join(
            f"{cnnviz.get_method(m).label} does not apply here: {r}" for m, r in ex.refused.items()
        )
        raise ValueError(f"{reasons}. Untick it (methods marked n/a) and try again.")


def _class_name(model: Model, index: int) -> str:
    return model.class_names[index] if 0 <= index < len(model.class_names) else f"class {index}"


# ----------------------------------------------------------------------------- Evaluate


@dataclass(frozen=True)
class EvaluationView:
    """What the Evaluate action shows: the curves, the table, machine-readable scores."""

    curves: Image.Image
    table: str
    scores: dict[str, Any]
    evaluation: ev.Evaluation
    seconds: float


def evaluate_one(
    model: Model,
    image: Image.Image,
    methods: Sequence[str],
    target: int | None,
    layer: str | None,
    steps: int,
    params: Mapping[str, Mapping[str, object]] | None = None,
    say: Say = _quiet,
) -> EvaluationView:
    """Explain `image` as the Explain tab does, then judge every map with `EVALUATE_METRICS`.

    Deletion and insertion apply to every map; Average Drop / Increase in Confidence to the CAM
    family only (the table says n/a for the others, with the registry's reason).
    """
    steps = check_steps(steps)
    t0 = time.perf_counter()
    say(0.1, "explaining")
    ex = model.explain(
        model.preprocess(image), list(methods), target=target, layer=layer, strict=False, params=params
    )
    _refuse_inapplicable(ex)
    result = ev.evaluate(
        model,
        model.preprocess(image),
        ex,
        EVALUATE_METRICS,
        steps=steps,
        strict=False,
        progress=lambda f, what: say(0.15 + 0.8 * f, what),
    )
    say(0.97, "drawing the curves")
    seconds = time.perf_counter() - t0
    name = short_name(_class_name(model, int(ex.targets[0])))
    labels = {m: cnnviz.get_method(m).label for m in result.curves}
    curves = render.curves_image(
        {labels[m]: c for m, c in result.curves.items()},
        f"{model.display_name} · {name} · {steps} steps",
        random_weights=model.random_weights,
    )
    return EvaluationView(
        curves,
        score_table(result, model, name, ex.layer, steps, seconds),
        score_record(result, model, name, steps, seconds),
        result,
        seconds,
    )


def _cell(result: ev.Evaluation, method: str, metric: str) -> str:
    value = result.scores.get(method, {}).get(metric)
    if value is None:
        return "n/a"
    v = float(value[0])
    if metric == "average_drop":
        return f"{100 * v:.1f}%"
    if metric == "increase_in_confidence":
        return "yes" if v else "no"
    return f"{v:.3f}"


def score_table(
    result: ev.Evaluation, model: Model, class_name: str, layer: str, steps: int, seconds: float
) -> str:
    """A markdown table: one row per method, one column per metric with its direction (registry)."""
    metrics = [ev.get_metric(m) for m in EVALUATE_METRICS]
    lines = []
    if model.random_weights:
        lines.append(f"**⚠ {ev.RANDOM_WEIGHTS_NOTE}.**\n")
    lines.append(
        f"**{model.display_name}**, class **{class_name}**, CAM layer `{layer}`, {steps} steps: "
        f"{seconds:.1f} s.\n"
    )
    lines.append("| method | " + " | ".join(f"{m.label} ({m.direction} is better)" for m in metrics) + " |")
    lines.append("| --- |" + " ---: |" * len(metrics))
    for method in result.scores:
        label = cnnviz.get_method(method).label
        if model.random_weights:
            label += f" ({RANDOM_WEIGHTS})"
        lines.append(f"| {label} | " + " | ".join(_cell(result, method, m.id) for m in metrics) + " |")
    refused = [m for m in metrics if any(m.id in r for r in result.refused.values())]
    for families in dict.fromkeys(m.families for m in refused):
        group = [m for m in refused if m.families == families]
        names = " and ".join(m.label for m in group)
        who = group[0].paper.split(",")[0]
        lines.append(
            f"\nn/a: {names} {'is' if len(group) == 1 else 'are'} defined for "
            f"{' and '.join(_family(f) for f in sorted(families))}-family maps only ({who} et al.)."
        )
    lines.append(
        "\nDeletion removes the pixels the map ranks highest (to the mean colour); insertion restores "
        "them onto a blurred copy (Petsiuk et al. 2018); the areas are under the class-probability "
        "curves above. Average Drop: how much of the class probability is lost when the image is "
        "multiplied by the normalized map; Increase in Confidence: whether it rises instead "
        "(Chattopadhay et al. 2018)."
    )
    lines += [f"\n*{note}.*" for note in result.notes if note != ev.RANDOM_WEIGHTS_NOTE]
    return "\n".join(lines)


def _family(family: str) -> str:
    return "CAM" if family == "cam" else family


def score_record(
    result: ev.Evaluation, model: Model, class_name: str, steps: int, seconds: float
) -> dict[str, Any]:
    """The scores for API users: plain numbers, each metric's direction, the weights' status."""
    record: dict[str, Any] = {
        "model": model.name,
        "weights": model.weights_origin,
        "random_weights": model.random_weights,
        "target": int(result.targets[0]),
        "class": class_name,
        "steps": steps,
        "seconds": round(seconds, 3),
        "directions": {m: ev.get_metric(m).direction for m in EVALUATE_METRICS},
        "scores": {
            method: {metric: float(values[0]) for metric, values in scores.items()}
            for method, scores in result.scores.items()
        },
        "not_applicable": {m: sorted(r) for m, r in result.refused.items()},
    }
    if model.random_weights:
        record["warning"] = ev.RANDOM_WEIGHTS_NOTE
    return record


# ----------------------------------------------------------------------------- Sanity check


@dataclass(frozen=True)
class SanityView:
    """What the Sanity check tab shows: the strip of maps, the correlation curves, the reading."""

    strip: Image.Image
    curves: Image.Image
    text: str
    correlations: dict[str, Any]
    check: ev.SanityCheck
    seconds: float


def sanity_one(
    model: Model,
    image: Image.Image,
    methods: Sequence[str],
    target: int | None,
    steps: int,
    say: Say = _quiet,
) -> SanityView:
    """Cascading randomization of a copy of `model` (the model itself is never changed).

    `steps` larger than the model's cascade run the whole cascade, down to the stem.
    """
    steps = check_steps(steps, 1, MAX_SANITY_STEPS, "randomization steps")
    t0 = time.perf_counter()
    x = model.preprocess(image)
    say(0.05, "explaining with the trained model")
    ex = model.explain(x, list(methods), target=target, strict=False)
    _refuse_inapplicable(ex)
    available = len(ev.cascade(model.module, ex.anatomy.stages))
    check = ev.model_randomization(
        model,
        x,
        list(ex.attributions),
        explanation=ex,
        steps=min(steps, available),
        progress=lambda done, total: say(0.1 + 0.8 * done / total, f"randomized {done} of {total} steps"),
    )
    say(0.92, "drawing the maps")
    seconds = time.perf_counter() - t0
    name = short_name(_class_name(model, int(check.targets[0])))
    strip = sanity_strip(check, model.model_view(image), model.random_weights)
    curves = sanity_plot(check, f"{model.display_name} · {name}", model.random_weights)
    text = sanity_text(check, model, name, available, seconds)
    return SanityView(strip, curves, text, sanity_record(check, model, name, seconds), check, seconds)


def _rho(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def sanity_strip(check: ev.SanityCheck, view: Image.Image, random_weights: bool = False) -> Image.Image:
    """Rows are methods, columns the trained map then each step; every map on its own scale."""
    columns = ["trained", *check.labels]
    cells, captions = [], []
    for method in check.methods:
        label = cnnviz.get_method(method).label
        for j, raw in enumerate(check.maps[method]):
            picture = render.attribution_image(raw, 0, view, view="absolute")
            cells.append(picture.resize((STRIP_CELL, STRIP_CELL), Image.Resampling.BILINEAR))
            if j == 0:
                tag = f" · {RANDOM_WEIGHTS}" if random_weights else ""
                captions.append(f"{label}\ntrained{tag}")
            else:
                rho = float(check.spearman_abs[method][j - 1, 0])
                captions.append(f"{columns[j].split(' (')[0]}\nρ = {_rho(rho)}")
    return render.grid(cells, captions, ncols=len(columns), pad=6, font_size=11, max_caption_lines=3)


def sanity_plot(check: ev.SanityCheck, title: str, random_weights: bool = False) -> Image.Image:
    """Spearman correlation (absolute maps solid, signed dashed) after each step of the cascade."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    ax = fig.subplots()
    xs = np.arange(1, len(check.steps) + 1)
    for i, method in enumerate(check.methods):
        label = cnnviz.get_method(method).label
        colour = f"C{i}"
        rho = check.spearman_abs[method][:, 0].numpy()
        ax.plot(xs, rho, marker="o", color=colour, label=f"{label} |map|")
        ax.plot(
            xs,
            check.spearman_signed[method][:, 0].numpy(),
            ls="--",
            color=colour,
            alpha=0.6,
            label=f"{label} signed",
        )
    ax.set_xticks(xs, [label.split(" (")[0] for label in check.labels], rotation=25, fontsize=8)
    ax.set_xlabel("randomized down to (cumulative, from the classifier)")
    ax.set_ylabel("Spearman ρ, trained vs randomized")
    ax.set_ylim(-0.3, 1.05)
    ax.axhline(0, color="grey", lw=0.8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    full = title + ("  [RANDOM WEIGHTS: untrained model, the check means nothing]" if random_weights else "")
    ax.set_title(full, fontsize=10, color="crimson" if random_weights else "black")
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def reading(first: float) -> str:
    """What the correlation after randomizing the classifier says about a method."""
    if math.isnan(first):
        return "its map became constant (no rank order), so it certainly changed"
    if first >= 0.9:
        return "barely changes: the map shows the image more than what the model learned (fails the check)"
    if first <= 0.5:
        return "changes at once: the map depends on the learned weights (passes the check)"
    return "changes partly"


def sanity_text(check: ev.SanityCheck, model: Model, class_name: str, available: int, seconds: float) -> str:
    lines = [RANDOM_SANITY + "\n"] if model.random_weights else []
    ran = len(check.steps)
    scope = "the whole cascade" if ran == available else f"{ran} of its {available} steps"
    lines.append(
        f"**{model.display_name}**, class **{class_name}**, {scope} ({', '.join(check.labels)}): "
        f"{seconds:.1f} s.\n"
    )
    lines.append(SANITY_MEANING + "\n")
    for method in check.methods:
        first = float(check.spearman_abs[method][0, 0])
        last = float(check.spearman_abs[method][-1, 0])
        label = cnnviz.get_method(method).label
        lines.append(
            f"- **{label}**: ρ = {_rho(first)} once the classifier is randomized, {_rho(last)} after "
            f"the last step; it {reading(first)}."
        )
    short = [label.split(" (")[0] for label in check.labels]  # the sentence above names them whole
    lines.append("\n| method (Spearman ρ of \\|map\\|) | " + " | ".join(short) + " |")
    lines.append("| --- |" + " ---: |" * len(check.labels))
    for method in check.methods:
        label = cnnviz.get_method(method).label + (f" ({RANDOM_WEIGHTS})" if model.random_weights else "")
        values = check.spearman_abs[method][:, 0].tolist()
        lines.append(f"| {label} | " + " | ".join(_rho(v) for v in values) + " |")
    lines += [f"\n*{note}.*" for note in check.notes]
    return "\n".join(lines)


def sanity_record(check: ev.SanityCheck, model: Model, class_name: str, seconds: float) -> dict[str, Any]:
    """The correlations for API users (NaN, a constant map, as null)."""

    def values(t: Any) -> list[float | None]:
        return [None if math.isnan(v) else round(float(v), 6) for v in t[:, 0].tolist()]

    record: dict[str, Any] = {
        "model": model.name,
        "weights": model.weights_origin,
        "random_weights": model.random_weights,
        "target": int(check.targets[0]),
        "class": class_name,
        "steps": list(check.labels),
        "seconds": round(seconds, 3),
        "spearman_abs": {m: values(check.spearman_abs[m]) for m in check.methods},
        "spearman_signed": {m: values(check.spearman_signed[m]) for m in check.methods},
        "ssim": {m: values(check.ssim[m]) for m in check.methods},
    }
    if model.random_weights:
        record["warning"] = ev.RANDOM_WEIGHTS_NOTE
    return record
