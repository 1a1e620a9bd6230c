"""Input x Gradient and Integrated Gradients: captum's results, completeness, baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import input_for, make_model
from PIL import Image
from torch import nn

import cnnviz
from cnnviz.methods.paths import QUADRATURES, gaussian_blur, make_baseline, quadrature

IG = "integrated_gradients"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _ig(model, x, target, **params) -> cnnviz.Attribution:
    return cnnviz.explain(model, x, [IG], target=target, params={IG: params})[IG]


def _target_logit(model: nn.Module, x: torch.Tensor, target: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, torch.tensor(target)[:, None])[:, 0]


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_input_x_gradient_equals_captums(name):
    from captum.attr import InputXGradient

    model = make_model(name)
    x = input_for(model)
    ex = cnnviz.explain(model, x, ["input_x_gradient", "vanilla_gradient"], target=[3, 8])
    theirs = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=[3, 8]).detach()
    model.zero_grad(set_to_none=True)
    ours = ex["input_x_gradient"].raw
    assert ours.abs().max() > 0
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7 * float(theirs.abs().max()))
    assert torch.equal(ours, x * ex["vanilla_gradient"].raw)


@pytest.mark.parametrize("method", QUADRATURES)
def test_integrated_gradients_equal_captums_for_every_quadrature(method):
    """Same steps, method and baseline. captum's riemann_trapezoid gives its weights 1/n (halved at
    both ends), which sum to (n-1)/n: its integral of a constant 1 is (n-1)/n, not 1. Ours uses
    the trapezoid rule's 1/(n-1), so captum's result is rescaled by n/(n-1) for that one."""
    from captum.attr import IntegratedGradients

    model = make_model("test_resnet")
    x = input_for(model)
    steps, target = 12, [3, 8]
    for baseline in ("zero", "black"):
        ours = _ig(model, x, target, steps=steps, method=method, baseline=baseline, batch_size=5)
        base, _ = make_baseline(baseline, x, (0.5,) * 3, (0.5,) * 3)  # test_resnet's data config
        theirs = IntegratedGradients(model).attribute(x, base, target=target, n_steps=steps, method=method)
        if method == "riemann_trapezoid":
            theirs = theirs * steps / (steps - 1)
        assert ours.raw.abs().max() > 0
        assert _rel(ours.raw, theirs) < 2e-5, (method, baseline)
        assert torch.allclose(ours.offset, _target_logit(model, base, target), rtol=1e-5, atol=1e-6)


def test_quadrature_rules_integrate_what_they_should():
    for method in QUADRATURES:
        alphas, weights = quadrature(method, 7)
        assert alphas.min() >= 0 and alphas.max() <= 1 and abs(float(weights.sum()) - 1) < 1e-12
        exact = method not in ("riemann_left", "riemann_right")  # off by 1/(2n) for f(a) = a
        assert abs(float((weights * alphas).sum()) - 0.5) < 1e-7 or not exact
    alphas, weights = quadrature("gausslegendre", 5)
    assert abs(float((weights * alphas**9).sum()) - 0.1) < 1e-12  # exact up to degree 2n-1
    alphas, weights = quadrature("riemann_right", 4)
    assert alphas.tolist() == [0.25, 0.5, 0.75, 1.0] and weights.tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="steps >= 2"):
        quadrature("riemann_trapezoid", 1)


def test_one_right_riemann_step_from_zero_is_input_x_gradient():
    model = make_model("test_resnet")
    x = input_for(model)
    ig = _ig(model, x, [1, 2], steps=1, method="riemann_right", baseline="zero")
    ixg = cnnviz.explain(model, x, ["input_x_gradient"], target=[1, 2])["input_x_gradient"].raw
    assert torch.allclose(ig.raw, ixg, rtol=1e-6, atol=1e-8 * float(ixg.abs().max()))


def _completeness_error(att: cnnviz.Attribution, logit: torch.Tensor) -> torch.Tensor:
    delta = logit.double() - att.offset.double()
    return (att.raw.double().sum((1, 2, 3)) - delta).abs() / delta.abs()


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext"])
def test_completeness_on_random_weights_is_reported_and_shrinks_with_steps(name):
    model = make_model(name)
    x = input_for(model, size=(64, 64))
    target = [3, 8]
    logit = _target_logit(model, x, target)
    errors = []
    for steps in (4, 128):
        att = _ig(model, x, target, steps=steps, baseline="black", batch_size=64)
        err = _completeness_error(att, logit)
        errors.append(err)
        for s in range(2):  # the note states the measured error for each sample
            note = next(n for n in att.notes if n.startswith(f"sample {s}: completeness"))
            assert f"({float(err[s]):.1%})" in note
    assert float(errors[1].max()) < 0.05 and float(errors[1].max()) < float(errors[0].max())


@pytest.mark.slow
def test_completeness_on_trained_weights(trained_lite0):
    """The packaged EfficientNet-Lite0 (trained on ImageNet) on two photographs, default settings
    (50 Gauss-Legendre steps from the black image): sum(IG) meets f(x) - f(black) to within 10%
    (measured 6.6% and 5.3%: a trained ReLU6 network's path has many kinks, which 50 nodes
    integrate only roughly), the offset is the black image's logit, and the notes say the error.
    One right-Riemann step (Input x Gradient against the black image) misses by far more."""
    model = trained_lite0.module
    x = torch.cat([trained_lite0.preprocess(Image.open(EXAMPLES / n)) for n in ("chelsea.jpg", "coffee.jpg")])
    ex = cnnviz.explain(model, x, [IG])
    att = ex[IG]
    assert [trained_lite0.class_names[int(t)] for t in ex.targets] == ["tiger cat", "espresso"]
    black, _ = make_baseline(
        "black",
        x,
        trained_lite0.preprocessor.data_config["mean"],
        trained_lite0.preprocessor.data_config["std"],
    )
    targets = ex.targets.tolist()
    assert torch.allclose(att.offset, _target_logit(model, black, targets), rtol=1e-5, atol=1e-5)
    err = _completeness_error(att, _target_logit(model, x, targets))
    assert float(err.max()) < 0.1, att.notes
    for s in range(2):
        assert f"({float(err[s]):.1%})" in next(
            n for n in att.notes if n.startswith(f"sample {s}: completeness")
        )
    one = cnnviz.explain(model, x, [IG], params={IG: {"steps": 1, "method": "riemann_right"}})[IG]
    assert float(_completeness_error(one, _target_logit(model, x, targets)).min()) > 0.2


def test_baselines():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    black, _ = make_baseline("black", x, mean, std)
    assert torch.allclose(
        black * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1), 0 * x, atol=1e-6
    )
    blur, _ = make_baseline("blur", x, mean, std)
    assert blur.shape == x.shape and blur.std() < 0.5 * x.std()
    assert torch.allclose(blur.mean((-2, -1)), x.mean((-2, -1)), atol=0.05)  # blurring keeps the mean
    flat = torch.full((1, 3, 40, 56), 0.3)
    assert torch.allclose(gaussian_blur(flat, 3.0), flat, atol=1e-6)
    # sigma = 5% of the shorter side (2 px here), kernel radius 3 sigma, reflected borders:
    # torchvision's Gaussian blur with the same kernel size and sigma
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    assert torch.allclose(blur, tv_blur(x, kernel_size=[13, 13], sigma=[2.0, 2.0]), atol=1e-5)
    u1, _ = make_baseline("uniform", x, mean, std, seed=1)
    u1b, _ = make_baseline("uniform", x, mean, std, seed=1)
    u2, _ = make_baseline("uniform", x, mean, std, seed=2)
    assert torch.equal(u1, u1b) and not torch.equal(u1, u2) and torch.equal(u1[0], u1[1])
    pixels = u1 * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.equal(make_baseline("zero", x, mean, std)[0], torch.zeros_like(x))


@pytest.mark.parametrize("baseline", ["blur", "uniform"])
def test_every_baseline_starts_the_path_it_names(baseline):
    model = make_model("test_resnet")
    x = input_for(model, size=(64, 64))
    att = _ig(model, x, [3, 8], steps=8, baseline=baseline)
    base, _ = make_baseline(baseline, x, (0.5,) * 3, (0.5,) * 3)
    assert torch.allclose(att.offset, _target_logit(model, base, [3, 8]), rtol=1e-5, atol=1e-6)
    words = {"blur": "blurred by a Gaussian", "uniform": "uniform noise in [0, 1]"}[baseline]
    assert any(n.startswith("baseline:") and words in n for n in att.notes)


def test_trapezoid_with_one_step_is_refused_before_any_work():
    model = make_model("test_resnet")
    with pytest.raises(ValueError, match="trapezoid rule needs steps >= 2"):
        _ig(model, input_for(model), None, steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="baseline"):
        _ig(model, input_for(model), None, baseline="gray")
