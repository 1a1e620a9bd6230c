"""Find, for any timm classifier, its final spatial map, the head after it and where CAM is exact.

The map comes from timm's contract (`forward_features` / `forward_head`), not from a search
for "the last Conv2d". Everything else is decided numerically on a probe input:

* the layout (NCHW, NHWC, tokens with a prefix and a grid) from the tensor's shape, checked
  against `output_fmt`, `num_features`, `num_prefix_tokens` and the patch embedding;
* whether the head sees only the spatial mean of the map, and whether it is affine in that
  mean (then CAM is exact: Zhou et al. 2016, `mean_xy M_c + b_c = logit_c`), or affine after a
  per-image normalization (LayerNorm / RMSNorm heads, exact after folding), or neither;
* for class-token heads, which earlier layer the gradient really reaches (Grad-CAM there).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .capture import ActivationRules, Members, capture_outputs, members, model_guard
from .head import HeadFold, analyze_head, describe_head
from .types import Anatomy

FINAL = "forward_features"


class AnatomyError(ValueError):
    """The model's anatomy cannot be determined (raised with the reason, never a guess)."""


@dataclass(frozen=True)
class MapSpec:
    """How to read a native feature tensor as a canonical (B, C, h, w) map."""

    layout: str
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def to_canonical(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout == "NCHW":
            return t
        if self.layout == "NHWC":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid
        return t[:, self.prefix :].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)

    def from_canonical(self, c: torch.Tensor, prefix_tokens: torch.Tensor | None = None) -> torch.Tensor:
        if self.layout == "NCHW":
            return c
        if self.layout == "NHWC":
            return c.permute(0, 2, 3, 1)
        tokens = c.flatten(2).transpose(1, 2)
        if self.prefix:
            if prefix_tokens is None:
                prefix_tokens = tokens.new_zeros(tokens.shape[0], self.prefix, tokens.shape[-1])
            tokens = torch.cat([prefix_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens


def probe_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The model's default input size from its data config (3, 224, 224 when unknown)."""
    try:
        from timm.data import resolve_model_data_config

        size = tuple(int(s) for s in resolve_model_data_config(model)["input_size"])
    except Exception:  # not a timm model, or no config: a plain default is documented
        size = (3, 224, 224)
    return size  # type: ignore[return-value]


def _grid_for(n: int, hw_in: tuple[int, int], model: nn.Module | None) -> tuple[int, int] | None:
    """A (h, w) grid with h * w == n matching the patch embedding or the input's aspect ratio."""
    if n <= 0:
        return None
    pe = getattr(model, "patch_embed", None) if model is not None else None
    if pe is not None:
        if hasattr(pe, "dynamic_feat_size"):
            try:
                g = tuple(int(v) for v in pe.dynamic_feat_size(hw_in))
                if g[0] * g[1] == n:
                    return g  # type: ignore[return-value]
            except Exception:  # some patch embeddings need a tensor; fall back to the aspect rule
                pass
        g = getattr(pe, "grid_size", None)
        if g is not None and len(g) == 2 and g[0] * g[1] == n:
            return (int(g[0]), int(g[1]))
    ratio = hw_in[0] / hw_in[1]
    guess = math.sqrt(n * ratio)
    for h in sorted({max(1, math.floor(guess)), max(1, math.ceil(guess)), max(1, round(guess))}):
        if n % h == 0 and abs((h / (n // h)) / ratio - 1) < 0.2:
            return (h, n // h)
    return None


def infer_spec(
    t: object, hw_in: tuple[int, int], model: nn.Module | None = None, final: bool = False
) -> MapSpec | None:
    """The layout of one feature tensor, or None when it is not a spatial map."""
    if not isinstance(t, torch.Tensor):
        return None
    if t.dim() == 4:
        nf = getattr(model, "num_features", None) if final else None
        if final and getattr(model, "output_fmt", None) == "NHWC":
            return MapSpec("NHWC")
        if nf and t.shape[1] != nf and t.shape[-1] == nf:
            return MapSpec("NHWC")
        ratio = hw_in[0] / hw_in[1]

        def fits(h: int, w: int) -> bool:
            return abs((h / w) / ratio - 1) < 0.2 and h <= hw_in[0] and w <= hw_in[1]

        if fits(t.shape[2], t.shape[3]):
            return MapSpec("NCHW")
        if fits(t.shape[1], t.shape[2]):
            return MapSpec("NHWC")
        return None
    if t.dim() == 3:
        n = t.shape[1]
        declared = getattr(model, "num_prefix_tokens", None) if final else None
        candidates = [declared] if isinstance(declared, int) else list(range(0, 17))
        for p in candidates:
            grid = _grid_for(n - p, hw_in, model)
            if grid is not None and grid[0] * grid[1] > 1:
                return MapSpec("tokens", p, grid)
    return None


@dataclass(frozen=True)
class Inspection:
    """Anatomy plus the tensors the engine needs (the CAM head fold)."""

    anatomy: Anatomy
    fold: HeadFold | None


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Inspection]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _fingerprint(found: Members) -> tuple:
    """Changes when a parameter or buffer is replaced, modified in place or given new data
    (load_state_dict, an optimizer step, a new head, ``p.data = ...``); cheap enough to compute
    on every `explain`."""
    tensors = found.params + found.buffers
    return (
        tuple(map(id, tensors)),
        tuple([t._version for t in tensors]),
        tuple([t.data_ptr() for t in tensors]),
    )


def inspect(model: nn.Module) -> Anatomy:
    """The anatomy of a timm classification model (random or pretrained weights).

    Raises:
        AnatomyError: when no spatial map can be found; the message says why.
    """
    return inspection(model).anatomy


def inspection(model: nn.Module, found: Members | None = None) -> Inspection:
    """`inspect` with the engine's extras; cached per model until its weights change.

    ``found``: ``members(model)`` when the caller has it already.
    """
    found = members(model) if found is None else found
    fp = _fingerprint(found)
    with _LOCK:
        hit = _CACHE.get(model)
    if hit is not None and hit[0] == fp:
        return hit[1]
    with model_guard(model, found):
        result = _inspect(model)
    with _LOCK:
        _CACHE[model] = (fp, result)
    return result


def _stage_names(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    names: list[str] = []
    modules = dict(model.named_modules())
    for entry in info if isinstance(info, list | tuple) else []:
        name = entry.get("module") if isinstance(entry, dict) else None
        if name and name in modules and name not in names:
            names.append(name)
    return names


def _feature_info(model: nn.Module) -> list[tuple[int, float]]:
    """(channels, reduction) of each stage timm declares in ``feature_info``."""
    info = getattr(model, "feature_info", None)
    out = []
    for entry in info if isinstance(info, list | tuple) else []:
        if isinstance(entry, dict):
            chs, red = entry.get("num_chs"), entry.get("reduction")
            if isinstance(chs, int) and isinstance(red, int | float) and red > 0:
                out.append((chs, float(red)))
    return out


def _matches(shape: tuple[int, ...], hw_in: tuple[int, int], chs: int, reduction: float) -> bool:
    c, h, w = shape  # a side within one of input / reduction: valid convolutions lose an edge row
    return c == chs and abs(h - hw_in[0] / reduction) <= 1 and abs(w - hw_in[1] / reduction) <= 1


def _layer_spec(
    model: nn.Module, x: torch.Tensor, hw_in: tuple[int, int]
) -> Callable[[str, torch.Tensor], MapSpec | None]:
    """``(name, output) -> MapSpec | None`` for a module's output on the probe `x`: a spatial map
    at a norm, block or stage output, never inside a projection (q, k, v, qkv, proj, fc)."""
    projections = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    def spec_of(name: str, out: torch.Tensor) -> MapSpec | None:
        if name in projections or out.shape[0] != x.shape[0]:
            return None
        return infer_spec(out, hw_in, model)

    return spec_of


def _stages_by_shape(
    model: nn.Module, x: torch.Tensor, hw_in: tuple[int, int], wanted: list[tuple[int, float]]
) -> list[tuple[str, tuple[int, int, int]]]:
    """Stages that timm declares but whose named module gives no single map (it returns a list
    or a tuple, as in HRNet, PiT, TNT, CrossViT, or the name is not a module): for each, the last
    module to finish, on a probe, whose output has the stage's channels and resolution."""
    spec_of = _layer_spec(model, x, hw_in)
    last: dict[tuple[int, float], tuple[str, tuple[int, int, int]]] = {}

    def keep(name: str, out: torch.Tensor) -> bool:  # records, keeps nothing
        spec = spec_of(name, out)
        if spec is not None:
            shape = tuple(int(v) for v in spec.to_canonical(out).shape[1:])
            for w in wanted:
                if _matches(shape, hw_in, *w):
                    last[w] = (name, shape)  # type: ignore[assignment]
        return False

    with torch.no_grad(), capture_outputs(model, None, keep):
        model.forward_head(model.forward_features(x))
    return [last[w] for w in wanted if w in last]


def param_like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's parameters (CPU float32 when it has none)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _inspect(model: nn.Module) -> Inspection:
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise AnatomyError(
            f"{type(model).__name__} has no forward_features/forward_head: cnnviz needs a timm "
            "classification model (timm.create_model(...))"
        )
    size = probe_input_size(model)
    hw_in = (size[1], size[2])
    gen = torch.Generator().manual_seed(0)
    device, dtype = param_like(model)
    x = torch.randn(2, *size, generator=gen).to(device, dtype)
    stages = _stage_names(model)
    rules = ActivationRules(switchable=False)
    arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    try:
        with torch.no_grad(), rules, capture_outputs(model, stages) as cap:
            feats = model.forward_features(x)
            logits = model.forward_head(feats)
    except NotImplementedError as err:  # timm's encoders (*_enc) have no classification path
        raise AnatomyError(f"{arch} cannot classify, so there is nothing to explain: {err}") from err
    spec = infer_spec(feats, hw_in, model, final=True)
    num_classes = int(logits.shape[-1]) if isinstance(logits, torch.Tensor) and logits.dim() == 2 else 0
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Identity) or getattr(model, "num_classes", 1) == 0:
        num_classes = 0

    source, source_note, fold = FINAL, "", None
    head_kind, head_desc, cam_exact, cam_reason = "none", "no classifier", False, ""
    if num_classes == 0:
        cam_reason = "the model has no classifier (num_classes=0); create it with num_classes=K"
    elif spec is not None:
        head_desc = describe_head(model, feats)
        verdict = analyze_head(model, spec, feats, logits)
        head_kind, cam_exact, cam_reason, fold = verdict.kind, verdict.exact, verdict.reason, verdict.fold
    else:
        kind = type(feats).__name__ if not isinstance(feats, torch.Tensor) else f"shape {tuple(feats.shape)}"
        head_kind, head_desc = "spatial", describe_head(model, feats)
        cam_reason = f"forward_features returns {kind}, not a single spatial map"

    if num_classes and (spec is None or head_kind == "token"):
        found = find_gradient_layer(model, x, hw_in)
        why = (
            "class-token pooling: the head reads only the class token" if head_kind == "token" else cam_reason
        )
        if found is not None:
            source, spec, share, source_out = found
            source_note = f"{why}; the gradient reaches this layer's patch tokens ({share:.0%} of its norm)"
        elif spec is None:
            raise AnatomyError(
                f"{arch}: {cam_reason}, and no layer's spatial positions receive the logit's gradient"
            )
        else:
            source_note = f"{why}, and no earlier layer receives a gradient either (an all-zero classifier?)"
    elif spec is None:
        raise AnatomyError(f"{arch}: {cam_reason} and the model has no classifier to follow")

    if source == FINAL:
        with torch.no_grad():
            canon = spec.to_canonical(feats)
    else:
        canon = spec.to_canonical(source_out)
        cap.outputs.setdefault(source, source_out)
        if source not in stages:
            stages.append(source)
    stage_names, stage_shapes = [], []
    for name in stages:
        out = cap.outputs.get(name)
        s = infer_spec(out, hw_in, model)
        if s is not None:
            stage_names.append(name)
            stage_shapes.append(tuple(int(v) for v in s.to_canonical(out).shape[1:]))
    missing = [w for w in _feature_info(model) if not any(_matches(sh, hw_in, *w) for sh in stage_shapes)]
    if missing:
        for name, shape in _stages_by_shape(model, x, hw_in, missing):
            if name not in stage_names:
                stage_names.append(name)
                stage_shapes.append(shape)
        order = sorted(range(len(stage_names)), key=lambda i: hw_in[0] / stage_shapes[i][1])
        stage_names = [stage_names[i] for i in order]
        stage_shapes = [stage_shapes[i] for i in order]
    anatomy = Anatomy(
        architecture=str(arch),
        layout=spec.layout,  # type: ignore[arg-type]
        shape=tuple(int(v) for v in canon.shape[1:]),  # type: ignore[arg-type]
        input_size=size,
        num_prefix_tokens=spec.prefix,
        grid=spec.grid,
        source=source,
        source_note=source_note,
        head=head_desc,
        head_kind=head_kind,
        num_classes=num_classes,
        cam_exact=cam_exact,
        cam_reason=cam_reason,
        activations=tuple(sorted(rules.kinds)),
        stages=tuple(stage_names),
        stage_shapes=tuple(stage_shapes),  # type: ignore[arg-type]
    )
    return Inspection(anatomy=anatomy, fold=fold if cam_exact else None)


def find_gradient_layer(
    model: nn.Module, x: torch.Tensor, hw_in: tuple[int, int]
) -> tuple[str, MapSpec, float, torch.Tensor] | None:
    """The last layer (in call order) whose spatial positions carry most of the logit's gradient.

    Returns its name, layout, the share of the gradient's norm on its spatial positions, and
    its output on `x` (detached).

    Used where the head ignores the final map's patch tokens (class-token pooling): there
    the gradient at `forward_features` is exactly zero on the patches, and Grad-CAM must
    be taken where the class token still reads them (in a ViT, the last block's `norm1`).
    """
    with torch.no_grad():
        final = model.forward_features(x[:1])
    width = final.shape[-1] if isinstance(final, torch.Tensor) and final.dim() == 3 else None
    for same_width in (True, False) if width else (False,):
        found = _search_gradient_layer(model, x, hw_in, width if same_width else None)
        if found is not None:
            return found
    return None


def _search_gradient_layer(
    model: nn.Module, x: torch.Tensor, hw_in: tuple[int, int], width: int | None
) -> tuple[str, MapSpec, float, torch.Tensor] | None:
    specs: dict[str, MapSpec] = {}

    spec_of = _layer_spec(model, x, hw_in)

    def keep(name: str, out: torch.Tensor) -> bool:
        if width is not None and out.shape[-1] != width:
            return False
        spec = spec_of(name, out)
        if spec is not None:
            specs[name] = spec
        return spec is not None

    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        with capture_outputs(model, None, keep) as cap:
            logits = model.forward_head(model.forward_features(xg))
        names = list(cap.order)
        if not names:
            return None
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        grads = torch.autograd.grad(score, [cap.outputs[n] for n in names], allow_unused=True)
    for name, g in zip(reversed(names), reversed(grads), strict=True):
        if g is None:
            continue
        total = g.norm()
        if not torch.isfinite(total) or total == 0:
            continue
        share = float(specs[name].to_canonical(g).norm() / total)
        if share >= 0.5:
            return name, specs[name], share, cap.outputs[name].detach()
    return None
