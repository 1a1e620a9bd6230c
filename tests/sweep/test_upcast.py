"""`cnnviz.sweep.upcast`: a bfloat16 model run with float32 arithmetic, its weights left in bfloat16.

The reference is a float32 copy of the same model holding the bfloat16-rounded weights, given the
bfloat16-rounded input: under `Float32Compute` the bfloat16 model must compute what that copy
computes (to float32 rounding), where plain bfloat16 arithmetic misses it by about 1e-2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_model

import cnnviz
from cnnviz.sweep import upcast
from cnnviz.sweep.probe import SWEEP_PARAMS, probe
from cnnviz.sweep.upcast import FLOAT32_COMPUTE, Float32Compute, freeze


@pytest.fixture(scope="module")
def twins():
    """(bfloat16 ViT, float32 ViT with the same bfloat16-rounded weights, bfloat16 input)."""
    half = make_model("vit_tiny_patch16_224", seed=3, img_size=64).to(torch.bfloat16)
    freeze(half)
    full = copy.deepcopy(half).float()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    return half, full, x


def _logits_and_input_grad(model, x):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[:, 7].sum(), x)
    return logits.detach().float(), grad.float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_computes_what_the_float32_twin_computes(twins):
    half, full, x = twins
    ref_logits, ref_grad = _logits_and_input_grad(full, x.float())
    with Float32Compute():
        logits, grad = _logits_and_input_grad(half, x)
    assert _rel(logits, ref_logits) < 1e-5 and _rel(grad, ref_grad) < 1e-5
    plain_logits, _ = _logits_and_input_grad(half, x)  # bfloat16 arithmetic, for scale
    assert _rel(plain_logits, ref_logits) > 1e-3
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())  # the weights stay as they were


def test_linear_weights_are_saved_for_backward_in_bfloat16(twins):
    half, _, x = twins
    weights = {tuple(m.weight.shape) for m in half.modules() if isinstance(m, torch.nn.Linear)}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with Float32Compute(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        half(x.detach().requires_grad_(True))
    linear = [t for t in saved if tuple(t.shape) in weights]
    assert linear and all(t.dtype == torch.bfloat16 for t in linear)  # no float32 copy of a weight kept


def test_in_place_writes_reach_the_tensor_itself():
    t = torch.zeros(4, dtype=torch.bfloat16)
    with Float32Compute():
        t.add_(1)
        t[0] = 5
        t += 1
        assert t.dtype == torch.bfloat16 and (t + 0.5).dtype == torch.float32
    assert t.tolist() == [6, 2, 2, 2]


def test_the_probe_runs_bfloat16_with_float32_arithmetic_where_the_cpu_lacks_it(monkeypatch):
    asked: list[dict] = []
    explain = cnnviz.explain

    def spy(*args, **kwargs):
        asked.append(kwargs["params"])
        return explain(*args, **kwargs)

    monkeypatch.setattr(cnnviz, "explain", spy)
    monkeypatch.setattr("cnnviz.sweep.probe.fast_bfloat16", lambda: False)
    row = probe("test_vit", dtype=torch.bfloat16)
    methods = [k for k in row if f"{k}_note" in row]
    assert row["dtype"] == f"bfloat16 {FLOAT32_COMPUTE}"
    assert all(row[m] in ("ok", "refused") for m in methods) and row["grad_cam"] == "ok", row
    # float32 activations beside the weights: the batched methods push one sample at a time
    assert asked and all(p["batch_size"] == 1 for params in asked for p in params.values())
    assert {m for params in asked for m in params} == set(SWEEP_PARAMS)
    asked.clear()
    monkeypatch.setattr("cnnviz.sweep.probe.fast_bfloat16", lambda: True)
    assert probe("test_vit", dtype=torch.bfloat16)["dtype"] == "bfloat16"
    assert asked == [SWEEP_PARAMS]  # their own batches where the arithmetic stays bfloat16


def test_fast_bfloat16_without_onednn_reads_the_vector_unit(monkeypatch):
    def no_onednn():
        raise RuntimeError("no such operator mkldnn::_is_mkldnn_bf16_supported")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", no_onednn)
    for unit, fast in (("AVX512", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda unit=unit: unit)
        assert upcast.fast_bfloat16() is fast
