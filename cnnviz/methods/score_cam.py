"""Score-CAM: channel weights from forward passes of the input masked by each channel's map."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..engine.passes import Passes, Runner
from .cam import grad_cam_check, rectified
from .registry import Param, Params, Result, register_method


def channel_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) channel maps -> (n, H, W) masks in [0, 1]: upsampled (bilinear), then min-max.

    A constant map (a channel that is zero everywhere, say) gives the zero mask.
    """
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin((1, 2), keepdim=True)
    span = up.amax((1, 2), keepdim=True) - lo
    ok = span > 0
    return torch.where(ok, (up - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(up))


MASKS = channel_masks
"""How a channel's map becomes a mask; the reference tests swap in each library's convention."""


def distinct_masks(maps: torch.Tensor) -> tuple[list[list[int]], list[int | None]]:
    """Group one sample's channels (C, h, w) by the mask they give.

    Returns (groups, representatives): the channels of each group share one mask; the
    representative is a channel whose map makes it, or None for the zero mask (every channel
    whose map is constant, in particular zero everywhere). Maps equal bit for bit share a group.
    """
    flat = maps.detach().flatten(1).contiguous()
    constant = flat.amax(1) == flat.amin(1)
    groups: list[list[int]] = []
    reps: list[int | None] = []
    zero = torch.nonzero(constant).flatten().tolist()
    if zero:
        groups.append(zero)
        reps.append(None)
    varying = torch.nonzero(~constant).flatten().tolist()
    if varying:
        # Equal rows first collapse by a cheap signature, then by exact bytes.
        seen: dict[bytes, int] = {}
        rows = flat[varying].cpu().numpy()
        for k, row in zip(varying, rows, strict=True):
            key = row.tobytes()
            if key in seen:
                groups[seen[key]].append(k)
            else:
                seen[key] = len(groups)
                groups.append([k])
                reps.append(k)
    return groups, reps


def largest(
    maps: torch.Tensor, groups: list[list[int]], reps: list[int | None], k: int
) -> tuple[list[list[int]], list[int | None], int]:
    """Keep the zero-mask group and the `k` varying groups whose channels carry the largest L1
    norm (their share of sum_k w_k A^k is bounded by it). Returns the kept groups, their
    representatives, and how many channels were left out."""
    varying = [j for j, r in enumerate(reps) if r is not None]
    if k <= 0 or len(varying) <= k:
        return groups, reps, 0
    norms = maps.detach().flatten(1).abs().sum(1)
    weight = {j: float(norms[reps[j]]) * len(groups[j]) for j in varying}
    keep = set(sorted(varying, key=lambda j: -weight[j])[:k])
    kept = [j for j, r in enumerate(reps) if r is None or j in keep]
    dropped = sum(len(groups[j]) for j in varying if j not in keep)
    return [groups[j] for j in kept], [reps[j] for j in kept], dropped


@register_method(
    id="score_cam",
    label="Score-CAM",
    family="cam",
    paper="Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, 'Score-CAM: Score-Weighted Visual "
    "Explanations for Convolutional Neural Networks', CVPR workshops 2020",
    url="https://arxiv.org/abs/1910.01279",
    formula=r"H^k = \frac{\mathrm{up}(A^k) - \min \mathrm{up}(A^k)}{\max \mathrm{up}(A^k) - "
    r"\min \mathrm{up}(A^k)}, \quad w^c = \mathrm{softmax}_k\big(y^c(x \odot H^k)\big), \quad "
    r"L^c = \mathrm{ReLU}\Big(\sum_k w_k^c A^k\Big)",
    summary="Gradient-free: each channel is weighted by the class score of the input masked by that "
    "channel's (upsampled, min-max normalized) map, softmaxed over channels (Algorithm 1 of the "
    "paper). One forward per distinct mask: channels whose map is constant (zero everywhere after "
    "a ReLU, say) all give the zero mask, which is scored once. max_channels = k scores only the "
    "k channel maps of largest L1 norm (an approximation; the others weigh 0).",
    warning="the softmax over thousands of channels makes the weights nearly uniform when the "
    "masked scores are close, and the map then follows the channels' sum, not the class (trained "
    "Lite0: Spearman 0.95 after the classifier is redrawn, fails the randomization check)",
    cost="1 forward + 1 forward per distinct channel mask (batched; at most max_channels + 1)",
    requires=("a classifier", "a spatial map at the layer"),
    needs={"map"},
    check=grad_cam_check,
    params=(
        Param("batch_size", 32, "masked inputs per forward pass", low=1, high=1024),
        Param(
            "max_channels",
            0,
            "score only the k distinct channel maps of largest L1 norm, the rest weigh 0 "
            "(0: every channel, as in the paper)",
            low=0,
            high=100_000,
        ),
    ),
)
def score_cam(passes: Passes, params: Params, runner: Runner) -> Result:
    a = passes.fmap
    b, c = a.shape[:2]
    size = (int(passes.x.shape[-2]), int(passes.x.shape[-1]))
    jobs: list[tuple[int, list[int], int | None]] = []
    left_out = 0
    for i in range(b):
        groups, reps = distinct_masks(a[i])
        groups, reps, dropped = largest(a[i], groups, reps, int(params.max_channels))
        left_out += dropped
        jobs += [(i, g, r) for g, r in zip(groups, reps, strict=True)]
    bs = int(params.batch_size)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(jobs), bs):
            chunk = jobs[start : start + bs]
            masks = torch.zeros(len(chunk), *size, dtype=torch.float32, device=a.device)
            made = [j for j, (_, _, r) in enumerate(chunk) if r is not None]
            if made:
                maps = torch.stack([a[chunk[j][0], chunk[j][2]] for j in made])
                masks[made] = MASKS(maps, size)
            rows = torch.tensor([i for i, _, _ in chunk], device=passes.x.device)
            yield passes.x[rows] * masks[:, None].to(passes.x.dtype)

    logits = runner.forward(batches())
    samples = torch.tensor([i for i, _, _ in jobs], device=logits.device)
    scores = logits.gather(1, passes.targets.to(logits.device)[samples, None])[:, 0].double()
    per_channel = torch.full((b, c), -torch.inf, dtype=torch.float64, device=logits.device)
    for (i, group, _), s in zip(jobs, scores, strict=True):
        per_channel[i, group] = s
    weights = torch.softmax(per_channel, dim=1).to(a.dtype).to(a.device)
    signed = torch.einsum("bc,bchw->bhw", weights, a)
    constant = sum(len(g) for _, g, r in jobs if r is None)
    saved = b * c - left_out - len(jobs)
    duplicates = saved - (constant - sum(r is None for _, _, r in jobs))
    note = (
        f"{len(jobs)} masked forwards for {b * c} channel maps: {saved} saved ({constant} constant "
        f"maps share the zero mask, {duplicates} exact duplicates share their twin's)"
    )
    notes = [note]
    if left_out:
        notes.append(
            f"max_channels = {int(params.max_channels)}: {left_out} channel maps of smaller L1 norm "
            "not scored (weight 0): an approximation of Score-CAM"
        )
    return rectified(passes, signed, "sum_k w_k A^k", *notes)
