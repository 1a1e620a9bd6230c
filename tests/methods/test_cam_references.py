"""The CAM family against pytorch-grad-cam and torchcam, where their definitions agree with ours.

How they differ by definition, and how each test bridges it:

* Output: both references ReLU and min-max normalize each map; pytorch-grad-cam then resizes it to
  the input with OpenCV and normalizes again. Our raw maps are unnormalized at the map's
  resolution, so the tests apply the reference's own normalization and resize to ours.
* pytorch-grad-cam's Grad-CAM++ adds eps = 1e-6 to a denominator of the order of the squared
  gradient, which at a random network's last map is itself ~1e-5: the classifier is scaled by
  1e3 (gradients 1e3 larger) so that eps is negligible.
* torchcam's GradCAMpp never divides by its denominator (it divides a boolean-indexed copy in
  place), so its weights are ``sum relu(g) g^2``: not Grad-CAM++'s; the test shows it.
* Eigen-CAM: a principal component's sign is arbitrary; pytorch-grad-cam keeps whatever the SVD
  returns, we choose the sign that agrees with the map's mean: compared up to that sign.
* Score-CAM: pytorch-grad-cam upsamples with align_corners=True before normalizing; torchcam
  normalizes at the map's resolution and then upsamples (align_corners=False); we follow the
  paper (upsample, then normalize, align_corners=False). Each test swaps in the reference's mask
  convention (`score_cam.MASKS`) and must then agree; the weights (softmax over channels of the
  target logit of the masked input) are the same in all three (torchcam subtracts the unmasked
  logit, which the softmax ignores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import input_for, make_model

import cnnviz
from cnnviz.engine.anatomy import inspection
from cnnviz.engine.capture import members
from cnnviz.engine.passes import Needs, run_passes
from cnnviz.methods import score_cam as score_cam_module

pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
cv2 = pytest.importorskip("cv2")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402


def _pgc_scale(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's post-processing: min-max, cv2 resize, min-max again (one layer)."""
    out = []
    for img in maps:
        img = img - img.min()
        img = img / (1e-7 + img.max())
        out.append(cv2.resize(np.float32(img), (size[1], size[0])))
    out = np.stack(out)
    out = out - out.min((1, 2), keepdims=True)
    return out / (1e-7 + out.max((1, 2), keepdims=True))


def _minmax(t: torch.Tensor) -> torch.Tensor:
    t = t - t.amin((-2, -1), keepdim=True)
    return t / (t.amax((-2, -1), keepdim=True) + 1e-8)


@pytest.fixture(scope="module")
def resnet():
    model = make_model("resnet18")
    with torch.no_grad():
        model.fc.weight.mul_(1e3)  # see the module docstring (Grad-CAM++'s eps)
    return model, input_for(model, batch=2, size=(96, 96))


PGC = {
    "grad_cam_pp": "GradCAMPlusPlus",
    "xgrad_cam": "XGradCAM",
    "layer_cam": "LayerCAM",
    "hires_cam": "HiResCAM",
}


@pytest.mark.parametrize("method", sorted(PGC))
def test_gradient_cams_equal_pytorch_grad_cam(resnet, method):
    model, x = resnet
    ex = cnnviz.explain(model, x, [method])
    cam = getattr(pgc, PGC[method])(model, [model.layer4])
    theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in ex.targets])
    ours = _pgc_scale(ex[method].raw.numpy(), tuple(x.shape[-2:]))
    assert np.abs(ours - theirs).max() < 1e-4


TORCHCAM = {"xgrad_cam": "XGradCAM", "layer_cam": "LayerCAM"}


@pytest.mark.parametrize("method", sorted(TORCHCAM))
def test_gradient_cams_equal_torchcam(resnet, method):
    model, x = resnet
    ex = cnnviz.explain(model, x, [method])
    with getattr(tcm, TORCHCAM[method])(model, "layer4", input_shape=tuple(x.shape[1:])) as extractor:
        out = model(x)
        (theirs,) = extractor(ex.targets.tolist(), out)
    assert torch.allclose(_minmax(ex[method].raw), theirs, atol=1e-5)


def test_torchcam_gradcampp_is_not_grad_cam_pp(resnet):
    """torchcam's GradCAMpp weights are sum relu(g) g^2 (its division is lost): we check that,
    and that Grad-CAM++ with the division (ours, pytorch-grad-cam's) differs from it."""
    model, x = resnet
    ex = cnnviz.explain(model, x, ["grad_cam_pp", "grad_cam"])
    with tcm.GradCAMpp(model, "layer4", input_shape=tuple(x.shape[1:])) as extractor:
        out = model(x)
        (theirs,) = extractor(ex.targets.tolist(), out)
    found = members(model)
    insp = inspection(model, found)
    p = run_passes(model, found, x, Needs(map=True, map_grad=True), ex.targets, insp.anatomy.source, insp)
    a, g = p.map, p.map_grad
    undivided = torch.relu(torch.einsum("bc,bchw->bhw", (torch.relu(g) * g * g).sum((2, 3)), a))
    assert torch.allclose(_minmax(undivided), theirs, atol=1e-5)
    assert not torch.allclose(_minmax(ex["grad_cam_pp"].raw), theirs, atol=1e-2)


@pytest.mark.parametrize("method", ["eigen_cam", "eigen_grad_cam"])
def test_eigen_cams_equal_pytorch_grad_cam_up_to_the_sign(resnet, method):
    model, x = resnet
    ex = cnnviz.explain(model, x, [method])
    ref_cls = pgc.EigenCAM if method == "eigen_cam" else pgc.EigenGradCAM
    cam = ref_cls(model, [model.layer4])
    theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in ex.targets])
    acts = cam.activations_and_grads.activations[0].numpy()
    if method == "eigen_grad_cam":
        acts = acts * cam.activations_and_grads.gradients[0].numpy()
    projection = get_2d_projection(acts)  # their sign
    for i in range(x.shape[0]):
        ours_signed = ex[method].raw[i].numpy()
        same = np.abs(np.maximum(projection[i], 0) - ours_signed).max()
        flipped = np.abs(np.maximum(-projection[i], 0) - ours_signed).max()
        assert min(same, flipped) < 1e-4 * np.abs(projection[i]).max()
        if same < flipped:  # where the signs agree, the whole pipeline agrees
            ours = _pgc_scale(ex[method].raw[i : i + 1].numpy(), tuple(x.shape[-2:]))
            assert np.abs(ours - theirs[i : i + 1]).max() < 1e-4
        # our sign agrees with the map's mean over channels
        mean = acts[i].mean(0)
        proj = projection[i] if same < flipped else -projection[i]
        assert float((proj * (mean - mean.mean())).sum()) >= 0


def _pgc_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return (up - lo) / (hi - lo + 1e-8)


def _torchcam_masks(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    lo, hi = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    normalized = (maps - lo) / (hi - lo + 1e-8)
    return F.interpolate(normalized[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@pytest.fixture(scope="module")
def small_resnet():
    model = make_model("resnet18")
    return model, input_for(model, batch=2, size=(64, 64))


def test_score_cam_equals_pytorch_grad_cam_with_its_masks(small_resnet, monkeypatch):
    model, x = small_resnet
    monkeypatch.setattr(score_cam_module, "MASKS", _pgc_masks)
    ex = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 64})
    cam = pgc.ScoreCAM(model, [model.layer4])
    cam.batch_size = 64
    theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in ex.targets])
    ours = _pgc_scale(ex["score_cam"].raw.numpy(), tuple(x.shape[-2:]))
    assert np.abs(ours - theirs).max() < 1e-4


def test_score_cam_equals_torchcam_with_its_masks(small_resnet, monkeypatch):
    model, x = small_resnet
    monkeypatch.setattr(score_cam_module, "MASKS", _torchcam_masks)
    ex = cnnviz.explain(model, x, ["score_cam"], params={"batch_size": 64})
    with tcm.ScoreCAM(model, "layer4", batch_size=64, input_shape=tuple(x.shape[1:])) as extractor:
        with torch.no_grad():
            out = model(x)
        (theirs,) = extractor(ex.targets.tolist(), out)
    assert torch.allclose(_minmax(ex["score_cam"].raw), theirs, atol=1e-5)
