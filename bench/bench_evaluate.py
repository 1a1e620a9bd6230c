"""Benchmark `cnnviz.evaluate` against the forwards it cannot avoid, and against torchcam.

    .venv/bin/python bench/bench_evaluate.py                     # efficientnet_lite0 shape, random weights
    .venv/bin/python bench/bench_evaluate.py --model resnet50 --rounds 5

Targets (issue #13):
* deletion + insertion with 20 steps for one map (about 40 forwards) <= 1.2x those forwards run as one
  batch, measured in the same run, and faster than torchcam's `DeletionInsertionMetric` on the same work;
* the sanity check with 5 steps and 3 methods <= 5x one `explain` call of those methods plus the copy
  (also measured with one copy of the model, as before the lanes, for comparison).

It also measures the floor under the check's lanes on this machine: one-thread explains in two
processes at once (no GIL, no allocator shared), two rounds of them plus one two-thread explain and
the copy, against the same budget, before the check scores or draws anything.

Timings are medians over rounds, interleaved round by round so that a shared machine's noise falls
on every case alike. Weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cnnviz
import cnnviz.evaluate as ev

SANITY_METHODS = ["grad_cam", "vanilla_gradient", "guided_backprop"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    _, h, w = model.pretrained_cfg["input_size"]
    x = torch.randn(1, 3, h, w)
    ex = cnnviz.explain(model, x, ["grad_cam"])
    target = ex.targets
    cam = ex["grad_cam"].raw
    # the same 40 images deletion + insertion score (20 + 20 points with RISE's blurred start)
    curves = ev.deletion_insertion(model, x, cam, target, steps=20, batch_size=64)
    n_images = 2 * (curves.fractions.numel() - 1)
    plain = torch.randn(n_images, 3, h, w)

    def forwards():
        with torch.inference_mode():
            model(plain)

    cases = {
        "forwards (one batch)": forwards,
        "deletion+insertion": lambda: ev.deletion_insertion(model, x, cam, target, steps=20, batch_size=64),
        "deletion+insertion (zero start)": lambda: ev.deletion_insertion(
            model, x, cam, target, steps=20, batch_size=64, insertion_start="zero"
        ),
    }
    try:
        from torchcam.methods import GradCAM
        from torchcam.metrics import DeletionInsertionMetric

        layer = [n for n, _ in model.named_modules() if n][-1]
        feats_layer = _final_layer(model, x)
        extractor = GradCAM(model, target_layer=feats_layer)

        def torchcam_run():
            metric = DeletionInsertionMetric(
                extractor, partial(torch.softmax, dim=-1), steps=20, batch_size=64
            )
            metric.update(x)

        def ours_same_work():  # torchcam's update also computes its CAM: so do we
            e = cnnviz.explain(model, x, ["grad_cam"])
            # like torchcam, take the unperturbed score from the explained forward (as
            # cnnviz.evaluate.score does), not from one more forward
            original = e.logits.float().softmax(-1).gather(1, e.targets[:, None])[:, 0]
            ev.deletion_insertion(
                model,
                x,
                e["grad_cam"].raw,
                e.targets,
                steps=20,
                batch_size=64,
                insertion_start="zero",
                original=original,
            )

        cases["torchcam DeletionInsertionMetric (incl. its CAM)"] = torchcam_run
        cases["cnnviz explain + deletion+insertion (same work)"] = ours_same_work
        del layer
    except ImportError:
        extractor = None
    cases["explain (3 methods)"] = lambda: cnnviz.explain(model, x, SANITY_METHODS)
    ex3 = cnnviz.explain(model, x, SANITY_METHODS)
    cases["sanity check (5 steps, 3 methods)"] = lambda: ev.model_randomization(
        model, x, SANITY_METHODS, explanation=ex3, steps=5
    )

    def one_copy():  # the check as it ran before the lanes: one copy, the explains one by one
        plan = ev.sanity.lane_plan
        ev.sanity.lane_plan = lambda module, x, steps: (1, torch.get_num_threads())
        try:
            ev.model_randomization(model, x, SANITY_METHODS, explanation=ex3, steps=5)
        finally:
            ev.sanity.lane_plan = plan

    cases["sanity check, one copy (no lanes)"] = one_copy
    cases["deep copy of the model"] = lambda: ev.sanity.private_copy(model)
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    if extractor is not None:
        extractor.remove_hooks()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["forwards (one batch)"]
    print(
        f"{args.model}, input {h}x{w}, {torch.get_num_threads()} thread(s), {args.rounds} rounds, "
        f"{n_images} perturbed images per map"
    )
    print("| case | median s | ratio |")
    print("| --- | --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {v / base:.2f}x forwards |")
    print()
    print(
        f"deletion+insertion / its forwards as one batch: {med['deletion+insertion'] / base:.2f}x "
        "(target <= 1.2x)"
    )
    if extractor is not None:
        ratio = (
            med["cnnviz explain + deletion+insertion (same work)"]
            / med["torchcam DeletionInsertionMetric (incl. its CAM)"]
        )
        print(f"cnnviz / torchcam on the same work: {ratio:.2f}x (target < 1)")
    budget = 5 * med["explain (3 methods)"] + med["deep copy of the model"]
    print(
        f"sanity check / (5 x explain + copy): {med['sanity check (5 steps, 3 methods)'] / budget:.2f} "
        "(target <= 1)"
    )
    lanes = ev.sanity.lane_plan(model, x, 5)
    print(
        f"  with one copy: {med['sanity check, one copy (no lanes)'] / budget:.2f}; "
        f"lanes here: {lanes[0]} copies x {lanes[1]} thread(s)"
    )
    if lanes[0] == 2:
        alone = one_thread_explains(args.model, tuple(x.shape), args.rounds, at_once=1)
        paired = one_thread_explains(args.model, tuple(x.shape), args.rounds, at_once=2)
        floor = 2 * paired + med["explain (3 methods)"] + med["deep copy of the model"]
        print(
            f"  one-thread explain: {alone:.3f} s alone, {paired:.3f} s with another process doing "
            f"the same ({2 * alone / paired:.2f}x the work of one done at once; two threads on one "
            f"explain: {alone / med['explain (3 methods)']:.2f}x)"
        )
        print(
            f"  the lanes' floor (2 rounds of two one-thread explains at once + one two-thread "
            f"explain + the copy, nothing scored): {floor / budget:.2f}x the budget"
        )
    return 0


def _explain_in_child(model_name: str, shape: tuple[int, ...], rounds: int, start, results) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).eval()
    x = torch.randn(shape)
    cnnviz.explain(model, x, SANITY_METHODS)  # warm up
    start.wait()
    results.put(
        statistics.median(timed(lambda: cnnviz.explain(model, x, SANITY_METHODS)) for _ in range(rounds))
    )


def one_thread_explains(model_name: str, shape: tuple[int, ...], rounds: int, at_once: int) -> float:
    """Median seconds of a one-thread explain with `at_once` processes explaining together (the
    slowest process's): what a lane could get at best, with nothing shared but the hardware."""
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(at_once), ctx.Queue()
    procs = [
        ctx.Process(target=_explain_in_child, args=(model_name, shape, 3 * rounds, start, results))
        for _ in range(at_once)
    ]
    for proc in procs:
        proc.start()
    try:
        return max(results.get(timeout=600) for _ in procs)
    finally:
        for proc in procs:
            proc.join()


def _final_layer(model: torch.nn.Module, x: torch.Tensor) -> str:
    """Name of the last module whose output is forward_features' map (torchcam needs a module)."""
    with torch.no_grad():
        feats = model.forward_features(x)
    found = []
    hooks = [
        m.register_forward_hook(
            lambda mod, i, o, name=name: (
                found.append(name)
                if isinstance(o, torch.Tensor) and o.shape == feats.shape and torch.equal(o, feats)
                else None
            )
        )
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for hk in hooks:
            hk.remove()
    return found[-1]


if __name__ == "__main__":
    sys.exit(main())
