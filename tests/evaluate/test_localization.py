"""Pointing game and energy in the box on hand-built maps, chance levels, and box checks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

import cnnviz
import cnnviz.evaluate as ev

HW = (64, 80)


def _peak_map(row: int, col: int) -> torch.Tensor:
    m = torch.zeros(1, *HW)
    m[0, row, col] = 1.0
    return m


def test_pointing_game_hits_inside_and_within_the_tolerance_only():
    masks = ev.region_masks(torch.tensor([[20, 10, 40, 30]]), 1, HW)  # x 20..39, y 10..29
    assert ev.pointing_game(_peak_map(15, 25), masks, HW).item() == 1.0
    assert ev.pointing_game(_peak_map(15, 39 + 15), masks, HW).item() == 1.0  # 15 px right of the box
    assert ev.pointing_game(_peak_map(15, 39 + 16), masks, HW).item() == 0.0
    assert ev.pointing_game(_peak_map(15, 39 + 16), masks, HW, tolerance=16).item() == 1.0
    assert ev.pointing_game(_peak_map(29 + 11, 39 + 11), masks, HW).item() == 0.0  # corner: 15.6 px


def test_energy_in_box_is_the_positive_mass_share():
    masks = ev.region_masks(torch.tensor([[0, 0, 40, 64]]), 1, HW)  # the left half
    m = torch.zeros(1, *HW)
    m[0, :, :40] = 3.0
    m[0, :, 40:] = 1.0
    m[0, 0, 79] = -50.0  # negative evidence does not count
    inside, outside = 3.0 * 40 * 64, 1.0 * (40 * 64 - 1)
    assert ev.energy_in_box(m, masks, HW).item() == pytest.approx(inside / (inside + outside), rel=1e-6)
    assert ev.energy_in_box(-m.abs(), masks, HW).item() == 0.0


def test_chance_levels_are_the_share_of_the_image():
    masks = ev.region_masks(torch.tensor([[0, 0, 40, 64]]), 1, HW)
    assert ev.chance(masks, "energy_in_box").item() == pytest.approx(0.5)
    grown = ev.chance(masks, "pointing_game", tolerance=10).item()
    assert grown == pytest.approx(50 / 80)
    # a box in the middle, where the tolerance disk's corners count: the share of pixels within
    # 10 px (Euclidean) of the box, counted pixel by pixel
    box = ev.region_masks(torch.tensor([[20, 10, 40, 30]]), 1, HW)
    rows, cols = torch.meshgrid(torch.arange(HW[0]), torch.arange(HW[1]), indexing="ij")
    dx = torch.clamp(torch.maximum(20 - cols, cols - 39), min=0).float()
    dy = torch.clamp(torch.maximum(10 - rows, rows - 29), min=0).float()
    expect = ((dx.square() + dy.square()).sqrt() <= 10).float().mean()
    assert ev.chance(box, "pointing_game", tolerance=10).item() == pytest.approx(expect.item())
    # a uniformly random map really scores that: the pointing game of many random maps
    gen = torch.Generator().manual_seed(0)
    hits = ev.pointing_game(torch.rand(2000, *HW, generator=gen), masks.expand(2000, -1, -1), HW, 10)
    assert abs(hits.mean().item() - grown) < 0.04


def test_masks_and_boxes_agree():
    box = torch.tensor([[8, 4, 30, 20]])
    mask = torch.zeros(1, *HW, dtype=torch.bool)
    mask[0, 4:20, 8:30] = True
    assert torch.equal(ev.region_masks(box, 1, HW), mask)
    assert torch.equal(ev.region_masks(mask, 1, HW), mask)


@pytest.mark.parametrize(
    ("boxes", "match"),
    [
        (torch.tensor([[0, 0, 81, 10]]), "outside the 80x64 input"),
        (torch.tensor([[-1, 0, 10, 10]]), "outside"),
        (torch.tensor([[10, 10, 10, 20]]), "empty"),
        (torch.tensor([[0, 0, 10]]), r"\(1, 4\) boxes"),
        (torch.zeros(1, *HW, dtype=torch.bool), "empty"),
        (torch.zeros(1, 10, 10, dtype=torch.bool), r"\(1, 64, 80\) masks"),
    ],
)
def test_bad_boxes_are_refused_with_the_rule(boxes, match):
    with pytest.raises(ValueError, match=match):
        ev.region_masks(boxes, 1, HW)


def test_score_needs_boxes_for_localization_and_reports_chance():
    model = make_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 64, 80)
    ex = cnnviz.explain(model, x, ["grad_cam", "vanilla_gradient"])
    with pytest.raises(ValueError, match="pointing_game need the object's box"):
        ev.score(model, x, ex, ["pointing_game"])
    boxes = torch.tensor([[0, 0, 40, 64], [40, 0, 80, 64]])
    result = ev.evaluate(model, x, ex, ["pointing_game", "energy_in_box"], boxes)
    for method in ("grad_cam", "vanilla_gradient"):
        heat = ex[method].heatmap()
        expect_left = heat[0, :, :40].clamp_min(0).sum() / heat[0].clamp_min(0).sum()
        assert result.scores[method]["energy_in_box"][0].item() == pytest.approx(expect_left.item(), rel=1e-5)
    assert torch.allclose(result.chance["energy_in_box"], torch.tensor([0.5, 0.5]))
