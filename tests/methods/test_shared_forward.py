"""A method's result does not depend on which other methods share the call (issue 12, section 0).

The rule passes used to compute eval batch norm as ``x * alpha + beta``, whose float32 rounding
differs from the batch-norm kernel's: ReLUs sitting near zero switched, and ``vanilla_gradient``
asked beside ``guided_backprop`` differed from itself asked alone (and from autograd). Fresh
BatchNorm (alpha = 1) hides this; random statistics and trained weights do not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from torch import nn

import cnnviz

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _wild_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Random batch-norm statistics with small variances: large alphas, many units near zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) * 0.05 + 1e-3)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.3)
    return model


def _autograd(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)
    return g


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def resnet18_wild():
    torch.manual_seed(0)
    return _wild_statistics(timm.create_model("resnet18", pretrained=False).eval(), seed=1)


def test_rule_passes_keep_the_models_own_forward_on_random_statistics(resnet18_wild):
    model = resnet18_wild
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        own = model(x)
    shared = cnnviz.explain(model, x, ["vanilla_gradient", "guided_backprop", "deconvnet"])
    assert torch.equal(shared.logits, own)  # bit for bit: the batch-norm kernel itself ran
    alone = cnnviz.explain(model, x, ["vanilla_gradient"])
    reference = _autograd(model, x, alone.targets)
    # Before the fix: 6.9e-3 relative, 1,287 pixels off by more than 1e-3 of the peak.
    assert _rel(shared["vanilla_gradient"].raw, alone["vanilla_gradient"].raw) < 1e-5
    assert _rel(shared["vanilla_gradient"].raw, reference) < 1e-5
    assert _rel(alone["vanilla_gradient"].raw, reference) < 1e-5


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_vanilla_gradient_alone_equals_shared_on_more_statistics(seed):
    torch.manual_seed(seed)
    model = _wild_statistics(timm.create_model("test_resnet", pretrained=False).eval(), seed)
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        own = model(x)
    shared = cnnviz.explain(model, x, ["vanilla_gradient", "guided_backprop", "grad_cam"])
    alone = cnnviz.explain(model, x, ["vanilla_gradient"])
    assert torch.equal(shared.logits, own)
    assert _rel(shared["vanilla_gradient"].raw, alone["vanilla_gradient"].raw) < 1e-5


def test_trained_weights_keep_the_models_own_forward(trained_lite0):
    """The packaged EfficientNet-Lite0 (trained batch-norm statistics, ReLU6): the rule passes
    give the model's own logits bit for bit, and the plain gradient does not depend on company."""
    model = trained_lite0.module
    x = trained_lite0.preprocess(Image.open(EXAMPLES / "chelsea.jpg"))
    with torch.inference_mode():
        own = model(x)
    shared = cnnviz.explain(model, x, ["vanilla_gradient", "guided_backprop", "deconvnet", "grad_cam"])
    alone = cnnviz.explain(model, x, ["vanilla_gradient"])
    assert torch.equal(shared.logits, own)
    assert _rel(shared["vanilla_gradient"].raw, alone["vanilla_gradient"].raw) < 1e-5
    assert _rel(alone["vanilla_gradient"].raw, _autograd(model, x, alone.targets)) < 1e-5
