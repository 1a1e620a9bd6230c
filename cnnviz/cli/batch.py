"""``cnnviz batch``: a data set x models x methods (x metrics) into one Parquet table and a summary."""

from __future__ import annotations

import argparse
import json
import sys

from cnnviz import zoo

from .util import UsageError, parse_methods, positive_int

#: `cnnviz.batch.MAP_MODES`, repeated so that building the parser does not import pyarrow (tested).
MAP_MODES = ("full", "saliency", "none")


def add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="explain (and score) a whole data set with several models and methods into Parquet",
        description="For each image x model x method: the top-5 predictions, the map (float16, at its "
        "own resolution) and the metrics asked for, one Parquet row each in OUT/rows/, then "
        "OUT/summary.md, OUT/summary.csv and OUT/plots/. Resumable: rerun the same command and "
        "finished rows are kept. An unreadable image is recorded as an error row and skipped. "
        "Local by default (images decoded by worker processes); --ray (or RAY_ADDRESS set) runs the "
        "same work as a Ray Data job over an actor pool.",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES",
        help="folders (searched recursively), globs, image files, or a CSV/Parquet listing with "
        "columns path[,target][,box] (box: x0 y0 x1 y1 in pixels of the original image)",
    )
    p.add_argument(
        "--models", required=True, metavar="NAMES", help="comma-separated curated ids or timm names"
    )
    p.add_argument("--methods", default="all", help="comma-separated method ids, or 'all' (default)")
    p.add_argument(
        "--metrics", default="", help="comma-separated metric ids (cnnviz.evaluate); none by default"
    )
    p.add_argument(
        "--metric-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the metrics (e.g. steps=20); repeatable",
    )
    p.add_argument(
        "--out", default="cnnviz-batch", metavar="DIR", help="output folder (default cnnviz-batch)"
    )
    p.add_argument(
        "--weights",
        choices=zoo.WEIGHTS_POLICIES,
        help="hub (trained weights, the default; or CNNVIZ_WEIGHTS), random, or auto (hub, else random)",
    )
    p.add_argument(
        "--device", help="torch device (default CNNVIZ_DEVICE, else cuda when available, else cpu)"
    )
    p.add_argument(
        "--layer", metavar="NAME", help="layer for CAM-family methods (default: each model's final map)"
    )
    p.add_argument(
        "--maps",
        choices=MAP_MODES,
        default="full",
        help="full: each map as computed (default); saliency: gradient images reduced to (H, W); none",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per explain call (default 16)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local mode: processes that decode images (default 1; 0 decodes in the main process)",
    )
    p.add_argument("--threads", type=positive_int, help="torch threads per model process or Ray actor")
    p.add_argument("--ray", action="store_true", help="run on Ray (also when RAY_ADDRESS is set)")
    p.add_argument(
        "--actors", type=positive_int, help="Ray mode: actor pool size (default one per GPU, else per CPU)"
    )
    p.add_argument("--retry-errors", action="store_true", help="read again the images that failed before")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _params(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--metric-param: expected KEY=VALUE, got {item!r}")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


def run_batch_command(args: argparse.Namespace) -> int:
    try:
        from cnnviz.batch import InputError, JobMismatchError, run_batch
    except ImportError as exc:  # pyarrow missing
        raise UsageError(str(exc)) from None

    methods = parse_methods(args.methods)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UsageError("--models: empty; give curated ids or timm names separated by commas")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.workers < 0:
        raise UsageError(f"--workers: expected 0 or more, got {args.workers}")
    try:
        result = run_batch(
            args.images,
            models,
            methods,
            out=args.out,
            metrics=metrics,
            metric_params=_params(args.metric_param),
            weights=args.weights,
            device=args.device,
            layer=args.layer,
            maps=args.maps,
            batch_size=args.batch_size,
            workers=args.workers,
            use_ray=args.ray,
            actors=args.actors,
            threads=args.threads,
            retry_errors=args.retry_errors,
            progress=not args.quiet,
        )
    except (InputError, JobMismatchError, ValueError) as exc:  # names, settings, --layer, listings
        raise UsageError(str(exc)) from None
    except ImportError as exc:  # --ray without Ray installed
        raise UsageError(str(exc)) from None
    if result.errors:
        print(
            f"cnnviz batch: {result.errors} rows record an unreadable image or a bad target "
            f"(column 'error'; listed in {result.summary})",
            file=sys.stderr,
        )
    rate = f", {result.images_per_s:.2f} images/s" if result.passes else ""
    print(
        f"{result.written} new rows ({result.passes} image x model passes in {result.wall_s:.1f} s{rate}, "
        f"{result.mode} mode); {result.rows} rows in {result.out / 'rows'}; summary {result.summary}"
    )
    return 0
