"""The Gradio app's settings, model pool, choices, input parsing and text panels, free of Gradio.

`cnnviz.app.ui` turns these functions into pages and events. Everything here raises `ValueError`
with a message a visitor can act on; the UI shows it as a `gr.Error`.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

import cnnviz
from cnnviz import zoo
from cnnviz.common import close_matches, did_you_mean, env_flag
from cnnviz.zoo import hub, packaged
from cnnviz.zoo.preprocess import to_rgb

if TYPE_CHECKING:
    from cnnviz.types import Anatomy
    from cnnviz.zoo import Model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
SUPPORT_SUMMARY = ROOT / "support" / "summary.md"
SUPPORT_CSV = ROOT / "support" / "sweep.csv"
ANY = "any"
#: Support table columns: (header, sweep.csv column).
SUPPORT_COLUMNS = (
    ("model", "name"),
    ("family", "family"),
    ("params (M)", "params_m"),
    ("layout", "layout"),
    ("head", "head_kind"),
    ("CAM exact", "cam_exact"),
    ("CAM", "cam"),
    ("Grad-CAM", "grad_cam"),
    ("guided Grad-CAM", "guided_grad_cam"),
    ("gradient", "vanilla_gradient"),
    ("deconvnet", "deconvnet"),
    ("guided backprop", "guided_backprop"),
    ("seconds", "t_total"),
)
TOP1 = "top-1 (predicted class)"
FINAL_LABEL = "final map (default)"
"""The layer dropdown's entry for the engine's own choice of layer (`Anatomy.source`)."""
MAX_IMAGE_SIDE = 2048  # larger uploads are shrunk first: the model sees ~224 px anyway


def _env_int(env: Mapping[str, str], name: str, default: int, low: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < low:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer >= {low}")
    return int(raw)


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"environment variable {name}={raw!r} must be a number >= 0 (0: no limit)")
    return value


@dataclass(frozen=True)
class AppSettings:
    """Deployment settings, read once from the environment.

    Attributes:
        weights: ``auto`` (Hub weights; where the Hub cannot be had, the packaged weights of the
            models that have them, else random), ``hub``, ``packaged`` or ``random``.
        allow_any_model: whether visitors may type any timm name (CNNVIZ_ALLOW_ANY_MODEL; on by
            default locally, off by default on Hugging Face Spaces where memory is shared).
        default_model: model shown first (CNNVIZ_DEFAULT_MODEL, else `default_model_id`: the
            curated ResNet-50 where the Hub has its weights, else the packaged EfficientNet-Lite0).
        hub_weights: whether the Hub (or its cache) had the curated ResNet-50's weights at
            start-up; False offline, which the banner explains.
        max_compare: most models in one comparison.
        queue_size: most events waiting in Gradio's queue (CNNVIZ_QUEUE_SIZE).
        concurrency: events that run models at the same time (CNNVIZ_CONCURRENCY).
        max_model_mb: largest model, in MiB of weights, that a visitor may load; measured on the
            meta device before building (CNNVIZ_MAX_MODEL_MB; 0: no limit).
        time_limit_s: seconds after which a request's PyTorch work is stopped
            (CNNVIZ_TIME_LIMIT_S; 0: no limit).
        max_batch_size: largest ``batch_size`` a visitor may give a method: the inputs pushed
            through the model at once, so the activation memory of one request
            (CNNVIZ_MAX_BATCH_SIZE; 0: the registry's bound).
        max_samples: largest ``n_samples`` (SmoothGrad) or ``steps`` (Integrated Gradients), the
            passes one sample costs (CNNVIZ_MAX_SAMPLES; 0: the registry's bound).
    """

    weights: str
    allow_any_model: bool
    default_model: str
    max_compare: int = 6
    queue_size: int = 16
    concurrency: int = 1
    hub_weights: bool = True
    max_model_mb: float = 1500.0
    time_limit_s: float = 120.0
    max_batch_size: int = 32
    max_samples: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppSettings:
        env = os.environ if env is None else env
        weights = env.get("CNNVIZ_WEIGHTS", "").strip() or "auto"
        if weights not in zoo.WEIGHTS_POLICIES:
            allowed = ", ".join(repr(w) for w in zoo.WEIGHTS_POLICIES)
            raise ValueError(f"CNNVIZ_WEIGHTS={weights!r}: expected one of {allowed}")
        on_spaces = bool(env.get("SPACE_ID"))
        # one probe at start-up (the cache, else a metadata request of a few seconds at most)
        hub_weights = weights == "hub" or (weights == "auto" and hub.hub_has_weights(hub_default_id()))
        return cls(
            weights=weights,
            allow_any_model=env_flag(env, "CNNVIZ_ALLOW_ANY_MODEL", not on_spaces),
            default_model=env.get("CNNVIZ_DEFAULT_MODEL", "").strip()
            or default_model_id(weights, hub_weights),
            queue_size=_env_int(env, "CNNVIZ_QUEUE_SIZE", 16),
            concurrency=_env_int(env, "CNNVIZ_CONCURRENCY", 1),
            hub_weights=hub_weights,
            max_model_mb=_env_float(env, "CNNVIZ_MAX_MODEL_MB", cls.max_model_mb),
            time_limit_s=_env_float(env, "CNNVIZ_TIME_LIMIT_S", cls.time_limit_s),
            max_batch_size=_env_int(env, "CNNVIZ_MAX_BATCH_SIZE", cls.max_batch_size, low=0),
            max_samples=_env_int(env, "CNNVIZ_MAX_SAMPLES", cls.max_samples, low=0),
        )


def hub_default_id() -> str:
    """The curated ResNet-50 if the zoo lists one, else the zoo's first entry."""
    ids = [e.id for e in zoo.curated()]
    if not ids:
        raise ValueError("models.yaml lists no model; set CNNVIZ_DEFAULT_MODEL to a timm name")
    return next((i for i in ids if i.split(".")[0] == "resnet50"), ids[0])


def trained_offline() -> list[zoo.ZooEntry]:
    """The curated models whose packaged weights are installed here (trained without the Hub)."""
    return [e for e in zoo.packaged_models() if e.packaged is not None and packaged.is_installed(e.packaged)]


def default_model_id(weights: str = "hub", hub_weights: bool = True) -> str:
    """The model the Explain tab opens with: the curated ResNet-50 (`hub_default_id`) where its
    weights come from the Hub (or the deployment wants random weights), else the first model with
    installed packaged weights (EfficientNet-Lite0), so that an offline app opens on a trained
    network."""
    if weights == "random" or (weights in ("hub", "auto") and hub_weights):
        return hub_default_id()
    offline = trained_offline()
    return offline[0].id if offline else hub_default_id()


# ----------------------------------------------------------------------------- choices and parsing


def model_choices() -> list[tuple[str, str]]:
    """Curated models as (``"Family · Label"``, id), grouped by family in models.yaml's order."""
    entries = list(zoo.curated())
    order = {fam: i for i, fam in reversed(list(enumerate(e.family for e in entries)))}
    entries.sort(key=lambda e: order[e.family])  # stable: keeps the yaml order inside a family
    return [(f"{e.family} · {e.label}", e.id) for e in entries]


def resolve_model(name: str | None, settings: AppSettings) -> str:
    """A curated id (from an id or a display label), or any timm name where allowed."""
    name = (name or "").strip() or settings.default_model
    choices = model_choices()
    by_label = {label.lower(): mid for label, mid in choices}
    ids = [mid for _, mid in choices]
    if name in ids or name == settings.default_model:
        return name
    if name.lower() in by_label:
        return by_label[name.lower()]
    if settings.allow_any_model:
        return name
    hint = did_you_mean(close_matches(name, ids, cutoff=0.4))
    raise ValueError(
        f"model {name!r} is not in this deployment's list (CNNVIZ_ALLOW_ANY_MODEL is off); "
        f"choose one of: {', '.join(ids)}{hint}"
    )


def param_values(values: Sequence[object]) -> dict[str, dict[str, object]]:
    """The parameter components' values (in `param_specs()` order) as `cnnviz.explain`'s params."""
    specs = param_specs()
    if len(values) != len(specs):
        raise ValueError(f"expected {len(specs)} method parameter values, got {len(values)}")
    out: dict[str, dict[str, object]] = {}
    for (mid, p), value in zip(specs, values, strict=True):
        if value is None or value == "":
            continue
        out.setdefault(mid, {})[p.name] = value
    return out


COSTLY = {
    "batch_size": ("max_batch_size", "CNNVIZ_MAX_BATCH_SIZE"),
    "n_samples": ("max_samples", "CNNVIZ_MAX_SAMPLES"),
    "steps": ("max_samples", "CNNVIZ_MAX_SAMPLES"),
}
"""Method parameters whose value multiplies a request's time or memory, and the setting (and its
environment variable) that bounds them in this deployment."""


def param_high(p: cnnviz.methods.Param, settings: AppSettings) -> float | None:
    """The largest value a visitor may give `p` here: the registry's bound, lowered by the
    deployment's limit for costly parameters (`COSTLY`)."""
    attr, _ = COSTLY.get(p.name, ("", ""))
    cap = int(getattr(settings, attr)) if attr else 0
    if not cap:
        return p.high
    return cap if p.high is None else min(p.high, cap)


def bounded_params(
    methods: Sequence[str], params: dict[str, dict[str, object]], settings: AppSettings
) -> dict[str, dict[str, object]]:
    """`params` for `methods` within this deployment's limits: a value above a limit is refused
    (naming the limit and its variable); a default above it runs at the limit instead."""
    out = {mid: dict(values) for mid, values in params.items()}
    for mid in methods:
        method = cnnviz.get_method(mid)
        for p in method.params:
            high = param_high(p, settings)
            if high is None or high == p.high or isinstance(p.default, (bool, str)):
                continue
            given = out.get(mid, {}).get(p.name)
            if given is None:
                if float(p.default) > high:
                    out.setdefault(mid, {})[p.name] = type(p.default)(high)
                continue
            try:
                value = float(given)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue  # the method's own check names the wrong type
            if value > high:
                env = COSTLY[p.name][1]
                raise ValueError(
                    f"{method.label}: {p.name} = {value:g} is above this server's limit of {high:g} ({env})"
                )
    return out


def request_params(
    chosen: Sequence[str], values: Sequence[object], settings: AppSettings
) -> dict[str, dict[str, object]]:
    """A request's method parameters: the parameter inputs' `values` (none: every default), those
    of the `chosen` methods only, within this deployment's limits (`bounded_params`)."""
    params = param_values(values) if values else {}
    params = {mid: v for mid, v in params.items() if mid in chosen}
    return bounded_params(chosen, params, settings)


def param_specs() -> list[tuple[str, cnnviz.methods.Param]]:
    """(method id, parameter) for every method parameter of the registry, in display order."""
    return [(m.id, p) for m in cnnviz.list_methods() for p in m.params]


def method_status(anatomy: Anatomy, layer: str | None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Every method as a (label, id) choice, flagged "n/a" where it does not apply; id -> reason.

    All ids stay choices, so a request that still names a refused method (the page sends the
    old selection while it updates) gets a grey tile with the reason rather than a refusal.
    """
    choices, refused = [], {}
    for method in cnnviz.list_methods():
        reason = method.refusal(anatomy, anatomy.is_final(layer))
        if reason:
            refused[method.id] = reason
        choices.append((f"{method.label} (n/a)" if reason else method.label, method.id))
    return choices, refused


def kept_methods(selected: Sequence[str] | None, refused: Mapping[str, str]) -> list[str]:
    """The selection minus the refused methods, or the default selection when nothing is left."""
    usable = [m.id for m in cnnviz.list_methods() if m.id not in refused]
    return [m for m in (selected or []) if m in usable] or default_methods(usable)


def default_methods(usable_ids: Sequence[str]) -> list[str]:
    """The registry's preferred methods among `usable_ids` (else the first two)."""
    picked = [m for m in cnnviz.methods.preferred_ids() if m in usable_ids]
    return picked or list(usable_ids[:2])


def class_choices(class_names: Sequence[str]) -> list[str]:
    return [TOP1, *(f"{i} · {name}" for i, name in enumerate(class_names))]


def parse_target(value: str | int | None, class_names: Sequence[str]) -> int | None:
    """None (top-1) from empty/``top-1``; an index from ``"207 · golden retriever"``, 207 or a name."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "top-1", TOP1.lower())):
        return None
    text = str(value).strip()
    match = re.match(r"^(\d+)(\s*·.*)?$", text)
    if match:
        index = int(match.group(1))
        if index >= len(class_names):
            raise ValueError(
                f"target class {index} is out of range: this model has {len(class_names)} classes"
            )
        return index
    lowered = [n.lower() for n in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    for index, name in enumerate(lowered):  # one synonym of "tabby, tabby cat"
        if text.lower() in (s.strip() for s in name.split(",")):
            return index
    synonyms = sorted({s.strip() for name in lowered for s in name.split(",")})
    hint = did_you_mean(close_matches(text.lower(), synonyms))
    raise ValueError(f"target class {text!r} is not a class of this model; give a class index or name{hint}")


def parse_layer(value: str | None, anatomy: Anatomy) -> str:
    """The layer to explain, by name: the engine's own choice (`anatomy.source`: the final map, or
    for class-token models the layer the gradient reaches) for the dropdown's default entry, never
    a curated override; otherwise one of `anatomy.stages`."""
    if value is None or value.strip() in ("", "final", FINAL_LABEL):
        return anatomy.source
    if value in anatomy.stages:
        return value
    hint = did_you_mean(close_matches(value, anatomy.stages, cutoff=0.4))
    raise ValueError(
        f"layer {value!r} is not a stage of this model; choose 'final' or one of: "
        f"{', '.join(anatomy.stages) or '(none)'}{hint}"
    )


def compare_defaults(default_model: str, n: int = 3) -> list[str]:
    """The default model, then the first curated model of each following family, `n` in all.

    When the default model is one with packaged weights (the app is offline), the models with
    installed packaged weights instead (EfficientNet-Lite0, -Lite1, -Lite2): trained networks only.
    """
    offline = [e.id for e in trained_offline()]
    if default_model in offline:
        return [default_model, *(i for i in offline if i != default_model)][: max(n, len(offline))]
    picked, families = [default_model], set()
    for entry in zoo.curated():
        if entry.id == default_model:
            families.add(entry.family)
    for entry in zoo.curated():
        if len(picked) >= n:
            break
        if entry.family not in families and entry.id not in picked:
            picked.append(entry.id)
            families.add(entry.family)
    return picked


def example_paths() -> list[str]:
    """The shipped example images (examples/*.jpg|png), sorted by name."""
    return sorted(str(p) for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def prepare_image(image: Image.Image | np.ndarray | None) -> Image.Image:
    """An upright 8-bit RGB PIL image (`cnnviz.zoo.preprocess.to_rgb`), shrunk to MAX_IMAGE_SIDE.

    The app's image inputs already deliver such pictures (`cnnviz.app.guard.read_image`); this
    also serves Python callers of the handlers. Paths are not accepted: files are read only by
    the guard, after it has checked them.
    """
    if image is None:
        raise ValueError("no image: upload, paste or photograph one, or click an example")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a picture, got {type(image).__name__}")
    image = to_rgb(image)
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return image


# ----------------------------------------------------------------------------- text panels


RANDOM_ON_PURPOSE = (
    "⚠ **Random weights.** This deployment is set to CNNVIZ_WEIGHTS=random, so every model runs on "
    "random weights: the pictures show how the methods work, not what a trained network looks at. "
    "Every caption says so."
)


def weights_banner(settings: AppSettings, models: Sequence[Model] = ()) -> str:
    """What the banner says about weights, or ``""`` when all is trained as expected.

    Offline (the Hub and its cache lack the weights), it names the models that are trained anyway
    (installed packaged weights) and says that the others run on random weights; `models` that
    turned out random are named.
    """
    if settings.weights == "random":
        return RANDOM_ON_PURPOSE
    random = [m.label or m.name for m in models if m.random_weights]
    parts = []
    if random:
        why = next((m.weights_note for m in models if m.random_weights and m.weights_note), "")
        parts.append(
            f"⚠ **Random weights: {', '.join(random)}.** "
            + (f"No trained weights could be had ({why}). " if why else "")
            + "The pictures show how the methods work, not what a trained network looks at."
        )
    names = ", ".join(e.label for e in trained_offline()) or "none (their packages are not installed)"
    if settings.weights == "packaged":
        parts.append(
            f"**Trained weights from pip packages** (CNNVIZ_WEIGHTS=packaged): {names}. "
            "Other models are not available in this deployment."
        )
    elif not settings.hub_weights:
        parts.append(
            "**Offline: the Hugging Face Hub cannot be reached** and its cache lacks the weights. "
            f"**Trained** (ImageNet weights shipped in pip packages): {names}. "
            "**Random weights**: every other model, as its captions say."
        )
    return "\n\n".join(parts)


def anatomy_markdown(model: Model) -> str:
    """The anatomy panel: where the map comes from, its layout and shape, the head, the CAM badge."""
    a = model.anatomy
    c, h, w = a.shape
    if a.cam_exact:
        badge = '<span class="cnnviz-badge cnnviz-ok">CAM exact</span>'
    else:
        badge = f'<span class="cnnviz-badge cnnviz-warn">CAM not exact</span> {a.cam_reason}'
    if model.random_weights:
        why = model.weights_note or "CNNVIZ_WEIGHTS=random"
        weights = f"**random weights** ({why}): maps and predictions are meaningless"
    elif model.weights_source == "packaged":
        weights = f"trained (ImageNet), from the {model.weights_origin} (sha256 checked)"
    else:
        weights = f"trained, from the {model.weights_origin}"
    name = f"`{model.name}`" + (f" ({model.label})" if model.label and model.label != model.name else "")
    grid = f", {a.num_prefix_tokens} prefix token(s), grid {a.grid[0]}×{a.grid[1]}" if a.grid else ""
    rows = [
        ("Model", name),
        ("Weights", weights),
        ("Map taken from", f"`{a.source}`" + (f": {a.source_note}" if a.source_note else "")),
        ("Layout", f"{a.layout}{grid}"),
        ("Map shape", f"C={c}, H={h}, W={w} at input {a.input_size[1]}×{a.input_size[2]}"),
        ("Head", f"{a.head} [{a.head_kind}], {a.num_classes} classes"),
        ("Activations", ", ".join(a.activations) or "none"),
        ("Stages", ", ".join(f"`{s}`" for s in a.stages) or "none"),
    ]
    return f"{badge}\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in rows) + "\n"


def refused_markdown(refused: Mapping[str, str]) -> str:
    if not refused:
        return "All methods apply to this model and layer."
    lines = [f"- **{cnnviz.get_method(m).label}**: {why}" for m, why in refused.items()]
    return "\n".join(["Marked n/a (a grey tile if chosen anyway):", *lines])


def methods_markdown() -> str:
    """The Methods tab, generated from the registry (formulas in $$…$$ for KaTeX)."""
    parts = []
    for m in cnnviz.list_methods():
        parts.append(
            f"### {m.label} (`{m.id}`)\n\n{m.summary}\n\n$$\n{m.formula.strip()}\n$$\n\n"
            f"- **Paper**: [{m.paper}]({m.url})\n- **Family**: {m.family}\n- **Cost**: {m.cost}\n"
            f"- **Requires**: {'; '.join(m.requires) or 'nothing beyond a differentiable model'}\n"
            + (f"- **Where it misleads**: {m.warning}\n" if m.warning else "")
            + "".join(f"- **Parameter** `{p.name}`: {p.describe().split(': ', 1)[1]}\n" for p in m.params)
        )
    return "\n---\n\n".join(parts)


@functools.cache
def support_rows() -> tuple[dict[str, str], ...]:
    """The support sweep's rows (support/sweep.csv), read once; empty before the sweep has run."""
    if not SUPPORT_CSV.is_file():
        return ()
    with SUPPORT_CSV.open(newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def support_choices(column: str) -> list[str]:
    """`ANY`, then the values of one sweep column, sorted."""
    return [ANY, *sorted({row.get(column, "") for row in support_rows()} - {""})]


def support_table(
    query: str = "", family: str = ANY, layout: str = ANY, cam_exact: str = ANY
) -> tuple[list[str], list[list[object]]]:
    """(headers, rows) of the sweep filtered by a model-name fragment, family, layout, CAM exactness.

    Numbers stay numbers, so the table sorts them as numbers.
    """
    query = (query or "").strip().lower()[:100]
    wanted = {"family": family, "layout": layout, "cam_exact": cam_exact}
    rows = []
    for row in support_rows():
        if query and query not in row["name"].lower():
            continue
        if any(value not in (None, "", ANY) and row.get(key) != value for key, value in wanted.items()):
            continue
        rows.append([_number(row.get(column, "")) for _, column in SUPPORT_COLUMNS])
    return [header for header, _ in SUPPORT_COLUMNS], rows


def _number(text: str) -> object:
    try:
        return float(text) if text and text[0] in "0123456789" else text
    except ValueError:
        return text


def support_markdown() -> str:
    """The Support tab: the sweep's summary when present, else the curated list from models.yaml."""
    if SUPPORT_SUMMARY.is_file():
        return SUPPORT_SUMMARY.read_text(encoding="utf-8")
    rows = [f"| `{e.id}` | {e.family} | {e.label} | {e.note} |" for e in zoo.curated()]
    head = (
        "The support sweep has not been run yet; these are the curated models of `models.yaml`. "
        "Any other timm model can be typed in the Explain tab where the deployment allows it.\n\n"
        "| model | family | label | note |\n|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"
