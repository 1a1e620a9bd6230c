"""Shared test helpers: random-weight timm models whose random init cannot hide bugs, and trained
models (packaged ImageNet weights, no Hub) built once per session."""

from __future__ import annotations

import functools
import os

import pytest
import timm
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make random-init quirks visible (see ZOO-FACTS): non-identity BatchNorm statistics,
    non-zero classifiers and layer scales, so that a folding or rule bug cannot pass on zeros."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
                if m.weight is not None and float(m.weight.abs().max()) < 1e-6:  # zero-init residual BN
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5)
            for pname in ("gamma", "ls_gamma"):
                p = getattr(m, pname, None)
                if isinstance(p, nn.Parameter) and p.dim() == 1 and float(p.abs().max()) < 1e-3:
                    p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
            if type(m).__name__ == "LayerScale" and float(m.gamma.abs().max()) < 1e-3:
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=gen) * 0.5 + 0.5)
        if hasattr(model, "get_classifier"):
            for m in _modules(model.get_classifier()):
                if isinstance(m, nn.Linear | nn.Conv2d):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight.shape[1] ** 0.5)
                    if m.bias is not None:
                        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def _modules(obj) -> list[nn.Module]:
    if isinstance(obj, nn.Module):
        return list(obj.modules())
    if isinstance(obj, tuple | list):
        return [m for o in obj for m in _modules(o)]
    return []


def make_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return randomize(model.eval(), seed)


def input_for(model: nn.Module, batch: int = 2, seed: int = 0, size: tuple[int, int] | None = None):
    from cnnviz.engine.layout import probe_input_size

    c, h, w = probe_input_size(model)
    h, w = size or (h, w)
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))


def model_state(model: nn.Module) -> dict:
    """Everything `explain` promises to leave as it was."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "global_hooks": (
            len(nn.modules.module._global_forward_hooks),
            len(nn.modules.module._global_forward_pre_hooks),
            len(nn.modules.module._global_backward_hooks),
        ),
        "mode_stack": torch._C._len_torch_function_stack(),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "grads", "hooks", "global_hooks", "mode_stack"):
        assert before[key] == after[key], f"model {key} changed"
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"state_dict entry {k} changed"


@pytest.fixture
def tiny_resnet():
    return make_model("test_resnet")


TRAINED_LITE = ("tf_efficientnet_lite0.in1k", "tf_efficientnet_lite1.in1k", "tf_efficientnet_lite2.in1k")


@functools.cache
def trained(name: str = "tf_efficientnet_lite0.in1k"):
    """A `cnnviz.zoo.Model` with trained ImageNet weights from its pip package (models.yaml's
    `packaged:`; no Hub, no network), on the CPU, built once per session and name.

    `name`: one of `TRAINED_LITE` (or its architecture, ``tf_efficientnet_lite1``). The instance
    is shared: do not change its module (copy.deepcopy it first).
    """
    from cnnviz import zoo

    model = zoo.load_model(name, weights="packaged", device="cpu")
    assert model.weights_source == "packaged" and not model.random_weights
    return model


@pytest.fixture(scope="session")
def trained_lite0():
    """EfficientNet-Lite0 with its packaged ImageNet weights (cat and espresso recognised)."""
    return trained("tf_efficientnet_lite0.in1k")
