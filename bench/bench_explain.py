"""Benchmark `cnnviz.explain` against a bare forward pass, and against captum / pytorch-grad-cam.

Every figure is a ratio to the median time of ``model(x)`` under ``torch.inference_mode()``
measured in the same run, on the same machine, interleaved round by round, so that the
noise of a shared machine cancels as far as it can. Each model is measured in a fresh process
(the allocator state that a large model leaves behind slowed the next model's gradient passes by
up to 5%). The "autograd" row is the floor any implementation pays: one forward with autograd
and three plain input-gradient backward passes.

    .venv/bin/python bench/bench_explain.py                     # resnet50, convnext_tiny, efficientnet_b0
    .venv/bin/python bench/bench_explain.py --models resnet50 --rounds 7 --markdown

Targets (issue #2): cam <= 1.05x, grad_cam <= 1.1x, all six seed methods in one call <= 5x;
(issue #12) Grad-CAM with all its nearly-free relatives in one call <= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from collections.abc import Callable

import timm
import torch
from _timing import interleaved_medians

import cnnviz

SIX = ["vanilla_gradient", "deconvnet", "guided_backprop", "cam", "grad_cam", "guided_grad_cam"]
CAM_FAMILY = ["grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam", "eigen_cam", "eigen_grad_cam"]


def _final_module(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The last module whose output is the forward_features map (for the reference libraries)."""
    with torch.no_grad():
        feats = model.forward_features(x)
    found = None
    hooks = []

    def hook(module, inputs, output):
        nonlocal found
        if isinstance(output, torch.Tensor) and output.shape == feats.shape and torch.equal(output, feats):
            found = module

    for m in model.modules():
        if m is not model:
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return found


def cases(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    target = int(model(x).argmax())

    def autograd_floor():
        # What any implementation pays at least: one forward with autograd and three
        # input-gradient backward passes (plain autograd, no rules, nothing recorded).
        xi = x.clone().requires_grad_(True)
        score = model(xi)[0, target]
        for i in range(3):
            torch.autograd.grad(score, xi, retain_graph=i < 2)

    out: dict[str, Callable[[], object]] = {
        "autograd: forward + 3 input-gradient passes": autograd_floor,
        "cnnviz cam": lambda: cnnviz.explain(model, x, ["cam"], strict=False),
        "cnnviz grad_cam": lambda: cnnviz.explain(model, x, ["grad_cam"]),
        "cnnviz vanilla_gradient": lambda: cnnviz.explain(model, x, ["vanilla_gradient"]),
        "cnnviz all six (one call)": lambda: cnnviz.explain(model, x, SIX, strict=False),
        "cnnviz Grad-CAM + 6 relatives (one call)": lambda: cnnviz.explain(model, x, CAM_FAMILY),
    }
    try:
        from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, LayerGradCam, Saliency

        layer = _final_module(model, x)

        def captum_five():
            xi = x.clone().requires_grad_(True)
            Saliency(model).attribute(xi, target=target, abs=False)
            Deconvolution(model).attribute(xi, target=target)
            GuidedBackprop(model).attribute(xi, target=target)
            LayerGradCam(model, layer).attribute(xi, target=target, relu_attributions=True)
            GuidedGradCam(model, layer).attribute(xi, target=target)
            model.zero_grad(set_to_none=True)

        out["captum LayerGradCam"] = lambda: (
            LayerGradCam(model, layer).attribute(x.clone(), target=target, relu_attributions=True),
            model.zero_grad(set_to_none=True),
        )
        out["captum five methods (5 calls)"] = captum_five
    except ImportError:
        print("captum not installed: its rows are left out", file=sys.stderr)
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer = _final_module(model, x)

        def pgc():
            with GradCAM(model, [layer]) as cam:
                cam(x, [ClassifierOutputTarget(target)])
            model.zero_grad(set_to_none=True)

        out["pytorch-grad-cam GradCAM"] = pgc
    except ImportError:
        print("grad-cam not installed: its row is left out", file=sys.stderr)
    return out


def bench_model(name: str, rounds: int, size: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    cnnviz.inspect(model)  # the anatomy is cached per model; inspect once, as an app would

    def forward():
        with torch.inference_mode():
            model(x)

    runs = {"forward (inference_mode)": forward, **cases(model, x)}
    med = interleaved_medians(runs, rounds)
    base = med["forward (inference_mode)"]
    return {"base_ms": base * 1e3, **{k: v / base for k, v in med.items()}}


def _in_fresh_process(model: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--models", model, "--rounds", str(args.rounds), "--json"]
    cmd += ["--size", str(args.size), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])[model]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet50,convnext_tiny,efficientnet_b0")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every model in this process (default: a fresh process per model, so that "
        "one model's allocator state, left by the models before it, does not skew the next)",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one model's results
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    models = args.models.split(",")
    if args.in_process or len(models) == 1:
        results = {m: bench_model(m, args.rounds, args.size) for m in models}
    else:
        results = {m: _in_fresh_process(m, args) for m in models}
    if args.json:
        print(json.dumps(results))
        return 0
    rows = [k for k in next(iter(results.values())) if k != "base_ms"]
    names = list(results)
    if args.markdown:
        print("| x bare forward | " + " | ".join(names) + " |")
        print("| --- |" + " ---: |" * len(names))
        print("| forward, ms (median) | " + " | ".join(f"{results[n]['base_ms']:.0f}" for n in names) + " |")
        for r in rows[1:]:
            print(f"| {r} | " + " | ".join(f"{results[n].get(r, float('nan')):.2f}x" for n in names) + " |")
    else:
        for n in names:
            print(f"{n}: forward {results[n]['base_ms']:.1f} ms")
            for r in rows[1:]:
                print(f"  {r:34s} {results[n][r]:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
