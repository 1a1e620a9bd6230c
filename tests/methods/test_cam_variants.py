"""The new CAM-family methods on every layout, under no_grad, batched, and what they must equal."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, input_for, make_model, model_state

import cnnviz

NEW = ["grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "eigen_cam", "eigen_grad_cam", "score_cam"]
LAYOUTS = {"test_resnet": "NCHW", "test_mambaout": "NHWC", "test_vit": "tokens"}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def model_and_input(request):
    model = make_model(request.param)
    return request.param, model, input_for(model, batch=2)


def test_every_new_method_on_every_layout(model_and_input):
    name, model, x = model_and_input
    assert cnnviz.inspect(model).layout == LAYOUTS[name]
    before = model_state(model)
    ex = cnnviz.explain(model, x, [*NEW, "grad_cam"], target=[3, 7])
    assert_same_state(before, model_state(model))
    for m in NEW:
        raw = ex[m].raw
        assert raw.shape == ex["grad_cam"].raw.shape and raw.shape[0] == 2, m
        assert torch.isfinite(raw).all() and bool((raw >= 0).all()), m
        assert bool(raw.amax() > raw.amin()), m


def test_under_no_grad_and_inference_mode_and_batch_equals_singles(model_and_input):
    _, model, x = model_and_input
    ex = cnnviz.explain(model, x, NEW, target=[3, 7])
    with torch.no_grad():
        quiet = cnnviz.explain(model, x, NEW, target=[3, 7])
    with torch.inference_mode():
        frozen = cnnviz.explain(model, x, NEW, target=[3, 7])
    for i, t in enumerate([3, 7]):
        single = cnnviz.explain(model, x[i : i + 1], NEW, target=t)
        for m in NEW:
            scale = float(ex[m].raw[i].abs().max())
            assert torch.allclose(single[m].raw[0], ex[m].raw[i], atol=1e-4 * scale), (m, i)
    for m in NEW:
        assert torch.equal(quiet[m].raw, ex[m].raw) and torch.equal(frozen[m].raw, ex[m].raw), m


def test_hires_cam_is_hw_relu_cam_and_xgrad_cam_is_grad_cam_on_gap_linear_heads():
    model = make_model("test_resnet")
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["cam", "grad_cam", "hires_cam", "xgrad_cam", "layer_cam"])
    h, w = ex["cam"].raw.shape[1:]
    cam = ex["cam"].raw
    assert torch.allclose(ex["hires_cam"].raw, torch.relu(cam) / (h * w), atol=1e-6 * float(cam.abs().max()))
    # GAP + linear: the gradient is w_c / (h w) at every position, so XGrad-CAM's weights equal
    # Grad-CAM's whatever the map, and LayerCAM keeps only the channels with positive w_c.
    assert torch.allclose(ex["xgrad_cam"].raw, ex["grad_cam"].raw, atol=1e-6 * float(cam.abs().max()))
    assert not torch.allclose(ex["layer_cam"].raw, ex["grad_cam"].raw)


def test_eigen_cam_is_class_independent_and_eigen_grad_cam_is_not():
    model = make_model("test_resnet")
    x = input_for(model, batch=1)
    a = cnnviz.explain(model, x, ["eigen_cam", "eigen_grad_cam"], target=1)
    b = cnnviz.explain(model, x, ["eigen_cam", "eigen_grad_cam"], target=2)
    assert torch.equal(a["eigen_cam"].raw, b["eigen_cam"].raw)
    assert not torch.allclose(a["eigen_grad_cam"].raw, b["eigen_grad_cam"].raw)


def test_score_cam_skips_constant_channels_and_says_how_many():
    model = make_model("test_resnet")
    x = input_for(model, batch=1)
    ex = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 7})
    note = next(n for n in ex["score_cam"].notes if "masked forwards" in n)
    assert "saved" in note


def test_distinct_masks_groups_constant_and_identical_channels():
    from cnnviz.methods.score_cam import distinct_masks

    maps = torch.rand(6, 3, 3)
    maps[1] = 0  # zero everywhere
    maps[3] = 2.5  # constant: the same (zero) mask
    maps[4] = maps[0]  # an exact duplicate
    groups, reps = distinct_masks(maps)
    assert sorted(map(sorted, groups)) == [[0, 4], [1, 3], [2], [5]]
    assert reps[groups.index([1, 3])] is None


def test_score_cam_skipping_changes_nothing_but_the_work(monkeypatch):
    from cnnviz.methods import score_cam as module

    model = make_model("test_resnet")
    x = input_for(model, batch=2)
    last_bn = [m for m in model.layer4[-1].modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():  # five channels of the final map zero everywhere (ReLU of a large negative)
        last_bn.bias[:5] = -1e4
    calls = []
    forward = cnnviz.engine.passes.Runner.forward

    def counting(self, batches, batch_size=None):
        out = forward(self, batches, batch_size)
        calls.append(out.shape[0])
        return out

    monkeypatch.setattr(cnnviz.engine.passes.Runner, "forward", counting)
    fast = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 5})
    skipped = sum(calls)

    def every_channel(maps):
        return [[k] for k in range(maps.shape[0])], list(range(maps.shape[0]))

    monkeypatch.setattr(module, "distinct_masks", every_channel)
    calls.clear()
    slow = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 5})
    c = fast.anatomy.shape[0]
    assert sum(calls) == 2 * c and skipped < 2 * c
    assert torch.allclose(fast["score_cam"].raw, slow["score_cam"].raw, rtol=1e-5, atol=1e-7)


def test_score_cam_max_channels_scores_the_largest_maps_only(monkeypatch):
    from cnnviz.methods import score_cam as module

    model = make_model("test_resnet")
    x = input_for(model, batch=2)
    full = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 8})
    layer_maps, scored = [], []
    distinct = module.distinct_masks

    def seeing(maps):
        layer_maps.append(maps.detach().clone())
        return distinct(maps)

    def recording(maps, size):
        scored.append(maps.detach().clone())
        return module.channel_masks(maps, size)

    monkeypatch.setattr(module, "distinct_masks", seeing)
    monkeypatch.setattr(module, "MASKS", recording)
    k = 5
    cut = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 8, "max_channels": k})
    got = torch.cat(scored)
    assert got.shape[0] == 2 * k  # k maps scored per sample, not every channel
    for i, maps in enumerate(layer_maps):  # ... and they are the k of largest L1 norm
        want = maps.flatten(1).abs().sum(1).topk(k).values.sort().values
        mine = got[i * k : (i + 1) * k].flatten(1).abs().sum(1).sort().values
        assert torch.allclose(mine, want)
    note = " ".join(cut["score_cam"].notes)
    assert f"max_channels = {k}" in note and "approximation" in note
    assert not torch.allclose(cut["score_cam"].raw, full["score_cam"].raw)
    # A cap at or above the channel count is the paper's Score-CAM, bit for bit.
    c = full.anatomy.shape[0]
    same = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 8, "max_channels": c})
    assert torch.equal(same["score_cam"].raw, full["score_cam"].raw)
    assert not any("max_channels" in n for n in same["score_cam"].notes)


@pytest.mark.parametrize("shape", [(2, 64, 3, 4), (2, 5, 6, 7)])  # positions <= channels, and >
def test_principal_projection_is_the_first_svd_component_with_the_means_sign(shape):
    from cnnviz.methods.cam_variants import principal_projection

    gen = torch.Generator().manual_seed(0)
    m = torch.randn(*shape, generator=gen) + torch.linspace(0, 3, shape[-1])  # a dominant direction
    got = principal_projection(m)
    rows = m.flatten(2).transpose(1, 2).double()
    rows = rows - rows.mean(1, keepdim=True)
    u, s, _ = torch.linalg.svd(rows, full_matrices=False)
    want = u[..., 0] * s[:, :1]  # the projection on the first right singular vector
    mean = m.double().mean(1).flatten(1)
    sign = torch.where((want * (mean - mean.mean(1, keepdim=True))).sum(1) < 0, -1.0, 1.0)
    want = (want * sign[:, None]).reshape(shape[0], *shape[2:]).float()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
