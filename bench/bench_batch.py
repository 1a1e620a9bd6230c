"""Throughput of `cnnviz batch`: a plain loop of `explain` calls, local mode, and Ray mode.

The same JPEG images (crops and flips of examples/*.jpg, written to a temporary folder so that
every mode decodes real files) go through one model with the six methods, three ways:

- ``loop``: ``for path in images: model.explain(Image.open(path), methods)``, one image a call,
  torch's default threads, decoding in the same process;
- ``local``: ``run_batch(...)``, the default mode: a `DataLoader` worker decodes, batches of 16;
- ``ray``: ``run_batch(..., use_ray=True)`` on a local Ray with this machine's CPUs (Ray's plan:
  one actor per CPU, one torch thread each, decoding fused into the actors).

Each mode runs on N and 2N images, alternating modes round by round on a shared machine, and the
best of the rounds counts. ``end-to-end`` is 2N images / wall time of the whole call (model
loading, Ray Data's start and its actors included; ``ray.init`` itself is timed apart);
``marginal`` is N / (t(2N) - t(N)), the throughput once the fixed costs are paid, which is what a
data-set job sees. Ray's overhead is 1 - ray / local on each measure.

    .venv/bin/python bench/bench_batch.py                      # resnet18, 96 and 192 images, 2 rounds
    .venv/bin/python bench/bench_batch.py --costs resnet50,convnext_tiny,efficientnet_b0
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

SIX = ("vanilla_gradient", "deconvnet", "guided_backprop", "cam", "grad_cam", "guided_grad_cam")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def make_images(folder: Path, n: int) -> list[str]:
    """`n` JPEGs: crops (and mirror images) of the examples, so no two files are the same."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 0.95)), int(h * rng.uniform(0.6, 0.95))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x0, y0, x0 + cw, y0 + ch))
        if i % 2:
            crop = ImageOps.mirror(crop)
        path = folder / f"img{i:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


def run_loop(model_name: str, paths: list[str]) -> float:
    import cnnviz

    model = cnnviz.load_model(model_name, weights="random")
    t0 = time.perf_counter()
    for path in paths:
        model.explain(Image.open(path), methods=SIX, strict=False)
    return time.perf_counter() - t0


def run_mode(
    mode: str, model_name: str, paths: list[str], out: Path, metrics: tuple[str, ...] = ()
) -> tuple[float, dict]:
    from cnnviz.batch import run_batch

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = run_batch(
        paths,
        [model_name],
        SIX,
        out,
        metrics=metrics,
        weights="random",
        use_ray=mode == "ray",
        progress=False,
        summary=False,
    )
    wall = time.perf_counter() - t0
    assert result.errors == 0 and result.passes == len(paths)
    rows_bytes = sum(p.stat().st_size for p in (out / "rows").glob("*.parquet"))
    return wall, {"parquet_bytes_per_image": rows_bytes / len(paths)}


def throughput(model_name: str, n: int, rounds: int, work: Path) -> dict:
    import ray

    from cnnviz.raytools import worker_env

    paths = make_images(work / "images", 2 * n)
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": worker_env()})
    ray_init_s = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    times: dict[tuple[str, int], list[float]] = {}
    extra = {}
    try:
        for r in range(rounds):
            for mode in ("loop", "local", "ray"):
                for size in (n, 2 * n):
                    subset = paths[:size]
                    if mode == "loop":
                        wall = run_loop(model_name, subset)
                    else:
                        wall, info = run_mode(mode, model_name, subset, work / f"out-{mode}")
                        extra[mode] = info
                    times.setdefault((mode, size), []).append(wall)
                    print(f"round {r}: {mode:5s} {size:3d} images {wall:7.1f} s", flush=True)
    finally:
        ray.shutdown()
    best = {k: min(v) for k, v in times.items()}
    report = {"model": model_name, "n": n, "rounds": rounds, "ray_init_s": round(ray_init_s, 1), "modes": {}}
    for mode in ("loop", "local", "ray"):
        t1, t2 = best[(mode, n)], best[(mode, 2 * n)]
        report["modes"][mode] = {
            "t_n_s": round(t1, 2),
            "t_2n_s": round(t2, 2),
            "end_to_end_ips": round(2 * n / t2, 3),
            "marginal_ips": round(n / (t2 - t1), 3) if t2 > t1 else None,
            **extra.get(mode, {}),
        }
    m = report["modes"]
    for measure in ("end_to_end_ips", "marginal_ips"):
        if m["ray"][measure] and m["local"][measure]:
            report[f"ray_overhead_{measure}"] = round(1 - m["ray"][measure] / m["local"][measure], 3)
    return report


def per_image_costs(models: list[str], n: int, work: Path, metrics: tuple[str, ...] = ()) -> list[dict]:
    """Local mode's seconds per image and Parquet bytes per image for each model (six methods,
    and `metrics` with their default parameters when given)."""
    from cnnviz.batch import read_results

    paths = make_images(work / "images-costs", n)
    rows = []
    for name in models:
        run_mode("local", name, paths[: max(4, n // 4)], work / f"warm-{name}")  # load, warm up
        wall, info = run_mode("local", name, paths, work / f"cost-{name}", metrics)
        table = read_results(work / f"cost-{name}", columns=["explain_s", "metrics_s"]).to_pylist()
        rows.append(
            {
                "model": name,
                "images": n,
                "metrics": list(metrics),
                "s_per_image": round(wall / n, 3),
                "explain_s_per_image": round(float(np.mean([r["explain_s"] for r in table])), 3),
                "metrics_s_per_image": round(float(np.mean([r["metrics_s"] for r in table])), 3),
                "parquet_kb_per_image": round(info["parquet_bytes_per_image"] / 1024, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=96, help="images in the small run (the large has 2n)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--costs", default="", help="comma-separated models: per-image cost in local mode")
    parser.add_argument("--cost-images", type=int, default=16)
    parser.add_argument("--cost-metrics", default="", help="comma-separated metrics for --costs")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args()
    report = {"torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="cnnviz-bench-batch-") as tmp:
        work = Path(tmp)
        if not args.skip_throughput:
            report["throughput"] = throughput(args.model, args.n, args.rounds, work)
        if args.costs:
            metrics = tuple(m for m in args.cost_metrics.split(",") if m)
            report["costs"] = per_image_costs(args.costs.split(","), args.cost_images, work, metrics)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
