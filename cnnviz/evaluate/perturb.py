"""Faithfulness by perturbation: deletion/insertion curves and Average Drop / Increase in Confidence.

Every perturbed image of a call (all steps of all maps, both curves) is one "job"; jobs are
scored by the model in a few large batches, never one forward per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.capture import model_guard
from ..engine.layout import param_like

Progress = Callable[[int, int], None]
BaselineArg = str | float | torch.Tensor

# RISE's blurred canvas for insertion: Gaussian kernel of 11 taps, sigma 5 (Petsiuk et al. 2018).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0
DEFAULT_STEPS = 20
DEFAULT_BATCH = 32
CPU_BATCH = 8
"""Images per forward when none is given: `CPU_BATCH` on the CPU, `DEFAULT_BATCH` elsewhere. On
the CPU small batches are faster (they stay in cache): deletion + insertion of one map (40
images, 224 px, 2 threads) took 5.5 s in batches of 8 against 6.7 s in batches of 32 and 7.3 s
of 64 on ResNet-50, 5.7 s against 7.2 s and 6.9 s on ConvNeXt-Tiny (measured in one run)."""


def resolve_batch(batch_size: int | None, device: torch.device) -> int:
    """`batch_size`, checked; None: the default for `device` (see `CPU_BATCH`)."""
    if batch_size is None:
        return CPU_BATCH if device.type == "cpu" else DEFAULT_BATCH
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    return batch_size


@dataclass(frozen=True)
class Curves:
    """Deletion and insertion curves of N maps.

    Attributes:
        fractions: (P,) fraction of the pixels removed (deletion) or restored (insertion) at
            each point, from 0 to 1.
        deletion: (N, P) the target's score as the most salient pixels are removed, or None.
        insertion: (N, P) the target's score as they are restored onto the start canvas, or None.
        score: what the curves measure (``probability``: the target's softmax probability).
    """

    fractions: torch.Tensor
    deletion: torch.Tensor | None
    insertion: torch.Tensor | None
    score: str = "probability"

    @property
    def deletion_auc(self) -> torch.Tensor:
        """(N,) area under the deletion curve (trapezoid, x in [0, 1]): lower is better."""
        if self.deletion is None:
            raise ValueError("these curves were computed without deletion")
        return torch.trapezoid(self.deletion, self.fractions, dim=-1)

    @property
    def insertion_auc(self) -> torch.Tensor:
        """(N,) area under the insertion curve (trapezoid, x in [0, 1]): higher is better."""
        if self.insertion is None:
            raise ValueError("these curves were computed without insertion")
        return torch.trapezoid(self.insertion, self.fractions, dim=-1)


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (the curve needs interior points); got {steps!r}")
    return steps


def schedule(num_positions: int, steps: int) -> list[int]:
    """Pixel counts at each point: 0, s, 2s, ... and all, with ``s = ceil(num_positions / steps)``.

    Each step moves the same number of pixels except perhaps the last, so the curve has at
    most `steps` intervals; areas integrate against the actual fractions. torchcam's
    `DeletionInsertionMetric` uses the same schedule.
    """
    step = math.ceil(num_positions / steps)
    return [*range(0, num_positions, step), num_positions]


def gaussian_blur(x: torch.Tensor, size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of a (B, C, H, W) batch, reflect-padded.

    RISE pads with zeros, which darkens a border of the canvas (towards the dataset mean after
    normalization); reflecting keeps the border's colours. The kernel is the sampled Gaussian
    renormalized to sum to one.
    """
    r = size // 2
    t = torch.arange(size, dtype=torch.float32, device=x.device) - r
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    pad_h, pad_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    y = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    y = F.conv2d(y, k[r - pad_w : r + pad_w + 1].view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k[r - pad_h : r + pad_h + 1].view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y


def canvas(x: torch.Tensor, spec: BaselineArg, name: str) -> torch.Tensor:
    """The image that removed pixels take (deletion's baseline, insertion's start).

    `spec`: ``"zero"`` (0 after normalization: the dataset's mean colour), ``"blur"``
    (`gaussian_blur`), ``"mean"`` (each image's per-channel mean), a number, or a tensor
    broadcastable to `x`.
    """
    if isinstance(spec, torch.Tensor):
        try:
            return torch.broadcast_to(spec.to(x.device, x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(
                f"{name}: a tensor of shape {tuple(spec.shape)} does not broadcast to the input "
                f"{tuple(x.shape)}"
            ) from None
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return torch.full_like(x, float(spec))
    if spec == "zero":
        return torch.zeros_like(x)
    if spec == "blur":
        return gaussian_blur(x)
    if spec == "mean":
        return x.mean((-2, -1), keepdim=True).expand_as(x)
    raise ValueError(f"{name} must be 'zero', 'blur', 'mean', a number or a tensor; got {spec!r}")


def input_heatmaps(maps: torch.Tensor, hw: tuple[int, int], name: str = "maps") -> torch.Tensor:
    """(N, H, W) maps at the input's resolution from (N, h, w) maps or (N, 3, H, W) gradient images.

    Maps are upsampled bilinearly; gradient images are reduced by the max of absolute values
    over channels (the saliency of Simonyan et al. 2013, as `Attribution.heatmap`).
    """
    if not isinstance(maps, torch.Tensor):
        raise ValueError(f"{name} must be a tensor; got {type(maps).__name__}")
    maps = maps.detach().float()
    if maps.dim() == 4:
        if tuple(maps.shape[-2:]) != tuple(hw):
            raise ValueError(
                f"{name}: a gradient image must have the input's size {tuple(hw)}; got {tuple(maps.shape)}"
            )
        return maps.abs().amax(1)
    if maps.dim() != 3 or maps.shape[-1] < 1 or maps.shape[-2] < 1:
        raise ValueError(
            f"{name} must be (N, h, w) maps or (N, 3, H, W) gradient images; got {tuple(maps.shape)}"
        )
    if not torch.isfinite(maps).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    return F.interpolate(maps[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]


def _sample_index(sample_index: torch.Tensor | None, n: int, b: int) -> torch.Tensor:
    if sample_index is None:
        if n != b:
            raise ValueError(f"{n} maps for {b} images: give sample_index (which image each map explains)")
        return torch.arange(b)
    idx = torch.as_tensor(sample_index, dtype=torch.long).flatten().cpu()
    if idx.numel() != n or (n and (int(idx.min()) < 0 or int(idx.max()) >= b)):
        raise ValueError(f"sample_index must hold {n} indices in [0, {b}); got {idx.tolist()}")
    return idx


def _module(model) -> nn.Module:
    module = getattr(model, "module", model)  # a cnnviz.zoo.Model or an nn.Module
    if not isinstance(module, nn.Module):
        raise ValueError(f"model must be an nn.Module or a cnnviz.zoo.Model; got {type(model).__name__}")
    return module


def check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a preprocessed batch of shape (B, 3, H, W); got {shape}")


def score_jobs(
    model: nn.Module,
    make: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    n: int,
    batch_size: int | None = None,
    score: str = "probability",
    progress: Progress | None = None,
) -> torch.Tensor:
    """The target's score for `n` perturbed images, `batch_size` per forward.

    `make(indices)` returns (images, targets) for a chunk of job indices. The model runs in
    eval mode under `torch.inference_mode`; its training flags are restored afterwards.
    """
    batch_size = resolve_batch(batch_size, param_like(model)[0])
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit'; got {score!r}")
    out = torch.empty(n, dtype=torch.float32)
    with model_guard(model), torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size))
            images, targets = make(idx)
            logits = model(images).float()
            values = logits.softmax(-1) if score == "probability" else logits
            out[idx] = values.gather(1, targets.to(values.device)[:, None])[:, 0].cpu()
            if progress is not None:
                progress(int(idx[-1]) + 1, n)
    return out


def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    baseline: BaselineArg = "zero",
    insertion_start: BaselineArg = "blur",
    curves: tuple[str, ...] = ("deletion", "insertion"),
    sample_index: torch.Tensor | None = None,
    batch_size: int | None = None,
    score: str = "probability",
    original: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Curves:
    """Deletion and insertion curves (Petsiuk, Das & Saenko, "RISE", BMVC 2018).

    Pixels are ranked by the map (upsampled to the input, highest first, stable order among
    ties). Deletion replaces the top-ranked pixels with `baseline` in `steps` equal steps and
    records the target's score after each; insertion starts from `insertion_start` (RISE: a
    blurred copy) and restores them. A faithful map makes the deletion curve fall fast (low
    area) and the insertion curve rise fast (high area). All channels of a pixel move together.

    Args:
        model: the classifier (an nn.Module or a `cnnviz.zoo.Model`).
        x: (B, 3, H, W) preprocessed images.
        maps: (N, h, w) maps or (N, 3, H, W) gradient images; one per map to judge.
        targets: (B,) the class each image is explained for.
        steps: number of steps (>= 2).
        baseline / insertion_start: see `canvas`.
        curves: which curves to compute.
        sample_index: (N,) the image each map explains (default: map i explains image i).
        batch_size: images per forward (default: 8 on the CPU, 32 elsewhere; see `CPU_BATCH`).
        score: ``"probability"`` (softmax of the target, as in RISE) or ``"logit"``.
        original: (B,) the targets' scores on the unperturbed images, when known (saves B forwards).
        progress: called with (done, total) perturbed images after each forward.

    Cost: about ``2 * steps`` forwards per map (one fewer when both canvases are the same,
    plus one per image for the unperturbed score), in ``ceil(total / batch_size)`` batches.
    """
    module = _module(model)
    check_input(x)
    check_steps(steps)
    unknown = set(curves) - {"deletion", "insertion"}
    if unknown or not curves:
        raise ValueError(f"curves must name 'deletion' and/or 'insertion'; got {curves!r}")
    device, dtype = param_like(module)
    x = x.detach().to(device, dtype)
    b, _, h, w = x.shape
    heat = input_heatmaps(maps, (h, w))
    n = heat.shape[0]
    sidx = _sample_index(sample_index, n, b).to(device)
    targets = torch.as_tensor(targets, dtype=torch.long).flatten().to(device)
    if targets.numel() != b:
        raise ValueError(f"targets must hold one class per image ({b}); got {targets.numel()}")

    order = torch.argsort(heat.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.argsort(order, dim=1).to(device)
    counts = schedule(h * w, steps)
    p = len(counts)
    fractions = torch.tensor(counts, dtype=torch.float32) / (h * w)
    do_del, do_ins = "deletion" in curves, "insertion" in curves
    base = canvas(x, baseline, "baseline") if do_del else None
    start = canvas(x, insertion_start, "insertion_start") if do_ins else None
    shared = do_del and do_ins and _same_canvas(baseline, insertion_start)

    # Sources: 0 = the image, 1 = deletion's baseline, 2 = insertion's start.
    pools = torch.stack([x] + [c if c is not None else x for c in (base, start)]).flatten(3)
    # Jobs: (map, shown-where-mask source, elsewhere source, pixel count); map -1 = unperturbed.
    jm: list[int] = []
    ja: list[int] = []
    jb: list[int] = []
    jc: list[int] = []
    for i in range(n):
        if do_del:
            for k in range(1, p):
                jm.append(i)
                ja.append(1)
                jb.append(0)
                jc.append(int(counts[k]))
        if do_ins:
            for k in range(1 if shared else 0, p - 1):
                jm.append(i)
                ja.append(0)
                jb.append(2)
                jc.append(int(counts[k]))
    n_perturbed = len(jm)
    extra = 0 if original is not None else b  # the unperturbed images, when not given
    job_map = torch.tensor(jm + [-1] * extra, dtype=torch.long, device=device)
    job_a = torch.tensor(ja + [0] * extra, dtype=torch.long, device=device)
    job_b = torch.tensor(jb + [0] * extra, dtype=torch.long, device=device)
    job_count = torch.tensor(jc + [0] * extra, dtype=torch.long, device=device)
    job_sample = torch.cat([sidx[job_map[:n_perturbed]], torch.arange(extra, device=device)])

    def make(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(device)
        s, m = job_sample[idx], job_map[idx]
        mask = ranks[m.clamp_min(0)] < job_count[idx, None]
        images = torch.where(mask[:, None], pools[job_a[idx], s], pools[job_b[idx], s])
        return images.view(-1, 3, h, w), targets[s]

    values = score_jobs(module, make, len(job_map), batch_size, score, progress)
    original = _original(original, b) if original is not None else values[n_perturbed:]
    original = original[sidx.cpu()]
    dele = torch.empty(n, p)
    ins = torch.empty(n, p)
    dele[:, 0] = original
    ins[:, -1] = original
    cursor = 0
    for i in range(n):
        if do_del:
            dele[i, 1:] = values[cursor : cursor + p - 1]
            cursor += p - 1
        if do_ins:
            k0 = 1 if shared else 0
            ins[i, k0 : p - 1] = values[cursor : cursor + p - 1 - k0]
            cursor += p - 1 - k0
            if shared:
                ins[i, 0] = dele[i, -1]
    return Curves(fractions, dele if do_del else None, ins if do_ins else None, score)


def _original(original: torch.Tensor, b: int) -> torch.Tensor:
    original = torch.as_tensor(original, dtype=torch.float32).flatten().cpu()
    if original.numel() != b:
        raise ValueError(f"original must hold one score per image ({b}); got {original.numel()}")
    return original


def _same_canvas(a: BaselineArg, b: BaselineArg) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class ConfidenceChange:
    """Average Drop / Increase in Confidence, per map.

    Attributes:
        original: (N,) the target's score on the image.
        masked: (N,) the target's score on the image multiplied by the normalized map.
        drop: (N,) ``max(0, original - masked) / original``: the paper's Average Drop term.
        increase: (N,) 1.0 where ``masked > original``: the Increase in Confidence term.
    """

    original: torch.Tensor
    masked: torch.Tensor

    @property
    def drop(self) -> torch.Tensor:
        return (self.original - self.masked).clamp_min(0) / self.original.clamp_min(1e-12)

    @property
    def increase(self) -> torch.Tensor:
        return (self.masked > self.original).float()


def normalized_masks(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) maps scaled to [0, 1] (min-max per map at its own resolution), then upsampled."""
    maps = maps.detach().float()
    if maps.dim() == 4:  # gradient images: the saliency first
        maps = maps.abs().amax(1)
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w) or (N, 3, H, W); got {tuple(maps.shape)}")
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
    norm = (maps - lo[:, None, None]) / span[:, None, None]
    return input_heatmaps(norm, hw)


def confidence_change(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    sample_index: torch.Tensor | None = None,
    batch_size: int | None = None,
    score: str = "probability",
    original: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> ConfidenceChange:
    """Average Drop and Increase in Confidence (Chattopadhay, Sarkar, Howlader & Balasubramanian,
    "Grad-CAM++", WACV 2018).

    The explanation map E (min-max normalized to [0, 1] at its own resolution, then upsampled
    to the input) multiplies the preprocessed image, so unexplained regions go to 0 after
    normalization (the dataset's mean colour). With Y the target's softmax probability on the
    image and O on ``E * x``:

        Average Drop = mean_i max(0, Y_i - O_i) / Y_i      (lower is better)
        Increase in Confidence = mean_i 1[O_i > Y_i]       (higher is better)

    This follows the paper's division by the original score, as torchcam's
    `ClassificationMetric` does; pytorch-grad-cam's `DropInConfidence` returns
    ``max(0, Y - O)`` without that division (an absolute, not a relative, drop).
    """
    module = _module(model)
    check_input(x)
    device, dtype = param_like(module)
    x = x.detach().to(device, dtype)
    b, _, h, w = x.shape
    masks = normalized_masks(maps, (h, w)).to(device, dtype)
    n = masks.shape[0]
    sidx = _sample_index(sample_index, n, b).to(device)
    targets = torch.as_tensor(targets, dtype=torch.long).flatten().to(device)
    if targets.numel() != b:
        raise ValueError(f"targets must hold one class per image ({b}); got {targets.numel()}")

    def make(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(device)
        perturbed = idx < n
        s = torch.where(perturbed, sidx[idx.clamp_max(n - 1)], idx - n)
        m = torch.where(perturbed[:, None, None], masks[idx.clamp_max(n - 1)], torch.ones_like(masks[:1]))
        return x[s] * m[:, None], targets[s]

    extra = 0 if original is not None else b
    values = score_jobs(module, make, n + extra, batch_size, score, progress)
    original = _original(original, b) if original is not None else values[n:]
    return ConfidenceChange(original=original[sidx.cpu()], masked=values[:n])
