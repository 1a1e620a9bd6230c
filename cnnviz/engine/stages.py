"""Where to look inside a model: the stages timm declares, and the layer the gradient reaches."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .capture import capture_outputs
from .layout import MapSpec, infer_spec, timm_api


def stage_names(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    names: list[str] = []
    modules = dict(model.named_modules())
    for entry in info if isinstance(info, list | tuple) else []:
        name = entry.get("module") if isinstance(entry, dict) else None
        if name and name in modules and name not in names:
            names.append(name)
    return names


def feature_info(model: nn.Module) -> list[tuple[int, float]]:
    """(channels, reduction) of each stage timm declares in ``feature_info``."""
    info = getattr(model, "feature_info", None)
    out = []
    for entry in info if isinstance(info, list | tuple) else []:
        if isinstance(entry, dict):
            chs, red = entry.get("num_chs"), entry.get("reduction")
            if isinstance(chs, int) and isinstance(red, int | float) and red > 0:
                out.append((chs, float(red)))
    return out


def matches(shape: tuple[int, ...], hw_in: tuple[int, int], chs: int, reduction: float) -> bool:
    c, h, w = shape  # a side within one of input / reduction: valid convolutions lose an edge row
    return c == chs and abs(h - hw_in[0] / reduction) <= 1 and abs(w - hw_in[1] / reduction) <= 1


def layer_spec(
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


def stages_by_shape(
    model: nn.Module, x: torch.Tensor, hw_in: tuple[int, int], wanted: list[tuple[int, float]]
) -> list[tuple[str, tuple[int, int, int]]]:
    """Stages that timm declares but whose named module gives no single map (it returns a list
    or a tuple, as in HRNet, PiT, TNT, CrossViT, or the name is not a module): for each, the last
    module to finish, on a probe, whose output has the stage's channels and resolution."""
    spec_of = layer_spec(model, x, hw_in)
    last: dict[tuple[int, float], tuple[str, tuple[int, int, int]]] = {}

    def keep(name: str, out: torch.Tensor) -> bool:  # records, keeps nothing
        spec = spec_of(name, out)
        if spec is not None:
            shape = tuple(int(v) for v in spec.to_canonical(out).shape[1:])
            for w in wanted:
                if matches(shape, hw_in, *w):
                    last[w] = (name, shape)  # type: ignore[assignment]
        return False

    with torch.no_grad(), capture_outputs(model, None, keep):
        timm_api(model).forward_head(timm_api(model).forward_features(x))
    return [last[w] for w in wanted if w in last]


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
        final = timm_api(model).forward_features(x[:1])
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

    spec_of = layer_spec(model, x, hw_in)

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
            logits = timm_api(model).forward_head(timm_api(model).forward_features(xg))
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
