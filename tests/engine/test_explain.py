"""The engine's identities, its agreement with independent implementations, and its manners."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state, input_for, make_model, model_state
from torch import nn

import cnnviz
from cnnviz.engine.passes import Needs
from cnnviz.methods import method_ids

ALL = method_ids()
SEED_METHODS = {"vanilla_gradient", "deconvnet", "guided_backprop", "cam", "grad_cam", "guided_grad_cam"}


def _logit_of_target(ex: cnnviz.Explanation) -> torch.Tensor:
    return ex.logits.gather(1, ex.targets[:, None])[:, 0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --- the registry ---------------------------------------------------------------------------


def test_registry_holds_the_seed_methods_with_their_science():
    assert set(ALL) >= SEED_METHODS
    for m in cnnviz.list_methods():
        assert m.paper and m.url.startswith("https://") and m.formula and m.summary and m.cost
        assert m.family in ("gradient", "cam") and isinstance(m.needs, Needs)
        # The seed methods read the shared passes; a method that reads none runs its own.
        assert m.needs or (m.id not in SEED_METHODS and "passes" in m.cost), m.id


def test_registry_rejects_duplicates_and_suggests_close_matches():
    from cnnviz.methods.registry import register_method

    with pytest.raises(ValueError, match="registered twice"):
        register_method(
            id="cam", label="x", family="cam", paper="x", url="https://x", formula="x",
            summary="x", cost="x", requires=(), needs={"map"},
        )(lambda passes: None)  # fmt: skip
    with pytest.raises(ValueError, match="'grad_cam'"):
        cnnviz.get_method("gradcam")


# --- CAM: Zhou et al.'s identity, and the refusal --------------------------------------------

CAM_EXACT = {
    # name: (layout, head kind) -- one per head kind the fold must handle
    "test_resnet": ("NCHW", "linear"),  # GAP + Linear
    "dla46_c": ("NCHW", "linear"),  # GAP + 1x1 conv classifier
    "test_convnext": ("NCHW", "norm"),  # GAP + LayerNorm + Linear
    "test_vit2": ("tokens", "norm"),  # token average + fc_norm LayerNorm
    "test_vit4": ("tokens", "norm"),  # token average + RMSNorm
    "levit_128s": ("tokens", "linear"),  # BatchNorm1d inside both heads, distilled pair averaged
    "efficientformer_l1": ("tokens", "linear"),  # distilled pair averaged in eval
    "swin_tiny_patch4_window7_224": ("NHWC", "linear"),  # channels-last map
}


@pytest.mark.parametrize("name", sorted(CAM_EXACT))
def test_cam_identity_on_every_exact_head(name):
    model = make_model(name)
    anatomy = cnnviz.inspect(model)
    assert (anatomy.layout, anatomy.head_kind, anatomy.cam_exact) == (*CAM_EXACT[name], True)
    x = input_for(model)
    for target in (None, [3, 997]):
        ex = cnnviz.explain(model, x, ["cam"], target=target)
        cam = ex["cam"]
        assert cam.raw.shape == (2, *anatomy.shape[1:])
        assert _rel(cam.raw.mean((-2, -1)) + cam.offset, _logit_of_target(ex)) < 1e-4
        assert cam.raw.std() > 0


def test_cam_fold_survives_batchnorm_statistics():
    """BatchNorm1d between pool and Linear: get_classifier() alone is wrong once BN is not identity."""
    model = make_model("efficientvit_m0")
    anatomy = cnnviz.inspect(model)
    assert anatomy.cam_exact, anatomy.cam_reason
    ex = cnnviz.explain(model, input_for(model), ["cam"])
    assert _rel(ex["cam"].raw.mean((-2, -1)) + ex["cam"].offset, _logit_of_target(ex)) < 1e-4


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "ghostnet_050", "test_mambaout"])
def test_cam_refuses_an_mlp_head_and_suggests_grad_cam(name):
    model = make_model(name)
    anatomy = cnnviz.inspect(model)
    assert not anatomy.cam_exact and anatomy.head_kind == "nonlinear"
    with pytest.raises(ValueError, match="grad_cam") as err:
        cnnviz.explain(model, input_for(model), ["cam"])
    assert "not an affine function" in str(err.value)
    ex = cnnviz.explain(model, input_for(model), ["cam", "grad_cam"], strict=False)
    assert set(ex.refused) == {"cam"} and "grad_cam" in ex.attributions


def test_cam_refuses_class_token_pooling_and_grad_cam_moves_to_norm1():
    model = make_model("test_vit")
    anatomy = cnnviz.inspect(model)
    assert anatomy.head_kind == "token" and not anatomy.cam_exact
    assert anatomy.source == f"blocks.{len(model.blocks) - 1}.norm1"
    assert "class-token" in anatomy.source_note
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["grad_cam"])
    assert ex.layer == anatomy.source and ex["grad_cam"].raw.abs().max() > 0
    # ... because at forward_features the patch tokens get exactly no gradient
    final = cnnviz.explain(model, x, ["grad_cam"], layer="forward_features")
    assert final["grad_cam"].raw.abs().max() == 0


# --- Grad-CAM: against CAM and against captum ---------------------------------------------------


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "swin_tiny_patch4_window7_224"])
def test_grad_cam_is_relu_cam_over_hw_on_gap_linear_heads(name):
    model = make_model(name)
    ex = cnnviz.explain(model, input_for(model), ["cam", "grad_cam"], target=[5, 700])
    h, w = ex["cam"].raw.shape[-2:]
    expected = torch.relu(ex["cam"].raw) / (h * w)
    assert torch.allclose(ex["grad_cam"].raw, expected, rtol=1e-4, atol=1e-7 * float(expected.abs().max()))


@pytest.mark.parametrize(
    ("name", "module"),
    [("test_resnet", "layer4"), ("test_efficientnet", "bn2"), ("test_convnext", "norm_pre")],
)
def test_grad_cam_equals_captum_layer_grad_cam(name, module):
    from captum.attr import LayerGradCam

    model = make_model(name)
    x = input_for(model)
    ours = cnnviz.explain(model, x, ["grad_cam"], target=[1, 2])["grad_cam"].raw
    layer = model.get_submodule(module)
    theirs = LayerGradCam(model, layer).attribute(x, target=[1, 2], relu_attributions=True)[:, 0].detach()
    model.zero_grad(set_to_none=True)
    assert ours.abs().max() > 0
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))


# --- gradient family ---------------------------------------------------------------------------


def _autograd_input_gradient(model, x, targets):
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
    return g


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_vanilla_gradient_equals_autograd_alone_and_beside_the_guided_rules(name):
    model = make_model(name)
    x = input_for(model)
    reference = _autograd_input_gradient(model, x, torch.tensor([4, 9]))
    alone = cnnviz.explain(model, x, ["vanilla_gradient"], target=[4, 9])["vanilla_gradient"].raw
    shared = cnnviz.explain(model, x, ["vanilla_gradient", "guided_backprop", "deconvnet"], target=[4, 9])
    assert torch.allclose(alone, reference, rtol=1e-5, atol=1e-7 * float(reference.abs().max()))
    assert torch.allclose(
        shared["vanilla_gradient"].raw, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max())
    )


def _pure_relu(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


@pytest.mark.parametrize("name", ["test_resnet", "resnet18"])
def test_guided_backprop_and_deconvnet_equal_captum_on_pure_relu_nets(name):
    from captum.attr import Deconvolution, GuidedBackprop

    model = _pure_relu(make_model(name))
    x = input_for(model, size=(96, 96))
    ex = cnnviz.explain(model, x, ["guided_backprop", "deconvnet", "vanilla_gradient"], target=[3, 8])
    gbp = GuidedBackprop(model).attribute(x.clone(), target=[3, 8])
    dec = Deconvolution(model).attribute(x.clone(), target=[3, 8])
    model.zero_grad(set_to_none=True)
    assert torch.allclose(ex["guided_backprop"].raw, gbp, rtol=1e-4, atol=1e-6 * float(gbp.abs().max()))
    assert torch.allclose(ex["deconvnet"].raw, dec, rtol=1e-4, atol=1e-6 * float(dec.abs().max()))
    assert _rel(ex["guided_backprop"].raw, ex["vanilla_gradient"].raw) > 0.05


class FunctionalReluNet(nn.Module):
    """A timm-style classifier whose activations are functional calls, not modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward_features(self, x):
        return F.relu(self.conv2(self.conv1(x).relu()))

    def forward_head(self, x):
        return self.fc(x.mean((2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("test_efficientnet", "silu"),
        ("test_vit2", "gelu"),
        ("mobilenetv3_small_050", "hardswish"),
        ("fn", "relu"),
    ],
)
def test_guided_rules_take_effect_on_non_module_or_non_relu_activations(name, kind):
    from captum.attr import GuidedBackprop

    torch.manual_seed(0)
    model = FunctionalReluNet().eval() if name == "fn" else make_model(name)
    x = input_for(model, size=(64, 64)) if name == "fn" else input_for(model)
    ex = cnnviz.explain(model, x, ["vanilla_gradient", "guided_backprop", "deconvnet"], target=[1, 2])
    plain = ex["vanilla_gradient"].raw
    assert kind in cnnviz.inspect(model).activations if name != "fn" else True
    assert _rel(ex["guided_backprop"].raw, plain) > 0.05
    assert _rel(ex["deconvnet"].raw, plain) > 0.05
    assert any(kind in n for n in ex["guided_backprop"].notes)
    if name == "fn":  # captum only patches nn.ReLU modules: it silently returns the plain gradient here
        theirs = GuidedBackprop(model).attribute(x.clone(), target=[1, 2])
        assert torch.allclose(theirs, plain, rtol=1e-4, atol=1e-7)


def test_guided_rule_on_relu_is_springenbergs_exactly():
    """One ReLU between two linear maps, computed by hand."""
    torch.manual_seed(0)
    model = FunctionalReluNet().eval()
    x = input_for(model, batch=1, size=(8, 8))
    ex = cnnviz.explain(model, x, ["guided_backprop", "deconvnet"], target=0)
    xg = x.clone().requires_grad_(True)
    a1 = model.conv1(xg)
    z1 = a1.relu()
    a2 = model.conv2(z1)
    z2 = F.relu(a2)
    out = model.forward_head(z2)[0, 0]
    (g_z2,) = torch.autograd.grad(out, z2, retain_graph=True)
    g_a2 = (a2 > 0) * g_z2.clamp(min=0)
    (g_z1,) = torch.autograd.grad(a2, z1, g_a2, retain_graph=True)
    g_a1 = (a1 > 0) * g_z1.clamp(min=0)
    (expected,) = torch.autograd.grad(a1, xg, g_a1, retain_graph=True)
    assert torch.allclose(ex["guided_backprop"].raw, expected, atol=1e-7)
    d_a2 = g_z2.clamp(min=0)
    (d_z1,) = torch.autograd.grad(a2, z1, d_a2, retain_graph=True)
    (expected_d,) = torch.autograd.grad(a1, xg, d_z1.clamp(min=0))
    assert torch.allclose(ex["deconvnet"].raw, expected_d, atol=1e-7)


def test_blank_grad_cam_says_why():
    # test_resnet's final map follows a ReLU, so it is >= 0: a class whose weights are all negative
    # has a negative weighted map at every position, which Grad-CAM's ReLU turns into a blank map.
    model = make_model("test_resnet")
    with torch.no_grad():  # class 7 sees only negative weights, class 3 only positive ones
        model.fc.weight[7] = -model.fc.weight[7].abs() - 1e-3
        model.fc.weight[3] = model.fc.weight[3].abs() + 1e-3
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["grad_cam", "guided_grad_cam", "cam"], target=[7, 7])
    assert ex["cam"].raw.amax() < 0
    assert torch.equal(ex["grad_cam"].raw, torch.zeros_like(ex["grad_cam"].raw))
    assert not ex["guided_grad_cam"].raw.any()
    blank = [n for n in ex["grad_cam"].notes if "negative at every position" in n]
    assert [n.split(":")[0] for n in blank] == ["sample 0", "sample 1"]
    assert any("Grad-CAM is blank" in n for n in ex["guided_grad_cam"].notes)
    ok = cnnviz.explain(model, x, ["grad_cam"], target=[7, 3])
    assert [n.split(":")[0] for n in ok["grad_cam"].notes if "negative" in n] == ["sample 0"]


def test_guided_grad_cam_is_guided_backprop_times_upsampled_grad_cam():
    model = make_model("test_resnet")
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["guided_grad_cam", "guided_backprop", "grad_cam"])
    up = F.interpolate(ex["grad_cam"].raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(ex["guided_grad_cam"].raw, ex["guided_backprop"].raw * up)
    alone = cnnviz.explain(model, x, ["guided_grad_cam"])["guided_grad_cam"].raw
    assert torch.allclose(alone, ex["guided_grad_cam"].raw)


# --- manners: state, modes, batches, errors ----------------------------------------------------


def test_model_left_untouched_after_success_and_failure(monkeypatch):
    model = make_model("test_resnet")
    model.train()
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    x = input_for(model)
    before = model_state(model)
    cnnviz.explain(model, x, list(ALL), strict=False)
    assert_same_state(before, model_state(model))

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(model.layer4, "forward", boom)
    with pytest.raises(RuntimeError, match="injected"):
        cnnviz.explain(model, x, ["guided_backprop", "grad_cam"])
    monkeypatch.undo()
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        cnnviz.explain(model, x, ["grad_cam"], target=5000)
    assert_same_state(before, model_state(model))


def test_model_guard_restores_the_training_flags_it_changed():
    from cnnviz.engine.capture import model_guard

    model = make_model("test_resnet").train()
    model.layer1.eval()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="inside"), model_guard(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_callers_no_grad_and_inference_mode(context):
    model = make_model("test_resnet")
    x = input_for(model)
    expected = cnnviz.explain(model, x, list(ALL))
    with context():
        got = cnnviz.explain(model, x, list(ALL))
        made_inside = x.clone()  # an inference tensor under inference_mode
    for k in ALL:
        assert torch.allclose(got[k].raw, expected[k].raw)
    cases = [(["cam"], None), (["grad_cam"], None), (["grad_cam"], "layer3"), (list(ALL), None)]
    for methods, layer in cases:
        with context():
            alone = cnnviz.explain(model, made_inside, methods, layer=layer)
        reference = cnnviz.explain(model, x, methods, layer=layer)
        for k in methods:
            assert torch.allclose(alone[k].raw, reference[k].raw), (k, layer)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
def test_batch_with_per_sample_targets_equals_single_calls(name):
    model = make_model(name)
    x = input_for(model, batch=4)
    targets = [7, 0, 999, 7]
    batch = cnnviz.explain(model, x, list(ALL), target=targets, strict=False)
    for i, t in enumerate(targets):
        single = cnnviz.explain(model, x[i : i + 1], list(ALL), target=t, strict=False)
        for k, attr in single.attributions.items():
            ref = batch[k].raw[i : i + 1]
            assert torch.allclose(
                attr.raw, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max().clamp_min(1e-12))
            ), k


def test_boundary_errors_name_the_argument():
    model = make_model("test_resnet")
    x = input_for(model)
    with pytest.raises(ValueError, match=r"unknown method 'gradcam'.*'grad_cam'"):
        cnnviz.explain(model, x, ["gradcam"])
    with pytest.raises(ValueError, match=r"unknown layer 'layer5'.*'layer4'"):
        cnnviz.explain(model, x, ["grad_cam"], layer="layer5")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        cnnviz.explain(model, x[0], ["grad_cam"])
    with pytest.raises(ValueError, match="one such int per sample"):
        cnnviz.explain(model, x, ["grad_cam"], target=[1, 2, 3])
    with pytest.raises(ValueError, match="intermediate layer"):
        cnnviz.explain(model, x, ["cam"], layer="layer3")


def test_intermediate_stage_grad_cam():
    model = make_model("test_resnet")
    anatomy = cnnviz.inspect(model)
    assert anatomy.stages[-2:] == ("layer3", "layer4")
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["grad_cam"], layer="layer3")
    idx = anatomy.stages.index("layer3")
    assert ex["grad_cam"].raw.shape[1:] == anatomy.stage_shapes[idx][1:]
    assert ex["grad_cam"].layer == "layer3" and ex["grad_cam"].raw.abs().max() > 0


def test_heatmap_is_upsampled_to_the_input():
    model = make_model("test_resnet")
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["grad_cam", "vanilla_gradient"])
    assert ex["grad_cam"].heatmap().shape == (2, *x.shape[-2:])
    assert torch.equal(ex["vanilla_gradient"].heatmap(), ex["vanilla_gradient"].raw.abs().amax(1))


def test_bfloat16_model_inspects_and_explains():
    model = make_model("test_resnet").to(torch.bfloat16)
    anatomy = cnnviz.inspect(model)
    assert anatomy.cam_exact, anatomy.cam_reason
    ex = cnnviz.explain(model, input_for(model), ["cam", "grad_cam", "guided_backprop"])
    cam = ex["cam"]
    assert cam.raw.dtype == torch.float32 and torch.isfinite(ex["guided_backprop"].raw).all()
    logit = _logit_of_target(ex).float()
    assert _rel(cam.raw.mean((-2, -1)) + cam.offset, logit) < 0.05  # bfloat16 has 8 bits of mantissa


@pytest.mark.parametrize(
    ("kind", "bound"),
    [
        ("relu", {}),
        ("silu", {}),
        ("gelu", {}),
        ("gelu", {"approximate": "tanh"}),
        ("hardswish", {}),
        ("mish", {}),
        ("relu6", {}),
        ("hardtanh", {"min_val": -2.0, "max_val": 0.5}),
        ("leaky_relu", {"negative_slope": 0.2}),
    ],
)
def test_fused_local_backward_equals_autograds(kind, bound):
    from cnnviz.engine.rules import _RECTIFIERS, _local_backward

    pure = _RECTIFIERS[kind][0]
    x = torch.linspace(-7, 7, 28001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([-3.0, 0.0, 3.0, 6.0, -2.0, 0.5], dtype=torch.float64)])
    x.requires_grad_(True)
    y = pure(x, **bound)
    g = torch.randn_like(x)
    (expected,) = torch.autograd.grad(y, x, g)
    saved = y.detach() if kind == "relu" else x.detach()
    assert torch.allclose(_local_backward(kind, bound)(g, saved), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("bn", "shape"),
    [
        (nn.BatchNorm2d(5), (2, 5, 4, 3)),
        (nn.BatchNorm1d(5), (2, 5)),
        (nn.BatchNorm2d(5, affine=False), (1, 5, 2, 2)),
    ],
)
def test_frozen_batch_norm_gradient_equals_autograds(bn, shape):
    from cnnviz.engine.rules import ActivationRules

    bn = bn.double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    with ActivationRules(switchable=True):
        y = bn(x)
    (got,) = torch.autograd.grad(y, x, g)
    (expected,) = torch.autograd.grad(bn(x), x, g)
    assert type(y.grad_fn).__name__ == "_FrozenBatchNormBackward"  # one multiply
    assert torch.equal(y, bn(x)) and torch.allclose(got, expected, atol=1e-12)  # the kernel's bits
    x32 = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    bn32 = bn.float()
    g32 = g.float()

    def same_as_autograd():
        with ActivationRules(switchable=True):
            y32 = bn32(x32)
        (got32,) = torch.autograd.grad(y32, x32, g32)
        (want32,) = torch.autograd.grad(bn32(x32), x32, g32)
        assert torch.equal(y32, bn32(x32))  # float32 too: bit for bit
        assert torch.allclose(got32, want32, rtol=1e-6, atol=0)

    same_as_autograd()
    with torch.no_grad():  # new statistics (as load_state_dict would bring): no stale cache
        bn32.running_var.mul_(3)
        bn32.running_mean.add_(1)
    same_as_autograd()
    bn32.running_var.data = bn32.running_var.data * 2  # new data without a version bump
    same_as_autograd()
