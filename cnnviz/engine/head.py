"""The head between the final map and the logits: is CAM exact there, and with which weights?

CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016) writes
a logit as a sum over positions, ``S_c = sum_k w_k^c sum_xy f_k(x, y)``. That holds when the
head sees only the spatial mean ``p`` of the map and is affine in it, ``logit = W p + b``.
It still holds after a per-image normalization of ``p`` (a LayerNorm or RMSNorm after the
pool, as in ConvNeXt or ViTs with ``fc_norm``): with ``q = g * (p - mu) / sigma + beta``,
``mu`` is the channel mean (linear in the map) and ``sigma`` one scalar per image, so

    CAM_c(x, y) = (1 / sigma) * sum_k W_ck g_k (f_k(x, y) - m(x, y)),   b'_c = (W beta + b)_c

where ``m(x, y)`` is the channel mean at each position. We centre per position rather than
by the global ``mu``: both have the same spatial mean, and the per-position form does not
depend on the component of ``W diag(g)`` along the all-ones direction, which a LayerNorm
makes unobservable (so probing the head as a black box gives a well-defined map).

Nothing here reads module names: the head is probed through `forward_head` with
constructed maps, and every fold is checked on the probe's real map before it is trusted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from .layout import timm_api

TOL = 1e-4  # relative, in float32; lower precisions get a few of their own epsilons


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the numerical checks for tensors of `dtype`."""
    return max(TOL, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else TOL


@dataclass(frozen=True)
class HeadFold:
    """CAM weights of a head: ``CAM_c = s * sum_k weight[c, k] * f_k``.

    Attributes:
        weight: (K, C) folded class weights.
        bias: (K,) folded bias ``b'``.
        normalized: fit the per-image scale ``s = 1 / sigma`` (LayerNorm/RMSNorm heads);
            otherwise ``s = 1``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    normalized: bool = False

    def cam(
        self, fmap: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) class activation maps and (B,) offsets for canonical `fmap`."""
        weight = self.weight.to(fmap.device, fmap.dtype)
        bias = self.bias.to(fmap.device, fmap.dtype)
        raw = torch.einsum("bc,bchw->bhw", weight[targets], fmap)
        if self.normalized:
            v = fmap.mean((2, 3)) @ weight.T  # (B, K), the unscaled pooled logits
            r = logits.to(fmap.dtype) - bias
            scale = (r * v).sum(1) / (v * v).sum(1).clamp_min(torch.finfo(fmap.dtype).tiny)
            raw = raw * scale[:, None, None]
        return raw, bias[targets]


@dataclass(frozen=True)
class HeadVerdict:
    kind: str
    exact: bool
    reason: str
    fold: HeadFold | None


def _close(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor | None = None) -> bool:
    """a == b relative to the size of b (or of `ref`, the terms that were summed to make b)."""
    scale = b.abs().amax().float() if ref is None else ref.abs().amax().float()
    scale = scale.clamp_min(1e-30)
    return bool(((a - b).abs().amax().float() / scale) <= tolerance(b.dtype))


def analyze_head(model: nn.Module, spec, feats: torch.Tensor, logits: torch.Tensor) -> HeadVerdict:
    """Decide numerically what the head does with the final map (see module docstring)."""
    canon = spec.to_canonical(feats)
    prefix = feats[:, : spec.prefix] if spec.layout == "tokens" and spec.prefix else None

    def head(c: torch.Tensor) -> torch.Tensor:
        p = prefix
        if p is not None and p.shape[0] != c.shape[0]:
            p = p[:1].expand(c.shape[0], -1, -1)
        return timm_api(model).forward_head(spec.from_canonical(c, p))

    with torch.no_grad():
        noise = torch.randn(canon.shape, generator=torch.Generator().manual_seed(1)).to(canon)
        if spec.prefix and _close(head(canon + noise * canon.std()), logits):
            return HeadVerdict(
                "token",
                False,
                "class-token pooling: the logits read only the prefix (class) token(s), so they do "
                "not decompose over positions; use grad_cam (taken at an earlier layer)",
                None,
            )
        mean_map = canon.mean((2, 3), keepdim=True).expand_as(canon)
        if not _close(head(mean_map.contiguous()), logits):
            return HeadVerdict(
                "spatial",
                False,
                "the head reads more than the spatial mean of the map (attention or max pooling, a "
                "spatial convolution or a flatten-FC layer), so the logit does not decompose over "
                "positions; use grad_cam",
                None,
            )
        return _fold_mean_head(head, canon, logits)


def _pooled_head(head, canon: torch.Tensor):
    """g(p): the head applied to maps that are constant over space."""
    h, w = canon.shape[-2:]

    def g(p: torch.Tensor) -> torch.Tensor:
        try:
            return head(p[:, :, None, None])
        except RuntimeError:  # a head that needs the real spatial size
            outs = [head(c[:, :, None, None].expand(-1, -1, h, w).contiguous()) for c in p.split(64)]
            return torch.cat(outs)

    return g


def _probe_rows(g, c: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """g(scale * e_k) for every channel k, in chunks: (C, K)."""
    eye = torch.eye(c, dtype=like.dtype, device=like.device) * scale
    return torch.cat([g(chunk) for chunk in eye.split(1024)])


def _fold_mean_head(head, canon: torch.Tensor, logits: torch.Tensor) -> HeadVerdict:
    g = _pooled_head(head, canon)
    p = canon.mean((2, 3))
    p1, p2 = p[:1], p[1:2]
    g1, g2 = g(p1), g(p2)
    zero = torch.zeros_like(p1)
    affine = _close(g(0.3 * p1 + 0.7 * p2), 0.3 * g1 + 0.7 * g2) and _close(g1 + g(-p1), 2 * g(zero), g1)
    candidates = [_linear_fold, _normalized_fold] if affine else [_normalized_fold, _linear_fold]
    errors = []
    for make in candidates:
        fold = make(g, p)
        err = fold_error(fold, canon, logits)
        if err <= tolerance(logits.dtype):  # (a NaN error fails too)
            return HeadVerdict("norm" if fold.normalized else "linear", True, "", fold)
        errors.append(err)
    return HeadVerdict(
        "nonlinear",
        False,
        "the logits are not an affine function of the pooled map, nor affine after a per-image "
        "normalization (the head has an MLP or an activation around the pool; folding check: "
        f"relative error {min(errors):.1e}); use grad_cam",
        None,
    )


def _linear_fold(g, p: torch.Tensor) -> HeadFold:
    """logit = W p + b: b = g(0), W[:, k] = g(e_k) - b."""
    bias = g(torch.zeros_like(p[:1]))[0]
    return HeadFold((_probe_rows(g, p.shape[1], 1.0, p) - bias).T.contiguous(), bias)


def _normalized_fold(g, p: torch.Tensor) -> HeadFold:
    """Affine after a per-image normalization (LayerNorm, RMSNorm): g(p) - b' = s(p) U p.

    Such a head is odd about b', which gives b'; probing with large one-hot vectors (where
    the norm's eps is negligible) gives U up to one global constant, which the per-image
    scale fitted in `HeadFold.cam` absorbs. For a LayerNorm the rows of U sum to zero, so
    the map is centred per position by construction.
    """
    p1 = p[:1]
    bias = 0.5 * (g(p1) + g(-p1))[0]
    big = 100.0 * float(p.abs().amax().clamp_min(1e-3))
    weight = (_probe_rows(g, p.shape[1], big, p) - bias).T
    return HeadFold(weight.contiguous(), bias, normalized=True)


def fold_error(fold: HeadFold, canon: torch.Tensor, logits: torch.Tensor) -> float:
    """Worst relative error of ``mean_xy CAM_c + b_c == logit_c`` over a few classes."""
    k = logits.shape[1]
    classes = {int(logits[0].argmax()), int(logits[0].argmin()), k // 2, k - 1}
    worst = 0.0
    for c in classes:
        t = torch.full((canon.shape[0],), c, dtype=torch.long, device=canon.device)
        raw, off = fold.cam(canon, logits, t)
        pred = raw.mean((1, 2)) + off
        err = (pred - logits[:, c]).abs() / logits.abs().amax(1).clamp_min(1e-30)
        worst = max(worst, float(err.max()))
    return worst


_SKIP = (nn.Identity, nn.Dropout, nn.Flatten)


def _describe_module(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}→{m.out_features})"
    if isinstance(m, nn.Conv2d):
        k = "x".join(str(v) for v in m.kernel_size)
        return f"Conv2d({m.in_channels}→{m.out_channels}, {k})"
    pool_type = getattr(m, "pool_type", None)
    if pool_type:
        return f"{type(m).__name__}({pool_type})"
    return type(m).__name__


def describe_head(model: nn.Module, feats) -> str:
    """The leaf modules `forward_head` calls, in order, as a readable chain."""
    owner = threading.get_ident()
    members = {id(m) for m in model.modules()}
    called: list[nn.Module] = []

    def hook(module, inputs, output):
        if threading.get_ident() == owner and id(module) in members and not any(module.children()):
            called.append(module)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            timm_api(model).forward_head(feats)
    finally:
        handle.remove()
    parts = [_describe_module(m) for m in called if not isinstance(m, _SKIP)]
    return " → ".join(parts) if parts else "forward_head (no modules: functional pooling)"
