"""SmoothGrad over every method it can smooth: captum's NoiseTunnel with the same noise, sigma = 0."""

from __future__ import annotations

import pytest
import torch
from conftest import input_for, make_model
from torch import nn

import cnnviz
from cnnviz.methods.paths import standard_noise

SMOOTHABLE = {
    "smoothgrad": cnnviz.get_method("smoothgrad").param("base").choices,
    "smoothgrad_cam": cnnviz.get_method("smoothgrad_cam").param("base").choices,
}
CASES = [(mid, base) for mid, bases in SMOOTHABLE.items() for base in bases]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _pure_relu(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False  # captum's guided backprop and deconvnet hook ReLU modules
    return model


def test_the_registry_decides_what_can_be_smoothed():
    assert set(SMOOTHABLE["smoothgrad"]) >= {
        "vanilla_gradient",
        "guided_backprop",
        "deconvnet",
        "input_x_gradient",
        "guided_grad_cam",
    }
    assert set(SMOOTHABLE["smoothgrad_cam"]) >= {"grad_cam"}
    assert not {"smoothgrad", "smoothgrad_cam", "integrated_gradients"} & set(sum(SMOOTHABLE.values(), ()))


def _captum(name: str, model: nn.Module):
    from captum.attr import Deconvolution, GuidedBackprop, InputXGradient, LayerGradCam, Saliency

    if name == "grad_cam":
        layer = LayerGradCam(model, model.layer4)
        return layer, {"relu_attributions": True}, lambda a: a[:, 0]
    cls = {
        "vanilla_gradient": Saliency,
        "input_x_gradient": InputXGradient,
        "guided_backprop": GuidedBackprop,
        "deconvnet": Deconvolution,
    }[name]
    return cls(model), ({"abs": False} if cls is Saliency else {}), lambda a: a


@pytest.mark.parametrize(
    ("mid", "base"),
    [
        ("smoothgrad", "vanilla_gradient"),
        ("smoothgrad", "input_x_gradient"),
        ("smoothgrad", "guided_backprop"),
        ("smoothgrad", "deconvnet"),
        ("smoothgrad_cam", "grad_cam"),
    ],
)
def test_equals_captums_noise_tunnel_with_the_same_noise(mid, base):
    """Same noise: captum's NoiseTunnel draws ``torch.normal(0, std)`` of shape (n, 3, H, W) from
    the global generator, which after ``torch.manual_seed(seed)`` gives the numbers SmoothGrad's
    ``standard_noise(n, x, seed)`` draws from its own generator, times the same std. captum takes
    one std for a whole call while ours is sigma x (max - min) per sample, so captum runs once per
    sample with that sample's std."""
    from captum.attr import NoiseTunnel

    model = _pure_relu(make_model("test_resnet"))
    x = input_for(model, size=(64, 64))
    n, sigma, seed, target = 6, 0.2, 11, [3, 8]
    params = {"base": base, "n_samples": n, "sigma": sigma, "seed": seed, "batch_size": 4}
    ours = cnnviz.explain(model, x, [mid], target=target, params={mid: params})[mid].raw
    reference, kwargs, pick = _captum(base, model)
    theirs = []
    for s in range(2):
        xs = x[s : s + 1]
        std = float(sigma * (xs.max() - xs.min()))
        torch.manual_seed(seed)
        out = NoiseTunnel(reference).attribute(
            xs, nt_type="smoothgrad", nt_samples=n, stdevs=std, target=target[s], **kwargs
        )
        theirs.append(pick(out.detach()))
    model.zero_grad(set_to_none=True)
    theirs = torch.cat(theirs)
    assert ours.shape == theirs.shape and ours.abs().max() > 0
    assert _rel(ours, theirs) < 1e-5


def test_noise_is_the_seeded_standard_normal_captum_draws():
    like = torch.zeros(1, 3, 20, 24)
    torch.manual_seed(5)
    theirs = torch.normal(0, torch.tensor(0.3).repeat(4, 3, 20, 24))
    assert torch.equal(standard_noise(4, like, 5) * 0.3, theirs)
    assert not torch.equal(standard_noise(4, like, 5), standard_noise(4, like, 6))


@pytest.mark.parametrize(("mid", "base"), CASES)
def test_sigma_zero_is_the_plain_method_exactly(mid, base):
    model = make_model("test_resnet")
    x = input_for(model, size=(64, 64))
    ex = cnnviz.explain(model, x, [mid], target=[5, 9], params={mid: {"base": base, "sigma": 0.0}})
    plain = cnnviz.explain(model, x, [base], target=[5, 9])[base]
    assert torch.equal(ex[mid].raw, plain.raw)
    assert ex[mid].layer == plain.layer
    assert any("sigma = 0" in n for n in ex[mid].notes)


@pytest.mark.parametrize(("mid", "base"), [("smoothgrad", "guided_backprop"), ("smoothgrad_cam", "grad_cam")])
def test_vanishing_noise_through_the_batched_passes_is_the_plain_method(mid, base):
    """sigma = 1e-9 takes the batched path (n copies, batches that do not divide n) and must land
    on the plain method: the averaging and the bookkeeping of which copy belongs to which sample."""
    model = make_model("test_resnet")
    x = input_for(model, batch=3, size=(64, 64))
    params = {"base": base, "sigma": 1e-9, "n_samples": 5, "batch_size": 4}
    got = cnnviz.explain(model, x, [mid], target=[5, 9, 1], params={mid: params})[mid].raw
    plain = cnnviz.explain(model, x, [base], target=[5, 9, 1])[base].raw
    assert torch.allclose(got, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))


def test_one_copy_is_the_method_at_that_copy():
    model = make_model("test_resnet")
    x = input_for(model, size=(64, 64))
    params = {"base": "guided_backprop", "sigma": 0.3, "n_samples": 1, "seed": 4}
    got = cnnviz.explain(model, x, ["smoothgrad"], target=[2, 2], params={"smoothgrad": params})["smoothgrad"]
    std = 0.3 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    noisy = x + std.view(-1, 1, 1, 1) * standard_noise(1, x, 4)
    expected = cnnviz.explain(model, noisy, ["guided_backprop"], target=[2, 2])["guided_backprop"].raw
    assert torch.allclose(got.raw, expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    assert f"s = {float(std[0]):.3g}, {float(std[1]):.3g}" in got.notes[0]


def test_the_seed_decides_the_noise():
    model = make_model("test_resnet")
    x = input_for(model, size=(64, 64))

    def run(seed):
        params = {"smoothgrad": {"n_samples": 3, "seed": seed}}
        return cnnviz.explain(model, x, ["smoothgrad"], params=params)["smoothgrad"].raw

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_refuses_what_its_base_refuses():
    model = make_model("mobilenetv3_small_050")  # an MLP head: CAM does not apply
    x = input_for(model, size=(64, 64))
    with pytest.raises(ValueError, match="not an affine function"):
        cnnviz.explain(model, x, ["smoothgrad_cam"], params={"smoothgrad_cam.base": "cam"})
    with pytest.raises(ValueError, match="base"):
        cnnviz.explain(model, x, ["smoothgrad"], params={"smoothgrad.base": "grad_cam"})


def test_a_mean_of_blank_copies_says_why_it_is_blank():
    # Every class weight negative after a ReLU map: Grad-CAM is blank for every noisy copy, so
    # the mean is blank too; the notes must say so (the sweep accepts a blank map only with why).
    torch.manual_seed(0)
    model = make_model("test_resnet")
    with torch.no_grad():
        model.fc.weight.copy_(-model.fc.weight.abs() - 1e-3)
    x = input_for(model, batch=2)
    ex = cnnviz.explain(model, x, ["smoothgrad_cam"], params={"n_samples": 3, "batch_size": 2})
    att = ex["smoothgrad_cam"]
    assert not att.raw.any()
    why = [n for n in att.notes if "blank in all 3 noisy copies" in n]
    assert [n.split(":")[0] for n in why] == ["sample 0", "sample 1"]
    assert all(cnnviz.methods.cam.BLANK in n for n in why)
    # A map that is not blank carries no such note.
    plain = cnnviz.explain(make_model("test_resnet"), x, ["smoothgrad_cam"], params={"n_samples": 3})
    assert plain["smoothgrad_cam"].raw.any()
    assert not any("noisy copies (before" in n for n in plain["smoothgrad_cam"].notes)
