"""How to read a feature tensor as a spatial map: its layout (NCHW, NHWC, tokens on a grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..types import FINAL

__all__ = ["FINAL", "MapSpec", "TimmClassifier", "infer_spec", "param_like", "probe_input_size", "timm_api"]


class TimmClassifier(Protocol):
    """timm's contract for classifiers: ``forward_head(forward_features(x)) == model(x)``."""

    def forward_features(self, x: torch.Tensor) -> Any: ...

    def forward_head(self, x: Any) -> torch.Tensor: ...


def timm_api(model: nn.Module) -> TimmClassifier:
    """`model` seen through timm's contract (a typed view: nothing is checked or wrapped)."""
    return cast(TimmClassifier, model)


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
        assert self.grid is not None, "a token layout always has a grid"
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
                dh, dw = (int(v) for v in pe.dynamic_feat_size(hw_in))
                if dh * dw == n:
                    return (dh, dw)
            except Exception:  # some patch embeddings need a tensor; fall back to the aspect rule
                pass
        grid = getattr(pe, "grid_size", None)
        if grid is not None and len(grid) == 2 and grid[0] * grid[1] == n:
            return (int(grid[0]), int(grid[1]))
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


def param_like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's parameters (CPU float32 when it has none)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32
