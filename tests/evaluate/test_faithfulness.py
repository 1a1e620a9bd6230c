"""Deletion/insertion and Average Drop / Increase in Confidence: agreement with torchcam and with a
plain one-forward-per-step reference, batching, and the boundary."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import make_model

import cnnviz
import cnnviz.evaluate as ev
from cnnviz.evaluate import perturb


def _sharp(model: torch.nn.Module, scale: float = 8.0) -> torch.nn.Module:
    """Scale the classifier so that random-weight probabilities spread over [0, 1] instead of
    sitting near 1/K, where every curve is flat and any two implementations agree."""
    with torch.no_grad():
        model.get_classifier().weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def resnet():
    return _sharp(make_model("resnet18", num_classes=10))


@pytest.fixture(scope="module")
def batch():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _torchcam_cams(extractor, model, x):
    """torchcam's own maps as its metrics make them: of the softmax scores (its `logits_fn`), one
    image at a time (a batch changes the rounding, and Grad-CAM's many zeros make ties)."""
    cams, classes = [], []
    for i in range(x.shape[0]):
        scores = model(x[i : i + 1]).softmax(-1)
        classes.append(scores.argmax(1))
        cams.append(extractor.fuse_cams(extractor(classes[-1].tolist(), scores)).detach())
    return torch.cat(cams), torch.cat(classes)


@pytest.mark.parametrize("steps", [2, 7, 20])
def test_deletion_insertion_equal_torchcam_per_image(resnet, batch, steps):
    tc_methods = pytest.importorskip("torchcam.methods")
    tc_metrics = pytest.importorskip("torchcam.metrics")
    extractor = tc_methods.GradCAM(resnet, target_layer="layer4")
    try:
        cams, classes = _torchcam_cams(extractor, resnet, batch)
        ours = ev.deletion_insertion(
            resnet, batch, cams, classes, steps=steps, baseline="zero", insertion_start="zero"
        )
        for i in range(batch.shape[0]):
            metric = tc_metrics.DeletionInsertionMetric(
                extractor, partial(torch.softmax, dim=-1), steps=steps
            )
            metric.update(batch[i : i + 1])
            ref = metric.summary()
            assert abs(ref["deletion_auc"] - float(ours.deletion_auc[i])) < 1e-4
            assert abs(ref["insertion_auc"] - float(ours.insertion_auc[i])) < 1e-4
    finally:
        extractor.remove_hooks()
    # the check is not vacuous: the curves move
    assert float((ours.deletion[:, 0] - ours.deletion[:, -1]).abs().max()) > 0.05


def test_average_drop_and_increase_equal_torchcam(resnet, batch):
    tc_methods = pytest.importorskip("torchcam.methods")
    tc_metrics = pytest.importorskip("torchcam.metrics")
    extractor = tc_methods.GradCAM(resnet, target_layer="layer4")
    try:
        cams, classes = _torchcam_cams(extractor, resnet, batch)
        ours = ev.confidence_change(resnet, batch, cams, classes)
        for i in range(batch.shape[0]):
            metric = tc_metrics.ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
            metric.update(batch[i : i + 1])
            ref = metric.summary()
            assert abs(ref["avg_drop"] - float(ours.drop[i])) < 1e-4
            assert ref["conf_increase"] == float(ours.increase[i])
    finally:
        extractor.remove_hooks()
    assert float(ours.drop.max()) > 0.01  # not vacuous


def _reference_curves(model, x, heat, target, steps, base, start):
    """The plain definition, one forward per point (written apart from the library's code)."""
    h, w = heat.shape
    n = h * w
    order = heat.flatten().argsort(descending=True, stable=True)
    step = math.ceil(n / steps)
    counts = [*range(0, n, step), n]
    dele, ins = [], []
    with torch.no_grad():
        for k in counts:
            keep = torch.zeros(n, dtype=torch.bool)
            keep[order[:k]] = True
            keep = keep.view(1, 1, h, w)
            dele.append(model(torch.where(keep, base, x)).softmax(-1)[0, target].item())
            ins.append(model(torch.where(keep, x, start)).softmax(-1)[0, target].item())
    frac = torch.tensor(counts, dtype=torch.float32) / n
    return torch.trapezoid(torch.tensor(dele), frac), torch.trapezoid(torch.tensor(ins), frac)


def test_default_canvases_equal_the_plain_definition(resnet, batch):
    """Zero baseline for deletion, RISE's blurred copy for insertion, any map shape."""
    x = batch[:1]
    ex = cnnviz.explain(resnet, x, ["grad_cam", "vanilla_gradient"])
    heat = ex["vanilla_gradient"].heatmap()[0]
    start = perturb.gaussian_blur(x)
    ref_del, ref_ins = _reference_curves(resnet, x, heat, int(ex.targets[0]), 6, torch.zeros_like(x), start)
    ours = ev.deletion_insertion(resnet, x, ex["vanilla_gradient"].raw, ex.targets, steps=6)
    assert abs(float(ours.deletion_auc[0]) - float(ref_del)) < 1e-5
    assert abs(float(ours.insertion_auc[0]) - float(ref_ins)) < 1e-5


def test_blur_is_rises_kernel_and_keeps_a_constant_image():
    x = torch.full((1, 3, 32, 32), 0.7)
    assert torch.allclose(perturb.gaussian_blur(x), x, atol=1e-6)
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[0, 0, 15, 15] = 1
    out = perturb.gaussian_blur(impulse)[0, 0]
    t = torch.arange(11.0) - 5
    g = torch.exp(-0.5 * (t / 5) ** 2)
    g = g / g.sum()
    assert torch.allclose(out[10:21, 10:21], g[:, None] * g[None, :], atol=1e-6)
    assert out[15, 9] == 0  # 11 taps: nothing beyond 5 pixels


def test_the_default_batch_is_small_on_the_cpu_and_a_given_one_is_kept(resnet, batch):
    """On the CPU batches of 8 ran deletion + insertion 18-20% faster than batches of 32
    (ResNet-50, ConvNeXt-Tiny; they stay in cache): without a batch_size, the CPU gets 8."""
    cam = cnnviz.explain(resnet, batch[:1], ["grad_cam"])
    calls = []
    handle = resnet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        ev.deletion_insertion(resnet, batch[:1], cam["grad_cam"].raw, cam.targets, steps=10)
        assert perturb.CPU_BATCH == 8 and calls == [8, 8, 5]  # 20 points and the unperturbed image
        calls.clear()
        ev.deletion_insertion(resnet, batch[:1], cam["grad_cam"].raw, cam.targets, steps=10, batch_size=32)
        assert calls == [21]
    finally:
        handle.remove()
    assert perturb.resolve_batch(None, torch.device("cuda")) == perturb.DEFAULT_BATCH
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        perturb.resolve_batch(0, torch.device("cpu"))


def test_all_maps_and_steps_go_through_a_few_large_batches(resnet, batch):
    ex = cnnviz.explain(resnet, batch, ["grad_cam", "cam", "vanilla_gradient"])
    calls = []
    handle = resnet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        s = ev.score(resnet, batch, ex, ["deletion", "insertion"], steps=20, batch_size=64)
    finally:
        handle.remove()
    maps = 3 * batch.shape[0]
    # one check forward of the 3 images, then 20 deletion + 20 insertion points per map (the
    # insertion starts from a blurred copy, not from deletion's last point)
    assert calls[0] == batch.shape[0]
    assert sum(calls[1:]) == maps * 40
    assert len(calls) - 1 == math.ceil(maps * 40 / 64)
    assert set(s) == {"grad_cam", "cam", "vanilla_gradient"}
    for per_metric in s.values():
        assert set(per_metric) == {"deletion", "insertion"}
        for v in per_metric.values():
            assert v.shape == (batch.shape[0],) and v.dtype == torch.float32
            assert bool(((v >= 0) & (v <= 1)).all())


def test_shared_canvas_saves_the_repeated_forward(resnet, batch):
    maps = torch.rand(1, 7, 7)
    x = batch[:1]
    calls = []
    handle = resnet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        same = ev.deletion_insertion(resnet, x, maps, [3], steps=5, insertion_start="zero")
        n_same = sum(calls)
        calls.clear()
        ev.deletion_insertion(resnet, x, maps, [3], steps=5)
    finally:
        handle.remove()
    assert n_same == 5 + 4 + 1 and sum(calls) == 5 + 5 + 1
    assert torch.equal(same.insertion[:, 0], same.deletion[:, -1])


def test_bad_input_is_refused_with_the_fix(resnet, batch):
    ex = cnnviz.explain(resnet, batch, ["grad_cam", "vanilla_gradient"])
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        ev.score(resnet, batch, ex, ["deletion"], steps=1)
    with pytest.raises(ValueError, match=r"maps or .* gradient images"):
        ev.deletion_insertion(resnet, batch, torch.rand(3, 7), ex.targets)
    with pytest.raises(ValueError, match="input's size"):
        ev.deletion_insertion(resnet, batch, torch.rand(3, 3, 32, 32), ex.targets)
    with pytest.raises(ValueError, match="sample_index"):
        ev.deletion_insertion(resnet, batch, torch.rand(2, 7, 7), ex.targets)
    with pytest.raises(ValueError, match="average_drop does not apply to vanilla_gradient"):
        ev.score(resnet, batch, ex, ["average_drop"])
    with pytest.raises(ValueError, match=r"unknown metric 'deletio'.*'deletion'"):
        ev.score(resnet, batch, ex, ["deletio"])
    with pytest.raises(ValueError, match="not computed by this model on these images"):
        ev.score(resnet, batch.flip(0), ex, ["deletion"], steps=2)
    with pytest.raises(ValueError, match="baseline must be"):
        ev.score(resnet, batch, ex, ["deletion"], steps=2, baseline="gray")


def test_strict_false_leaves_out_what_does_not_apply(resnet, batch):
    ex = cnnviz.explain(resnet, batch, ["grad_cam", "vanilla_gradient"])
    result = ev.evaluate(resnet, batch, ex, ["average_drop", "increase_in_confidence"], strict=False)
    assert set(result.scores["grad_cam"]) == {"average_drop", "increase_in_confidence"}
    assert result.scores["vanilla_gradient"] == {}
    assert "cam maps only" in result.refused["vanilla_gradient"]["average_drop"]


def test_evaluation_leaves_the_model_as_it_was(resnet, batch):
    from conftest import assert_same_state, model_state

    ex = cnnviz.explain(resnet, batch, ["grad_cam"])
    resnet.train()
    try:
        before = model_state(resnet)
        ev.score(resnet, batch, ex, ["deletion", "insertion", "average_drop"], steps=3)
        assert_same_state(before, model_state(resnet))
    finally:
        resnet.eval()
