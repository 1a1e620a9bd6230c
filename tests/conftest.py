"""Shared test helpers: random-weight timm models whose random init cannot hide bugs, and trained
models (packaged ImageNet weights, no Hub) built once per session."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import pytest
import timm
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make random-init quirks visible, with the sweep's own steps: BatchNorm statistics that are
    not the identity, residual and layer scales woken from zero, a classifier re-drawn, so that a
    folding or backward-rule bug cannot pass on zeros or on identity statistics."""
    from cnnviz.sweep.build import perturb_batchnorm, randomize_classifier, wake_residual_scales

    name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    # wider than the sweep's ranges: tests want large departures from the identity
    perturb_batchnorm(model, seed, var=(0.5, 2.0))
    wake_residual_scales(model, f"{name}:{seed}", scale=(0.5, 1.0))
    randomize_classifier(model, name)
    return model


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


@contextlib.contextmanager
def running_app(settings) -> Iterator[str]:
    """The app built with `settings`, launched on a free local port; yields its URL (no trailing
    slash) and closes the server afterwards."""
    from cnnviz.app import ui
    from scripts.chromium import free_port

    demo = ui.build(settings)
    ui.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield demo.local_url.rstrip("/")
    finally:
        demo.close()
