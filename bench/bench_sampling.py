"""Benchmark SmoothGrad and Integrated Gradients against their floor and against captum.

The floor of SmoothGrad with n samples (and of Integrated Gradients with n steps) is n forward
passes with autograd and n plain input-gradient backward passes, run as batches: that is the
"floor" row, plain PyTorch on the same inputs in batches of the same size, nothing else. captum's
NoiseTunnel(Saliency / GuidedBackprop) and IntegratedGradients run with the same settings (n,
batch size, Gauss-Legendre steps, black baseline). Every figure is a median over rounds in which
all cases run interleaved, in one process per model, so that the ratios come from one run.

    .venv/bin/python bench/bench_sampling.py                      # resnet18, efficientnet_b0
    .venv/bin/python bench/bench_sampling.py --models resnet18 --rounds 3 --markdown

Targets (issue #12): SmoothGrad (n = 25) and IG (steps = 50) <= 1.1x their floor and no slower
than captum with the same settings.
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
from cnnviz.methods.paths import make_baseline, quadrature, standard_noise


def cases(
    model: torch.nn.Module, x: torch.Tensor, n: int, steps: int, bs: int
) -> dict[str, Callable[[], object]]:
    from timm.data import resolve_model_data_config

    with torch.no_grad():
        target = int(model(x).argmax())
    config = resolve_model_data_config(model)
    black, _ = make_baseline("black", x, config["mean"], config["std"])
    std = float(0.15 * (x.max() - x.min()))
    noise = standard_noise(n, x, 0) * std
    alphas, _ = quadrature("gausslegendre", steps)
    path = torch.cat([black + float(a) * (x - black) for a in alphas])

    def floor(inputs: torch.Tensor) -> Callable[[], object]:
        def run():  # n forward passes with autograd + n input-gradient passes, in batches
            for start in range(0, inputs.shape[0], bs):
                xi = inputs[start : start + bs].clone().requires_grad_(True)
                torch.autograd.grad(model(xi)[:, target].sum(), xi)

        return run

    def ours(method: str, **params) -> Callable[[], object]:
        return lambda: cnnviz.explain(model, x, [method], target=target, params={method: params})

    sg = {"n_samples": n, "batch_size": bs}
    out: dict[str, Callable[[], object]] = {
        f"SmoothGrad floor ({n} fwd+bwd)": floor(x + noise),
        "cnnviz smoothgrad (vanilla)": ours("smoothgrad", **sg),
        "cnnviz smoothgrad (guided)": ours("smoothgrad", base="guided_backprop", **sg),
        f"IG floor ({steps} fwd+bwd)": floor(path),
        "cnnviz integrated_gradients": ours("integrated_gradients", steps=steps, batch_size=bs),
    }
    try:
        from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Saliency

        def captum_nt(cls, **kw):
            def run():
                torch.manual_seed(0)
                NoiseTunnel(cls(model)).attribute(
                    x.clone(), nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=bs,
                    stdevs=std, target=target, **kw,
                )  # fmt: skip
                model.zero_grad(set_to_none=True)

            return run

        def captum_ig():
            IntegratedGradients(model).attribute(
                x.clone(), black, target=target, n_steps=steps, method="gausslegendre", internal_batch_size=bs
            )
            model.zero_grad(set_to_none=True)

        out["captum NoiseTunnel(Saliency)"] = captum_nt(Saliency, abs=False)
        out["captum NoiseTunnel(GuidedBackprop)"] = captum_nt(GuidedBackprop)
        out["captum IntegratedGradients"] = captum_ig
    except ImportError:
        print("captum not installed: its rows are left out", file=sys.stderr)
    return out


RATIOS = {  # (row, against) -> label
    ("cnnviz smoothgrad (vanilla)", "SmoothGrad floor"): "smoothgrad / floor",
    ("cnnviz smoothgrad (vanilla)", "captum NoiseTunnel(Saliency)"): "smoothgrad / captum",
    ("cnnviz smoothgrad (guided)", "SmoothGrad floor"): "smoothgrad guided / floor",
    ("cnnviz smoothgrad (guided)", "captum NoiseTunnel(GuidedBackprop)"): "smoothgrad guided / captum",
    ("cnnviz integrated_gradients", "IG floor"): "integrated_gradients / floor",
    ("cnnviz integrated_gradients", "captum IntegratedGradients"): "integrated_gradients / captum",
}


def bench_model(name: str, rounds: int, size: int, n: int, steps: int, bs: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    cnnviz.inspect(model)  # the anatomy is cached per model, as in an app
    runs = cases(model, x, n, steps, bs)
    med = interleaved_medians(runs, rounds)
    out = {f"{k} [s]": v for k, v in med.items()}
    for (row, against), label in RATIOS.items():
        ref = next((v for k, v in med.items() if k.startswith(against)), None)
        if row in med and ref:
            out[label] = med[row] / ref
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet18,efficientnet_b0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=25, help="SmoothGrad's noisy copies")
    parser.add_argument("--steps", type=int, default=50, help="Integrated Gradients' steps")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs per batch, for every case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    models = args.models.split(",")
    if len(models) == 1:
        results = {
            models[0]: bench_model(models[0], args.rounds, args.size, args.n, args.steps, args.batch_size)
        }
    else:  # a fresh process per model: one model's allocator state must not skew the next
        results = {}
        for m in models:
            cmd = [sys.executable, __file__, "--models", m, "--json", "--rounds", str(args.rounds)]
            cmd += ["--size", str(args.size), "--n", str(args.n), "--steps", str(args.steps)]
            cmd += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[m] = json.loads(done.stdout.strip().splitlines()[-1])[m]
    if args.json:
        print(json.dumps(results))
        return 0
    names = list(results)
    rows = list(next(iter(results.values())))
    if args.markdown:
        print("| | " + " | ".join(names) + " |")
        print("| --- |" + " ---: |" * len(names))
        for r in rows:
            cells = [results[n].get(r, float("nan")) for n in names]
            fmt = (lambda v: f"{v:.2f}") if r.endswith("[s]") else (lambda v: f"{v:.2f}x")
            print(f"| {r} | " + " | ".join(fmt(v) for v in cells) + " |")
    else:
        for n in names:
            print(n)
            for r in rows:
                print(f"  {r:45s} {results[n][r]:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
