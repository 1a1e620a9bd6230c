"""What the sampling methods share: quadrature rules, baselines, noise and batched rows.

Integrated Gradients integrates the gradient along a straight path from a baseline to the
input; SmoothGrad averages a method over noisy copies of the input. Both push many inputs
derived from each sample through the model; `rows` cuts them into batches, sample-major, so
that a sample's result never depends on the other samples of the call (batch equals singles).
Pure tensor code: the model is run through the engine's `Runner`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

QUADRATURES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
BASELINES = ("black", "zero", "blur", "uniform")
BLUR_FRACTION = 0.05
"""The blurred baseline's Gaussian sigma, as a fraction of the image's shorter side."""


def quadrature(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha_k`` in [0, 1] and weights ``w_k`` (summing to 1) for ``int_0^1 g(alpha)``.

    ``gausslegendre``: Gauss-Legendre nodes mapped to [0, 1], exact for polynomials of degree
    ``2 steps - 1``. ``riemann_left`` / ``riemann_right`` / ``riemann_middle``: ``steps`` equal
    cells, evaluated at their left end, right end (Sundararajan et al.'s sum) or middle.
    ``riemann_trapezoid``: ``steps`` nodes from 0 to 1 inclusive, weights ``1/(steps-1)``
    halved at both ends. Returned in float64; the Riemann nodes are float32 ``torch.linspace``
    values (as captum makes them: one rounding of a node can switch a ReLU on a path point, so the
    same nodes are what makes the two comparable).
    """
    n = int(steps)
    if method == "gausslegendre":
        if n < 1:
            raise ValueError(f"gausslegendre needs steps >= 1; got {n}")
        nodes, gauss_weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * gauss_weights)
    if method == "riemann_trapezoid" and n < 2:
        raise ValueError(f"riemann_trapezoid needs steps >= 2 (both ends); got {n}")
    cells = {  # first and last node; the nodes are float32 linspace, captum's convention
        "riemann_trapezoid": (0.0, 1.0),
        "riemann_left": (0.0, 1 - 1 / n),
        "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n)),
        "riemann_right": (1 / n, 1.0),
    }
    if method not in cells:
        raise ValueError(f"unknown quadrature {method!r}; known: {', '.join(QUADRATURES)}")
    if n < 1:
        raise ValueError(f"{method} needs steps >= 1; got {n}")
    alphas = torch.linspace(*cells[method], n, dtype=torch.float32).double()
    weights = torch.full((n,), 1 / n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (n - 1)
    return alphas, weights


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), kernel radius 3 sigma, reflected borders."""
    h, w = x.shape[-2:]
    radius = max(1, min(int(3 * sigma + 0.5), h - 1, w - 1))
    if h < 2 or w < 2 or sigma <= 0:
        return x.clone()
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(device=x.device, dtype=x.dtype)
    c = x.shape[1]
    rows_k, cols_k = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), rows_k, groups=c)
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), cols_k, groups=c)


def make_baseline(
    kind: str, x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0
) -> tuple[torch.Tensor, str]:
    """Integrated Gradients' baseline x' for a preprocessed batch x (B, C, H, W), and its description.

    ``black``: the black image, ``(0 - mean) / std`` per channel (Sundararajan et al.'s choice for
    images). ``zero``: zeros in the normalized space, i.e. the dataset's mean colour. ``blur``: the
    input blurred by a Gaussian of sigma = 5% of its shorter side (Sturmfels, Lundberg & Lee 2020).
    ``uniform``: uniform noise in [0, 1] per pixel, normalized like the input, drawn from `seed`
    (the same noise for every sample).
    """
    if kind == "zero":
        return torch.zeros_like(x), "zeros in the normalized input space (the mean colour)"
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float64).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float64).view(shape)
    if kind == "black":
        black = ((0.0 - mean_t) / std_t).to(device=x.device, dtype=x.dtype)
        return black.expand_as(x).clone(), "the black image, (0 - mean) / std per channel"
    if kind == "blur":
        sigma = BLUR_FRACTION * min(x.shape[-2:])
        return gaussian_blur(x, sigma), f"the input blurred by a Gaussian of sigma {sigma:.3g} px"
    if kind == "uniform":
        gen = torch.Generator().manual_seed(int(seed))
        pixels = torch.rand(tuple(x.shape[1:]), generator=gen, dtype=torch.float64)
        noise = ((pixels[None] - mean_t) / std_t).to(device=x.device, dtype=x.dtype)
        return noise.expand_as(x).clone(), f"uniform noise in [0, 1] per pixel (seed {seed}), normalized"
    raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")


def standard_noise(n: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    """``n`` standard normal tensors shaped like one sample of `like`, from `seed`: (n, C, H, W).

    One draw, in one call, from a CPU generator: the same noise on every device, and the same
    numbers that ``torch.manual_seed(seed)`` followed by ``torch.normal`` of that shape gives
    (what captum's NoiseTunnel draws), so that the two can be compared exactly.
    """
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((n, *like.shape[1:]), generator=gen, dtype=torch.float32)
    return z.to(device=like.device, dtype=like.dtype)


def rows(samples: int, per_sample: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (sample index, copy index) over ``samples x per_sample`` rows, sample-major."""
    total = samples * per_sample
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total))
        yield flat // per_sample, flat % per_sample
