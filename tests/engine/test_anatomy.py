"""Anatomy across timm families at their native input size: layouts, head kinds, every method."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, input_for, make_model, model_state
from torch import nn

import cnnviz
from cnnviz.methods import method_ids
from cnnviz.sweep.probe import sweep_params

# name: (layout, head kind, CAM exact), one or more per family, as the support sweep measured them
FAMILIES = {
    "test_resnet": ("NCHW", "linear", True),  # resnet: GAP + Linear
    "test_efficientnet": ("NCHW", "linear", True),  # efficientnet (SiLU, SE gates)
    "test_convnext": ("NCHW", "norm", True),  # convnext: GAP + LayerNorm2d + Linear
    "test_byobnet": ("NCHW", "linear", True),  # byobnet
    "test_nfnet": ("NCHW", "linear", True),  # nfnet
    "test_coatnet": ("NCHW", "linear", True),  # maxxvit (coatnet)
    "test_vit": ("tokens", "token", False),  # vision_transformer: class-token pooling
    "test_vit3": ("tokens", "spatial", False),  # vision_transformer: attention pooling ('map')
    "test_vit4": ("tokens", "norm", True),  # vision_transformer: avg pool + RMSNorm
    "test_vit_relpos": ("tokens", "norm", True),  # vision_transformer_relpos: avg + fc_norm
    "test_mambaout": ("NHWC", "nonlinear", False),  # mambaout: channels-last + MLP head
    "mobilenetv3_small_050": ("NCHW", "nonlinear", False),  # mobilenetv3: conv_head + act
    "ghostnet_050": ("NCHW", "nonlinear", False),  # ghostnet
    "deit_tiny_distilled_patch16_224": ("tokens", "token", False),  # deit: cls + dist tokens
    "efficientformerv2_s0": ("NCHW", "linear", True),  # efficientformer_v2: distilled pair
    "efficientformer_l1": ("tokens", "linear", True),  # efficientformer: distilled pair
    "regnetx_002": ("NCHW", "linear", True),  # regnet
    "dla46_c": ("NCHW", "linear", True),  # dla: 1x1 conv classifier
    "repvit_m1": ("NCHW", "linear", True),  # repvit: BN inside the classifier
    "efficientvit_m0": ("NCHW", "linear", True),  # efficientvit_msra: BN between pool and Linear
    "poolformer_s12": ("NCHW", "norm", True),  # metaformer
    "edgenext_xx_small": ("NCHW", "norm", True),  # edgenext
    "fastvit_t8": ("NCHW", "linear", True),  # fastvit
    "pit_ti_224": ("tokens", "spatial", False),  # pit: forward_features is cls tokens only
    "mvitv2_tiny": ("tokens", "linear", True),  # mvitv2
}


def _check_attribution(name, anatomy, ex, method, x):
    raw = ex[method].raw
    assert torch.isfinite(raw).all(), f"{name}/{method}: not finite"
    if ex[method].is_spatial_map:
        assert raw.shape[0] == x.shape[0] and raw.dim() == 3
    else:
        assert raw.shape == x.shape
    # a rectified CAM-family map may be blank on random weights (every weighted channel sum is
    # negative, so the ReLU leaves nothing), as Grad-CAM's can; any other constant map is a bug
    blank = cnnviz.get_method(method).family == "cam" and not bool(raw.abs().amax() > 0)
    assert raw.std() > 0 or blank, f"{name}/{method}: constant"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_anatomy_and_every_method(name):
    model = make_model(name)
    before = model_state(model)
    anatomy = cnnviz.inspect(model)
    layout, kind, exact = FAMILIES[name]
    assert (anatomy.layout, anatomy.head_kind, anatomy.cam_exact) == (layout, kind, exact), anatomy.summary()
    assert anatomy.num_classes == 1000 and anatomy.activations
    assert len(anatomy.stages) == len(anatomy.stage_shapes)
    assert bool(anatomy.cam_reason) != exact
    if layout == "tokens":
        assert anatomy.grid is not None and anatomy.grid[0] * anatomy.grid[1] > 1
    x = input_for(model, batch=1)
    # every code path of every method; the costly ones light, as the support sweep runs them
    # (their defaults cost up to a forward per channel: their results are tested elsewhere)
    ex = cnnviz.explain(model, x, method_ids(), strict=False, params=sweep_params(method_ids()))
    assert set(ex.refused) == (set() if exact else {"cam"})
    for method in ex.attributions:
        _check_attribution(name, anatomy, ex, method, x)
    if exact:
        cam = ex["cam"]
        logit = ex.logits.gather(1, ex.targets[:, None])[:, 0]
        assert float((cam.raw.mean((-2, -1)) + cam.offset - logit).abs().max()) < 1e-4 * float(
            ex.logits.abs().max()
        )
    assert_same_state(before, model_state(model))


def test_inspect_is_cached_until_the_weights_change():
    model = make_model("test_resnet")
    first = cnnviz.inspect(model)
    assert cnnviz.inspect(model) is first
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
    second = cnnviz.inspect(model)
    assert second is not first
    model.fc.weight.data = model.fc.weight.data * 3  # new data, same Parameter, same version
    assert cnnviz.inspect(model) is not second


def test_inspect_refuses_a_model_without_timms_contract():
    with pytest.raises(cnnviz.AnatomyError, match="forward_features"):
        cnnviz.inspect(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_headless_model_has_nothing_to_explain():
    model = make_model("test_resnet", num_classes=0)
    anatomy = cnnviz.inspect(model)
    assert anatomy.num_classes == 0 and anatomy.head_kind == "none" and "num_classes" in anatomy.cam_reason
    with pytest.raises(ValueError, match="no classifier"):
        cnnviz.explain(model, input_for(model), ["grad_cam"])


def test_summary_is_readable():
    text = cnnviz.inspect(make_model("test_vit")).summary()
    assert "tokens" in text and "class-token" in text and "CAM          : not exact" in text


@pytest.mark.parametrize("name", ["hrnet_w18_small", "pit_ti_224", "twins_svt_small"])
def test_stages_whose_module_returns_no_single_map_are_found_by_shape(name):
    # HRNet's and PiT's stages return lists or tuples, Twins' feature_info names no module:
    # each declared stage is then the last module to produce its channels at its resolution.
    model = make_model(name)
    anatomy = cnnviz.inspect(model)
    hw = anatomy.input_size[1:]
    declared = [(e["num_chs"], e["reduction"]) for e in model.feature_info]
    found = [s for s in anatomy.stages if s != anatomy.source]
    assert len(found) >= len(set(declared)) - 1, anatomy.stages
    for stage, (c, h, _) in zip(anatomy.stages, anatomy.stage_shapes, strict=True):
        fits = any(c == chs and abs(h - hw[0] / red) <= 1 for chs, red in declared)
        assert fits or stage == anatomy.source, (stage, c, h)
    layer = found[len(found) // 2]
    ex = cnnviz.explain(model, input_for(model, batch=1), ["grad_cam"], layer=layer)
    assert ex["grad_cam"].layer == layer
    assert tuple(ex["grad_cam"].raw.shape[1:]) == anatomy.stage_shapes[anatomy.stages.index(layer)][1:]
