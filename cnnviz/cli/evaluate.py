"""``cnnviz evaluate``: judge the maps of a model on images: scores (CSV), curves (PNG), a summary."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

import cnnviz.evaluate as ev
from cnnviz import render, zoo

from .explain import _out_dirs, expand_images
from .util import UsageError, fail, load, parse_methods, positive_int

DEFAULT_METRICS = ("deletion", "insertion", "average_drop", "increase_in_confidence")
SCORES = "scores.csv"
SUMMARY = "summary.csv"
SETTINGS = "evaluate.json"


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    metrics = "; ".join(
        f"{m.id} ({m.direction} is better{', needs --boxes' if m.needs_box else ''})"
        for m in ev.list_metrics()
    )
    p = sub.add_parser(
        "evaluate",
        help="judge the maps: deletion/insertion, average drop, pointing game... (CSV, PNG curves, summary)",
        description="Explain each image with one model and judge every map with the chosen metrics. OUT gets "
        f"{SCORES} (one row per image and method), <stem>/curves.png (deletion and insertion curves, areas "
        f"in the legend) and, for several images, {SUMMARY} (mean and 95%% bootstrap interval per method). "
        "A run that stops can be resumed: images already in the CSV are skipped.",
        epilog=f"Metrics: {metrics}. Papers and formulas: cnnviz metrics.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument(
        "--model", required=True, metavar="NAME", help="a curated id (cnnviz models) or any timm name"
    )
    p.add_argument("--methods", default="all", help="comma-separated method ids, or 'all' (default)")
    p.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated metric ids (default {','.join(DEFAULT_METRICS)})",
    )
    p.add_argument(
        "--target", type=int, metavar="N", help="class index to explain (default: each image's top-1)"
    )
    p.add_argument("--layer", metavar="NAME", help="layer for CAM-family methods (default: the final map)")
    p.add_argument("--steps", type=_steps, default=20, help="deletion/insertion steps, >= 2 (default 20)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per forward (default 8 on the CPU, where small batches are faster, 32 on a GPU)",
    )
    p.add_argument(
        "--boxes",
        type=Path,
        metavar="CSV",
        help="object boxes for pointing_game/energy_in_box: a CSV with columns image,x0,y0,x1,y1 in the "
        "original image's pixels (image = file name)",
    )
    p.add_argument("--out", default="cnnviz-eval", metavar="DIR", help="output folder (default cnnviz-eval)")
    p.add_argument(
        "--weights",
        choices=zoo.WEIGHTS_POLICIES,
        help=f"weights policy, one of {', '.join(zoo.WEIGHTS_POLICIES)} (default CNNVIZ_WEIGHTS)",
    )
    p.add_argument(
        "--device", help="torch device (default CNNVIZ_DEVICE, else cuda when available, else cpu)"
    )
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming a run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_metrics(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "metrics",
        help="list the evaluation metrics (the registry): papers, formulas, direction, cost",
        description="Metrics: " + "; ".join(f"{m.id} ({m.label})" for m in ev.list_metrics()) + ".",
    )


def run_metrics(args: argparse.Namespace) -> int:
    for m in ev.list_metrics():
        box = ", needs a box or mask" if m.needs_box else ""
        families = (
            ""
            if m.families == frozenset({"cam", "gradient"})
            else f", {'/'.join(sorted(m.families))} maps only"
        )
        print(f"{m.id}  [{m.kind}]  {m.label}: {m.direction} is better{box}{families}")
        print(f"    {m.summary}")
        print(f"    value: {m.unit}; cost: {m.cost}")
        print(f"    {m.paper}  {m.url}")
    return 0


def _steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 2 (a curve needs interior points), got {value}"
        )
    return value


def parse_metrics(text: str) -> tuple[str, ...]:
    try:
        return tuple(m.id for m in ev.resolve_metrics(text))
    except ValueError as exc:
        raise UsageError(f"--metrics: {exc}") from None


def read_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """image file name -> (x0, y0, x1, y1) in the original image's pixels."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise UsageError(f"--boxes: cannot read {path}: {exc.strerror}") from None
    need = {"image", "x0", "y0", "x1", "y1"}
    if not rows or not need <= set(rows[0]):
        raise UsageError(f"--boxes: {path} needs a header with columns {','.join(sorted(need))}")
    out: dict[str, tuple[float, float, float, float]] = {}
    for i, row in enumerate(rows, start=2):
        try:
            x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
            out[Path(row["image"]).name] = (x0, y0, x1, y1)
        except (TypeError, ValueError):
            raise UsageError(f"--boxes: line {i} of {path}: x0,y0,x1,y1 must be numbers") from None
    return out


def box_in_input(model: zoo.Model, image: Image.Image, box, name: str) -> torch.Tensor:
    """A box in the original image's pixels, in the model input's pixels (after resize and crop)."""
    left, top, right, bottom = model.seen_box(image)
    _, h, w = model.data_config["input_size"]
    sx, sy = w / (right - left), h / (bottom - top)
    x0, y0, x1, y1 = box
    mapped = [(x0 - left) * sx, (y0 - top) * sy, (x1 - left) * sx, (y1 - top) * sy]
    clipped = [
        min(max(mapped[0], 0), w),
        min(max(mapped[1], 0), h),
        min(max(mapped[2], 0), w),
        min(max(mapped[3], 0), h),
    ]
    if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
        raise ValueError(f"{name}: the box {tuple(box)} lies outside the part of the image the model sees")
    return torch.tensor([clipped])


def _settings(args, model: zoo.Model, methods, metrics) -> dict:
    return {
        "model": model.name,
        "weights_source": model.weights_source,
        "methods": list(methods),
        "metrics": list(metrics),
        "steps": args.steps,
        "target": args.target,
        "layer": args.layer,
    }


def _weights_text(model: zoo.Model) -> str:
    return (
        "RANDOM (untrained: the scores say nothing about the methods)"
        if model.random_weights
        else model.weights_source
    )


def _load_done(out: Path, settings: dict, fresh: bool) -> list[dict]:
    path, spath = out / SCORES, out / SETTINGS
    if fresh or not path.exists():
        return []
    try:
        previous = json.loads(spath.read_text())
    except (OSError, ValueError):
        previous = None
    if previous != settings:
        raise UsageError(
            f"--out: {out} holds results of other settings ({spath.name}); use another folder or --fresh"
        )
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def bootstrap_interval(values: list[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% percentile-bootstrap interval."""
    t = torch.tensor(values, dtype=torch.float64)
    mean = float(t.mean())
    if t.numel() < 2:
        return mean, float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, t.numel(), (rounds, t.numel()), generator=gen)
    means = t[idx].mean(1)
    return mean, float(means.quantile(0.025)), float(means.quantile(0.975))


def summarize(rows: list[dict], methods, metrics) -> list[dict]:
    out = []
    for m in methods:
        for k in metrics:
            vals = [float(r[k]) for r in rows if r["method"] == m and r.get(k) not in (None, "")]
            if not vals:
                continue
            mean, low, high = bootstrap_interval(vals)
            metric = ev.get_metric(k)
            out.append(
                {
                    "method": m,
                    "metric": k,
                    "direction": metric.direction,
                    "images": len(vals),
                    "mean": f"{mean:.6g}",
                    "ci95_low": f"{low:.6g}",
                    "ci95_high": f"{high:.6g}",
                }
            )
    return out


def run_evaluate(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods)
    metrics = parse_metrics(args.metrics)
    images = expand_images(args.images)
    needs_box = [k for k in metrics if ev.get_metric(k).needs_box]
    boxes = read_boxes(args.boxes) if args.boxes else None
    if needs_box and boxes is None:
        raise UsageError(f"--metrics: {', '.join(needs_box)} need the objects' boxes: give --boxes CSV")
    model = load(args.model, args.weights, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args, model, methods, metrics)
    rows = _load_done(out, settings, args.fresh)
    (out / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    if model.random_weights:
        print(f"cnnviz evaluate: note: {model.display_name}: {ev.RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    done = {r["image"] for r in rows}
    columns = ["image", "method", "target", "class_name", "probability", *metrics, "weights", "seconds"]
    from tqdm import tqdm

    failures, reported = 0, False
    todo = [(p, d) for p, d in zip(images, _out_dirs(images, out), strict=True) if str(p) not in done]
    if len(todo) < len(images):
        print(
            f"cnnviz evaluate: resuming: {len(images) - len(todo)} image(s) already in {out / SCORES}",
            file=sys.stderr,
        )
    bar = tqdm(todo, file=sys.stderr, unit="image", desc="evaluate", disable=args.quiet)
    for image_path, out_dir in bar:
        try:
            with Image.open(image_path) as opened:
                opened.load()
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            failures += 1
            bar.write(f"cnnviz evaluate: error: {image_path}: cannot read the image ({exc})", file=sys.stderr)
            continue
        box = None
        if boxes is not None and needs_box:
            if image_path.name not in boxes:
                failures += 1
                bar.write(f"cnnviz evaluate: error: {image_path}: no box in {args.boxes}", file=sys.stderr)
                continue
            try:
                box = box_in_input(model, image, boxes[image_path.name], image_path.name)
            except ValueError as exc:
                failures += 1
                bar.write(f"cnnviz evaluate: error: {exc}", file=sys.stderr)
                continue
        x = model.preprocess(image)
        try:
            ex = model.explain(x, methods=methods, target=args.target, layer=args.layer, strict=False)
            result = ev.evaluate(
                model, x, ex, metrics, box, steps=args.steps, batch_size=args.batch_size, strict=False
            )
        except ValueError as exc:  # a wrong --target or --layer: the same for every image
            raise UsageError(str(exc)) from None
        if not reported:
            reported = True
            for mid, reason in ex.refused.items():
                bar.write(f"cnnviz evaluate: {mid} does not apply to {model.name}: {reason}", file=sys.stderr)
            for mid, why in result.refused.items():
                bar.write(
                    f"cnnviz evaluate: {mid}: not scored by {', '.join(why)} (not defined for its maps)",
                    file=sys.stderr,
                )
            if not ex.attributions:
                bar.close()
                return fail("evaluate", f"none of the requested methods applies to {model.name}", 2)
        target = int(ex.targets[0])
        for mid, per_metric in result.scores.items():
            row = {
                "image": str(image_path),
                "method": mid,
                "target": target,
                "class_name": model.class_names[target]
                if target < len(model.class_names)
                else f"class {target}",
                "probability": f"{float(ex.probabilities[0, target]):.6g}",
                "weights": _weights_text(model),
                "seconds": f"{result.seconds:.3f}",
            }
            row.update({k: f"{float(v[0]):.6g}" for k, v in per_metric.items()})
            rows.append(row)
        if result.curves:
            out_dir.mkdir(parents=True, exist_ok=True)
            title = f"{image_path.name} - {model.display_name} - class {row['class_name']}"
            render.curves_image(result.curves, title, random_weights=model.random_weights).save(
                out_dir / "curves.png"
            )
        _write_csv(out / SCORES, rows, columns)
    bar.close()
    summary = summarize(rows, methods, metrics)
    if len({r["image"] for r in rows}) > 1 and summary:
        _write_csv(out / SUMMARY, summary, list(summary[0]))
        print(_summary_table(summary, model))
    print(f"wrote {out / SCORES} ({len(rows)} rows)")
    return 1 if failures else 0


def _summary_table(summary: list[dict], model: zoo.Model) -> str:
    lines = [f"model {model.display_name}; mean [95% bootstrap interval] over images"]
    if model.random_weights:
        lines.append("RANDOM WEIGHTS: these numbers say nothing about the methods")
    width = max(len(r["method"]) for r in summary)
    for r in summary:
        better = "lower" if r["direction"] == "lower" else "higher"
        lines.append(
            f"  {r['method']:<{width}}  {r['metric']:<22} {float(r['mean']):8.4f} "
            f"[{float(r['ci95_low']):.4f}, {float(r['ci95_high']):.4f}]  n={r['images']} ({better} is better)"
        )
    return "\n".join(lines)
