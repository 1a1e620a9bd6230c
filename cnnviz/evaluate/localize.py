"""Localization: does the map fall on the object? Pointing game and energy in the box.

Regions are given per image as boxes ``(x0, y0, x1, y1)`` in the input's pixel coordinates
(``x1``/``y1`` exclusive) or as boolean masks at the input's size.
"""

from __future__ import annotations

import math

import torch

from .perturb import input_heatmaps

POINTING_TOLERANCE = 15  # pixels, as in Zhang et al. (2016)


def region_masks(regions: torch.Tensor, b: int, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) boolean masks from (B, 4) boxes or (B, H, W) masks, checked.

    Raises ValueError naming the sample for a box outside the image, an empty box or mask,
    or the wrong number or shape of regions.
    """
    h, w = hw
    if not isinstance(regions, torch.Tensor):
        try:
            regions = torch.as_tensor(regions)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"boxes must be a (B, 4) tensor or (B, H, W) masks; got {type(regions).__name__}"
            ) from None
    if regions.dim() == 1 and regions.numel() == 4 and b == 1:
        regions = regions[None]
    if regions.dim() == 2 and regions.shape == (b, 4):
        if regions.dtype == torch.bool or not torch.isfinite(regions.float()).all():
            raise ValueError("boxes must be finite numbers (x0, y0, x1, y1)")
        masks = torch.zeros(b, h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(regions.float().tolist()):
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise ValueError(
                    f"box {i} = ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty or outside the {w}x{h} input: "
                    f"need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (input pixels, x1 and y1 exclusive)"
                )
            masks[i, math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
        return masks
    if regions.dim() == 3 and tuple(regions.shape) == (b, h, w):
        masks = regions.cpu().bool() if regions.dtype == torch.bool else regions.cpu() > 0.5
        empty = [i for i in range(b) if not masks[i].any()]
        if empty:
            raise ValueError(f"the masks of samples {empty} are empty")
        return masks
    raise ValueError(
        f"boxes must be ({b}, 4) boxes (x0, y0, x1, y1) in input pixels or ({b}, {h}, {w}) masks; "
        f"got {tuple(regions.shape)}"
    )


def _peaks(heat: torch.Tensor) -> torch.Tensor:
    """(N, 2) (row, col) of each map's maximum (the first one in raster order among ties)."""
    w = heat.shape[-1]
    flat = heat.flatten(1).argmax(1)
    return torch.stack([flat // w, flat % w], 1)


def _distance_to(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N,) Euclidean distance in pixels from each point to the nearest pixel of its mask."""
    out = torch.empty(points.shape[0])
    for i in range(points.shape[0]):
        yx = masks[i].nonzero().float()
        out[i] = (yx - points[i].float()).square().sum(1).min().sqrt()
    return out


def pointing_game(
    maps: torch.Tensor,
    masks: torch.Tensor,
    hw: tuple[int, int],
    tolerance: float = POINTING_TOLERANCE,
) -> torch.Tensor:
    """(N,) 1.0 where the map's maximum lies within `tolerance` pixels of the region, else 0.0.

    Zhang, Lin, Brandt, Shen & Sclaroff, "Top-down Neural Attention by Excitation Backprop",
    ECCV 2016 (the 15-pixel tolerance is theirs). `masks` is (N, H, W), one region per map.
    """
    heat = input_heatmaps(maps, hw).cpu()
    return (_distance_to(masks.cpu(), _peaks(heat)) <= tolerance).float()


def energy_in_box(maps: torch.Tensor, masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N,) share of the map's positive mass that lies in the region.

    The energy-based pointing game of Wang et al., "Score-CAM", CVPR-W 2020:
    ``sum_{in box} max(M, 0) / sum max(M, 0)``; 0 for a map with no positive value.
    """
    heat = input_heatmaps(maps, hw).cpu().clamp_min(0)
    total = heat.flatten(1).sum(1)
    inside = (heat * masks.cpu()).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))


def chance(masks: torch.Tensor, metric: str, tolerance: float = POINTING_TOLERANCE) -> torch.Tensor:
    """(N,) expected score of a uniformly random map: the baseline to beat.

    Pointing game: the share of pixels within `tolerance` of the region (where a uniformly
    random peak lands); energy in box: the region's share of the image.
    """
    masks = masks.cpu()
    if metric == "energy_in_box":
        return masks.flatten(1).float().mean(1)
    if metric == "pointing_game":
        r = int(tolerance)
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disk = ((yy.square() + xx.square()) <= tolerance**2).float()[None, None]
        grown = torch.nn.functional.conv2d(masks[:, None].float(), disk, padding=r)[:, 0] > 0
        return grown.flatten(1).float().mean(1)
    raise ValueError(f"no chance level for {metric!r}")
