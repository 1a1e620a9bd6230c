"""Input x Gradient, Integrated Gradients and SmoothGrad on every layout, under the caller's grad
modes, batch against singles, and the model left as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, input_for, make_model, model_state

import cnnviz

NEW = ("input_x_gradient", "integrated_gradients", "smoothgrad", "smoothgrad_cam")
SMALL = {  # few samples and steps: what is tested here does not depend on their number
    "integrated_gradients": {"steps": 4, "batch_size": 3},
    "smoothgrad": {"n_samples": 3, "batch_size": 2, "base": "guided_backprop"},
    "smoothgrad_cam": {"n_samples": 3, "batch_size": 2},
}
LAYOUTS = {"test_resnet": "NCHW", "test_mambaout": "NHWC", "test_vit": "tokens"}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # A batch and its samples differ by float32 rounding only; summed over noisy copies, that
    # reaches ~1e-5 of a map's peak (SmoothGrad-CAM on a near-blank map), a batching bug far more.
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max().clamp_min(1e-12)))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_new_method_on_every_layout(name):
    model = make_model(name)
    anatomy = cnnviz.inspect(model)
    assert anatomy.layout == LAYOUTS[name]
    if name == "test_vit":
        assert anatomy.num_prefix_tokens >= 1
    x = input_for(model)
    ex = cnnviz.explain(model, x, list(NEW), target=[3, 8], params=SMALL)
    for mid in NEW:
        raw = ex[mid].raw
        assert torch.isfinite(raw).all() and raw.abs().max() > 0, mid
        if mid == "smoothgrad_cam":
            assert ex[mid].layer == ex.layer
        else:
            assert raw.shape == x.shape and ex[mid].layer == "input"
    plain = cnnviz.explain(model, x, ["grad_cam"], target=[3, 8])["grad_cam"].raw
    assert ex["smoothgrad_cam"].raw.shape == plain.shape


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_under_the_callers_no_grad_and_inference_mode(context):
    model = make_model("test_resnet")
    x = input_for(model, size=(64, 64))
    expected = cnnviz.explain(model, x, list(NEW), params=SMALL)
    with context():
        inside = x.clone()  # an inference tensor under inference_mode
        got = cnnviz.explain(model, inside, list(NEW), params=SMALL)
    for mid in NEW:
        assert torch.equal(got[mid].raw, expected[mid].raw), mid


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_a_batch_equals_its_samples_one_by_one(name):
    model = make_model(name)
    x = input_for(model, batch=3)
    targets = [7, 0, 999]
    batch = cnnviz.explain(model, x, list(NEW), target=targets, params=SMALL)
    for i, t in enumerate(targets):
        single = cnnviz.explain(model, x[i : i + 1], list(NEW), target=t, params=SMALL)
        for mid in NEW:
            assert _close(single[mid].raw, batch[mid].raw[i : i + 1]), (mid, i)
            if single[mid].offset is not None:
                assert _close(single[mid].offset, batch[mid].offset[i : i + 1]), (mid, i)


def test_the_model_is_left_as_it_was_after_success_and_failure(monkeypatch):
    model = make_model("test_resnet")
    model.train()
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    x = input_for(model, size=(64, 64))
    before = model_state(model)
    cnnviz.explain(model, x, list(NEW), params=SMALL)
    assert_same_state(before, model_state(model))
    calls = {"n": 0}
    forward = model.layer4.forward

    def fail_later(*args, **kwargs):  # the main pass succeeds, a batch of the method's own fails
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("injected failure")
        return forward(*args, **kwargs)

    for mid in NEW[1:]:
        calls["n"] = 0
        monkeypatch.setattr(model.layer4, "forward", fail_later)
        with pytest.raises(RuntimeError, match="injected"):
            cnnviz.explain(model, x, [mid], params={mid: SMALL[mid]})
        monkeypatch.undo()
        assert_same_state(before, model_state(model))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_the_batch_size_does_not_change_a_result(name):
    """The noise, the path and the masks are drawn for the whole call, not per batch: the sweep
    relies on it when it runs these methods one sample at a time under float32 compute."""
    model = make_model(name)
    x = input_for(model, batch=2)
    wide = {**SMALL, "score_cam": {"max_channels": 5, "batch_size": 5}}
    one = {m: {**p, "batch_size": 1} for m, p in wide.items()}
    methods = [*NEW, "score_cam"]
    a = cnnviz.explain(model, x, methods, target=[3, 8], params=wide)
    b = cnnviz.explain(model, x, methods, target=[3, 8], params=one)
    for mid in methods:
        assert _close(b[mid].raw, a[mid].raw), mid
