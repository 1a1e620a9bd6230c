"""`cnnviz sweep [PATTERN]`: the support matrix over timm's zoo (see `cnnviz.sweep`)."""

from __future__ import annotations

import argparse
import sys

from cnnviz.methods import method_ids

from .util import UsageError, positive_int


def add_sweep(sub: argparse._SubParsersAction) -> None:
    from cnnviz.sweep import DEFAULT_CSV, Limits

    d = Limits()
    p = sub.add_parser(
        "sweep",
        help="run every method on every timm model (or those matching PATTERN) and tabulate",
        description="Build each model with random weights in its own process (timeout, memory cap), "
        "run every registered method, check the results and append one CSV row per model; "
        "resumable (names already in the CSV are skipped). Writes a Markdown summary at the end.",
    )
    p.add_argument(
        "pattern", nargs="?", metavar="PATTERN", help="glob(s) over timm.list_models(), comma-separated"
    )
    p.add_argument("--jobs", type=positive_int, default=1, help="models run at once (default 1)")
    p.add_argument(
        "--timeout", type=float, default=d.timeout, help=f"seconds per model (default {d.timeout:g})"
    )
    p.add_argument(
        "--mem-gb",
        type=float,
        default=d.mem_gb,
        help=f"GiB of address space per model above the imported libraries (default {d.mem_gb:g})",
    )
    p.add_argument(
        "--big-mem-gb",
        type=float,
        default=d.big_mem_gb,
        help=f"cap for models too large for --mem-gb; they run alone (default {d.big_mem_gb:g})",
    )
    p.add_argument(
        "--size", type=positive_int, default=d.small, help=f"preferred input side (default {d.small})"
    )
    p.add_argument(
        "--out", default=str(DEFAULT_CSV), help="CSV to write or resume (default support/sweep.csv)"
    )
    p.add_argument("--summary", help="Markdown summary (default support/summary.md, else <out>.md)")
    p.add_argument(
        "--families-smoke",
        action="store_true",
        help="one small model per timm family (support/smoke_models.txt)",
    )
    p.add_argument(
        "--retry-failed", action="store_true", help="run again the models whose row has a failed method"
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="each model as a Ray task sized by its memory estimate (also when RAY_ADDRESS is set); "
        "Ray then decides how many run at once, not --jobs",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_sweep_command(args: argparse.Namespace) -> int:
    from cnnviz.raytools import ray_requested
    from cnnviz.sweep import Limits, run_sweep, select_names

    try:
        names = select_names(args.pattern, args.families_smoke)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    limits = Limits(args.timeout, args.mem_gb, args.big_mem_gb, args.jobs, args.size)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(names), file=sys.stderr, unit="model", desc="sweep")

    def on_row(row: dict[str, object]) -> None:
        if bar is not None:
            failed = [k for k in method_ids() if row.get(k) == "failed"]
            bar.set_postfix_str(f"{row['name']}: {'failed ' + ','.join(failed) if failed else 'ok'}")
            bar.update(1)

    try:
        result = run_sweep(
            names=names,
            out=args.out,
            limits=limits,
            summary=args.summary or "auto",
            on_row=on_row,
            pattern=args.pattern or "*",  # recorded in the meta: what the CSV covers
            families_smoke=args.families_smoke,
            retry_failed=args.retry_failed,
            use_ray=ray_requested(args.ray),
        )
    except ImportError as exc:  # --ray without Ray installed
        raise UsageError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    skipped = result.selected - result.written
    print(
        f"{result.written} models probed in {result.wall_s / 60:.1f} min, {skipped} already there; "
        f"{result.rows} rows in {result.csv}; summary {result.summary}"
    )
    return 0
