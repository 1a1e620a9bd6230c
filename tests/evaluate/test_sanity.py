"""Cascading model randomization: on a copy, steps from the classifier down, correlations right."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_state, make_model, model_state

import cnnviz
import cnnviz.evaluate as ev
from cnnviz.evaluate import sanity


def test_cascade_covers_every_parameter_once_from_the_classifier_down():
    model = make_model("efficientnet_lite0")
    steps = ev.cascade(model)
    names = [n for s in steps for n in s.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    labels = [s.label for s in steps]
    assert labels[0] == "classifier" and labels[-1] == "stem"
    assert labels[1].startswith("blocks.6 (+ ") and "conv_head" in labels[1]
    assert [lab.split(" ")[0] for lab in labels[1:-1]] == [
        "blocks.6",
        "blocks.4",
        "blocks.2",
        "blocks.1",
        "blocks.0",
    ]
    assert set(steps[0].params) == {"classifier.weight", "classifier.bias"}


def test_spearman_equals_scipys_with_ties():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 50), generator=gen).float()  # many ties
    b = a + torch.randn(4, 50, generator=gen)
    ours = sanity.spearman(a, b)
    for i in range(4):
        assert ours[i].item() == pytest.approx(stats.spearmanr(a[i], b[i]).statistic, abs=1e-6)
    assert torch.isnan(sanity.spearman(torch.ones(1, 5), torch.arange(5.0)[None])).all()


def test_ranks_equal_scipys_on_float32_edge_cases():
    """Float32 rows are ranked by sorting integer keys made from their bits: signed zeros, the
    extremes, subnormals and tie groups at either end must rank exactly as scipy ranks them."""
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(6, 3000, generator=gen)
    rows[0, :40] = 0.0
    rows[0, 40:90] = -0.0  # equal to 0.0: one tie group with it
    rows[1, :5] = torch.tensor([3.4e38, -3.4e38, 1e-45, -1e-45, -1.2e-38])
    rows[2] = rows[2].abs()
    rows[2, :30] = rows[2].min()  # a tie group at the bottom ...
    rows[2, 30:60] = rows[2].max()  # ... and one at the top
    rows[3] = torch.randint(-4, 4, (3000,), generator=gen).float()  # ties everywhere
    rows[4] = 7.0  # one group
    rows[5] = -rows[5].abs()
    ours = sanity.average_ranks(rows)
    for i in range(6):
        assert torch.equal(ours[i], torch.from_numpy(stats.rankdata(rows[i].numpy()))), i
    # float64, and rows that are not all finite (float16 overflows 3.4e38 to inf), take numpy's argsort
    assert torch.equal(sanity.average_ranks(rows.double()), ours)
    assert torch.equal(
        sanity.average_ranks(rows.half()), torch.from_numpy(stats.rankdata(rows.half().float(), axis=1))
    )


def test_compare_scores_the_maps_as_scipy_and_scikit_image_do():
    """`compare` (the trained side computed once) against the measures computed plainly."""
    stats = pytest.importorskip("scipy.stats")
    skm = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(2)
    grads = torch.randn(2, 2, 3, 24, 20, generator=gen)
    grads[1, 0, :, :4] = 0.0  # ties in both the signed and the absolute maps
    cams = torch.randn(2, 2, 5, 4, generator=gen).relu()  # a CAM after its ReLU: tied zeros
    hw = (24, 20)

    def unit(t):
        t = t.double().numpy()
        return (t - t.min()) / max(t.max() - t.min(), 1e-30)

    for trained, other in (grads, cams):
        got = sanity.compare(trained, other, hw)
        heat_a = ev.perturb.input_heatmaps(trained.abs().amax(1) if trained.dim() == 4 else trained, hw)
        heat_b = ev.perturb.input_heatmaps(other.abs().amax(1) if other.dim() == 4 else other, hw)
        for i in range(2):
            a_abs = (trained[i].abs().amax(0) if trained.dim() == 4 else trained[i].abs()).flatten()
            b_abs = (other[i].abs().amax(0) if other.dim() == 4 else other[i].abs()).flatten()
            expect_abs = stats.spearmanr(a_abs, b_abs).statistic
            expect_signed = stats.spearmanr(trained[i].flatten(), other[i].flatten()).statistic
            expect_ssim = skm.structural_similarity(unit(heat_a[i]), unit(heat_b[i]), data_range=1.0)
            assert got["spearman_abs"][i].item() == pytest.approx(expect_abs, abs=1e-6)
            assert got["spearman_signed"][i].item() == pytest.approx(expect_signed, abs=1e-6)
            assert got["ssim"][i].item() == pytest.approx(expect_ssim, abs=1e-6)
    tiny = sanity.compare(cams, cams.flip(-1), (5, 4))  # below SSIM's window: NaN, ranks still
    assert torch.isnan(tiny["ssim"]).all() and torch.isfinite(tiny["spearman_abs"]).all()


def test_randomization_runs_on_a_copy_and_leaves_the_model_untouched():
    model = make_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    before = model_state(model)
    check = ev.model_randomization(model, x, ["cam", "vanilla_gradient", "guided_backprop"], steps=3)
    assert_same_state(before, model_state(model))
    assert check.labels == ("classifier", "layer4", "layer3")
    for m in check.methods:
        assert check.spearman_abs[m].shape == (3, 2) and check.spearman_signed[m].shape == (3, 2)
        assert len(check.maps[m]) == 4
    # the first entry is the trained model's own map
    ex = cnnviz.explain(model.eval(), x, ["cam"], target=check.targets)
    assert torch.allclose(check.maps["cam"][0], ex["cam"].raw, atol=1e-5)


def test_randomizing_the_classifier_changes_cam_and_the_correlations_are_of_the_maps():
    model = make_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 160, 160)  # a 5x5 map with both signs
    check = ev.model_randomization(model, x, ["cam"], steps=1)
    trained, randomized = check.maps["cam"]
    assert not torch.equal(trained, randomized)
    assert bool((trained < 0).any() and (trained > 0).any())
    expect = sanity.spearman(trained.abs().flatten(1), randomized.abs().flatten(1))
    assert torch.equal(check.spearman_abs["cam"][0], expect)
    signed = sanity.spearman(trained.flatten(1), randomized.flatten(1))
    assert torch.equal(check.spearman_signed["cam"][0], signed) and not torch.equal(signed, expect)
    # CAM with a random classifier is a random mix of the same channels: far from the trained one
    assert check.spearman_signed["cam"][0, 0].abs() < 0.9


def test_ssim_equals_scikit_images_and_needs_no_library():
    """SSIM is computed in torch (batched, off the GIL); scikit-image's is the reference."""
    skm = pytest.importorskip("skimage.metrics")
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 70, 61, generator=gen), 9, 1, 4)[:, 0]
    a = torch.cat([torch.rand(2, 70, 61, generator=gen), smooth, torch.zeros(1, 70, 61)])
    b = torch.cat([a[:2] * 0.7 + 0.3 * torch.rand(2, 70, 61, generator=gen), smooth.flip(-1), smooth[:1]])
    ours = sanity.ssim(a, b)
    assert ours.shape == (6,)

    def unit(t):
        t = t.double().numpy()
        return (t - t.min()) / max(t.max() - t.min(), 1e-30)

    for i in range(6):
        ref = skm.structural_similarity(unit(a[i]), unit(b[i]), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-6), i
    assert sanity.ssim(a[2:3], a[2:3] * 3 + 1).item() == pytest.approx(1.0)  # scale-free: [0, 1] first
    assert torch.isnan(sanity.ssim(torch.rand(1, 6, 40), torch.rand(1, 6, 40))).all()  # below the window


def test_the_sanity_check_has_ssim_without_scikit_image(monkeypatch):
    """scikit-image is a test dependency, not a runtime one: the app's SSIM must not need it."""
    import sys

    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage...` now raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.metrics", None)
    model = make_model("resnet18", num_classes=10)
    check = ev.model_randomization(model, torch.randn(1, 3, 64, 64), ["vanilla_gradient"], steps=1)
    assert check.ssim["vanilla_gradient"].shape == (1, 1)
    assert -1 <= check.ssim["vanilla_gradient"].item() < 1


def test_bad_sanity_input():
    model = make_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 6\]"):
        ev.model_randomization(model, x, ["cam"], steps=7)
    with pytest.raises(ValueError, match="give the methods"):
        ev.model_randomization(model, x)
    with pytest.raises(ValueError, match="unknown method"):
        ev.model_randomization(model, x, ["gradcam++"])


def test_refold_equals_a_fresh_inspection_after_randomization():
    """The sanity check skips the copy's probe pass; the CAM fold it uses must be the real one."""
    import copy

    from cnnviz.engine.anatomy import _inspect, inspection, refold

    for name in ("resnet18", "convnext_atto"):
        model = make_model(name, num_classes=10)
        clone = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(3)
        steps = ev.cascade(clone)
        sanity.randomize_(clone, steps[0].params + steps[1].params, gen)
        fresh = _inspect(clone)
        quick = refold(clone, inspection(model))
        assert quick is not None and quick.anatomy == fresh.anatomy
        assert quick.fold.normalized == fresh.fold.normalized
        assert torch.allclose(quick.fold.weight, fresh.fold.weight, atol=1e-5)
        assert torch.allclose(quick.fold.bias, fresh.fold.bias, atol=1e-5)


def test_randomized_maps_equal_explaining_an_independently_randomized_copy():
    """The check draws each step's weights and scores each step on worker threads while it explains:
    every map and every score must equal doing the same one step after the other."""
    import copy

    model = make_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    methods = ["cam", "grad_cam", "vanilla_gradient"]
    check = ev.model_randomization(model, x, methods, steps=3, seed=5)
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(5)
    for i, step in enumerate(ev.cascade(clone)[:3]):
        sanity.randomize_(clone, step.params, gen)
        ex = cnnviz.explain(clone, x, methods, target=check.targets)
        for m in methods:
            assert torch.allclose(check.maps[m][i + 1], ex[m].raw, atol=1e-5), (i, m)
            expect = sanity.compare(check.maps[m][0], check.maps[m][i + 1], (64, 64))
            assert torch.equal(check.spearman_abs[m][i], expect["spearman_abs"]), (i, m)
            assert torch.equal(check.spearman_signed[m][i], expect["spearman_signed"]), (i, m)
            assert torch.equal(check.ssim[m][i], expect["ssim"]), (i, m)


def test_the_copy_leaves_the_users_hooks_behind():
    """A CAM extractor's hook holds the last forward's activations (not deep-copyable): the check
    copies the model without hooks, and the hook never sees the randomized copy."""
    model = make_model("resnet18", num_classes=10)
    seen = []
    kept = {}

    def hook(module, inputs, output):
        seen.append(output.shape)
        kept["out"] = output  # a non-leaf tensor when the forward builds a graph

    handle = model.layer4.register_forward_hook(hook)
    try:
        x = torch.randn(1, 3, 64, 64)
        model(x.requires_grad_(True))
        ex = cnnviz.explain(model, x.detach(), ["grad_cam"])
        seen.clear()
        check = ev.model_randomization(model, x.detach(), ["grad_cam"], explanation=ex, steps=2)
        # the copy's two steps never ran the user's hook
        assert seen == [] and check.spearman_abs["grad_cam"].shape == (2, 1)
        assert len(model.layer4._forward_hooks) == 1
    finally:
        handle.remove()


def test_the_copy_is_never_probed_again_and_refolded_only_for_cam(monkeypatch):
    from cnnviz.engine import anatomy

    model = make_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    methods = ["grad_cam", "vanilla_gradient", "guided_backprop"]
    ex = cnnviz.explain(model, x, methods)
    calls = {"inspect": 0, "refold": 0}
    inspect_, refold_ = anatomy._inspect, sanity.refold

    def counting_inspect(m):
        calls["inspect"] += 1
        return inspect_(m)

    def counting_refold(m, known):
        calls["refold"] += 1
        return refold_(m, known)

    monkeypatch.setattr(anatomy, "_inspect", counting_inspect)
    monkeypatch.setattr(sanity, "refold", counting_refold)
    fast = ev.model_randomization(model, x, methods, explanation=ex, steps=3)
    assert calls == {"inspect": 0, "refold": 0}  # no probe pass, no head fold: CAM is not asked for
    # Refolding every step (as for CAM) changes none of these maps.
    monkeypatch.setattr(sanity, "FOLD_READERS", frozenset(methods))
    slow = ev.model_randomization(model, x, methods, explanation=ex, steps=3)
    assert calls == {"inspect": 0, "refold": 3}
    for m in methods:
        for a, b in zip(fast.maps[m], slow.maps[m], strict=True):
            assert torch.equal(a, b), m
        torch.testing.assert_close(fast.spearman_abs[m], slow.spearman_abs[m], rtol=0, atol=0, equal_nan=True)


def test_a_randomized_network_that_overflows_gives_nan_and_a_note_not_an_error(monkeypatch):
    """Redrawn weights under kept BatchNorm statistics can overflow (it stopped the meaning
    benchmark on the trained EfficientNet-Lite1): the step's maps hold inf or NaN, which have no
    rank order. The check must say so for those images and go on, not stop the whole check."""
    draw = sanity._draw

    def huge(model, names, generator):
        values = draw(model, names, generator)
        return {n: v * float("inf") if "fc" in n else v for n, v in values.items()}

    monkeypatch.setattr(sanity, "_draw", huge)
    model = make_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    check = ev.model_randomization(model, x, ["vanilla_gradient", "grad_cam"], steps=2)
    raw = check.maps["vanilla_gradient"][1]
    assert not torch.isfinite(raw).all(), "the probe did not overflow: make it larger"
    broken = ~torch.isfinite(raw.flatten(1)).all(1)
    assert torch.isnan(check.spearman_abs["vanilla_gradient"][0][broken]).all()
    assert torch.isnan(check.ssim["vanilla_gradient"][0][broken]).all()
    assert any("overflowed" in n and "vanilla_gradient after classifier" in n for n in check.notes)


@pytest.mark.skipif(not sanity.threads.available(), reason="no per-thread thread count on this platform")
def test_two_lanes_give_the_maps_of_one_step_after_the_other(monkeypatch):
    """On the CPU two copies explain different steps at once, one thread each. Each copy applies
    every step's draws in order, so each step's network, and so its maps, must be exactly those of
    randomizing one copy step by step (explained on the same one thread: bit for bit)."""
    import copy

    model = make_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    methods = ["grad_cam", "vanilla_gradient", "guided_backprop"]
    monkeypatch.setattr(sanity, "lane_plan", lambda module, x, steps: (2, 1))
    lanes = ev.model_randomization(model, x, methods, steps=4, seed=7)  # 4 steps: no solo step
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(7)
    with sanity.threads.limit(1):
        for i, step in enumerate(ev.cascade(clone)[:4]):
            sanity.randomize_(clone, step.params, gen)
            ex = cnnviz.explain(clone, x, methods, target=lanes.targets)
            for m in methods:
                assert torch.equal(lanes.maps[m][i + 1], ex[m].raw), (i, m)


def test_the_lanes_leave_every_other_threads_count_alone():
    """`torch.set_num_threads` in a worker would also set the count of every thread started later
    (the app's next request threads): the lanes set their own thread's count only."""
    import threading

    before = torch.get_num_threads()
    inside = []

    def confined():
        with sanity.threads.limit(1):
            inside.append(torch.get_num_threads())  # PyTorch's own OpenMP runtime was set

    t = threading.Thread(target=confined)
    t.start()
    t.join()
    assert inside == [1] or not sanity.threads.available()
    model = make_model("resnet18", num_classes=10)
    ev.model_randomization(model, torch.randn(1, 3, 64, 64), ["grad_cam"], steps=3)
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == before and seen == [before]


def test_the_callers_torch_function_modes_reach_the_lanes():
    """The app's time limit is a TorchFunctionMode of the request's thread: the explain calls that
    run in the lanes must run under it too, and a stop raised there must reach the caller."""
    import threading

    from torch.overrides import TorchFunctionMode

    from cnnviz.app.limits import TooSlow, time_budget

    class Threads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.add(threading.current_thread().name)
            return func(*args, **(kwargs or {}))

    model = make_model("resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    ex = cnnviz.explain(model, x, ["grad_cam"])
    with Threads() as mode:
        ev.model_randomization(model, x, ["grad_cam"], explanation=ex, steps=2)
    assert any(n.startswith("cnnviz-sanity") for n in mode.names), mode.names
    with pytest.raises(TooSlow), time_budget(1e-6):
        ev.model_randomization(model, x, ["grad_cam"], explanation=ex, steps=3)
