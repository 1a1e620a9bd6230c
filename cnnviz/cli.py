"""The ``cnnviz`` command line: explain images, list and inspect models, list methods, sweep timm.

Every choice (method ids, their descriptions) comes from the method registry; a wrong name gets
close matches and exit code 2 with one line on stderr, never a traceback.

Exit codes: 0 success; 1 a run-time failure (weights unavailable, an unreadable image);
2 a usage error, or every requested method refused for the model.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence

import cnnviz
from cnnviz import zoo
from cnnviz.methods import method_ids

from .cli_explain import add_explain, run_explain
from .cli_util import UsageError, fail
from .types import Anatomy

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnviz",
        description="See what a CNN (any timm model) looks at: gradients, deconvnet, guided backprop, "
        "CAM, Grad-CAM, guided Grad-CAM.",
        epilog="Run 'cnnviz COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"cnnviz {cnnviz.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_explain(sub)
    _add_models(sub)
    _add_inspect(sub)
    sub.add_parser("methods", help="list the attribution methods (the registry)", description=_methods_text())
    _add_sweep(sub)
    return parser


def _methods_text() -> str:
    return "Methods: " + "; ".join(f"{m.id} ({m.label})" for m in cnnviz.list_methods()) + "."


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="the curated zoo, or timm models matching a pattern, with layout and CAM exactness",
        description="Without PATTERN: the curated zoo (models.yaml). With PATTERN (a glob such as "
        "'resnet1*'): timm models matching it. Each is built with random weights and inspected.",
    )
    p.add_argument("pattern", nargs="?", metavar="PATTERN", help="glob over timm.list_models()")
    p.add_argument("--limit", type=_positive_int, default=20, help="inspect at most N matches (default 20)")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="the anatomy of one model and which methods apply",
        description="Print the anatomy of one model (final map, layout, head, CAM exactness, stages) and, "
        "for each method, whether it applies or why not.",
    )
    p.add_argument("name", metavar="NAME", help="a curated id or any timm model name")
    p.add_argument(
        "--weights",
        choices=zoo.WEIGHTS_POLICIES,
        default="random",
        help="weights to build it with (default random: the anatomy does not depend on them)",
    )


def _add_sweep(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--jobs", type=_positive_int, default=1, help="models run at once (default 1)")
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
        "--size", type=_positive_int, default=d.small, help=f"preferred input side (default {d.small})"
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ------------------------------------------------------------------------------------ commands


def run_methods(args: argparse.Namespace) -> int:
    for m in cnnviz.list_methods():
        print(f"{m.id}  [{m.family}]  {m.label}")
        print(f"    {m.summary}")
        print(f"    cost: {m.cost}; requires: {', '.join(m.requires)}")
        print(f"    {m.paper}  {m.url}")
    return 0


def applicability(anatomy: Anatomy) -> list[tuple[str, str | None]]:
    """(method id, reason it does not apply or None) for every method, at the default layer."""
    final = anatomy.source == "forward_features"
    return [(m.id, m.refusal(anatomy, final)) for m in cnnviz.list_methods()]


def run_inspect(args: argparse.Namespace) -> int:
    model = load(args.name, args.weights)
    print(f"model        : {model.display_name} [{model.name}]")
    print(model.anatomy.summary())
    print("methods      :")
    for mid, reason in applicability(model.anatomy):
        print(f"  {mid:<18} " + ("applies" if reason is None else f"no: {reason}"))
    return 0


def _describe(anatomy: Anatomy) -> tuple[str, str, str]:
    shape = "x".join(str(v) for v in anatomy.shape)
    cam = "exact" if anatomy.cam_exact else f"no ({anatomy.cam_reason})"
    return anatomy.layout, shape, cam


def run_models(args: argparse.Namespace) -> int:
    if args.pattern:
        import timm

        names = timm.list_models(args.pattern)
        if not names:
            close = difflib.get_close_matches(args.pattern, timm.list_models(), n=3, cutoff=0.5)
            raise UsageError(f"PATTERN {args.pattern!r} matches no timm model" + _hint(close))
        shown = names[: args.limit]
        if len(names) > len(shown):
            print(f"{len(names)} timm models match {args.pattern!r}; showing {len(shown)} (use --limit)")
        rows = list(shown)
    else:
        rows = [e.id for e in zoo.curated()]
    width = max(len(r) for r in rows)
    print(f"{'model':<{width}}  {'layout':<6}  {'map C×H×W':<12}  head       CAM")
    for name in rows:
        try:
            anatomy = zoo.load_model(name, weights="random", device="cpu").anatomy
        except Exception as exc:  # one model that cannot be built does not stop the listing
            print(f"{name:<{width}}  cannot inspect: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            continue
        layout, shape, cam = _describe(anatomy)
        print(f"{name:<{width}}  {layout:<6}  {shape:<12}  {anatomy.head_kind:<9}  {cam}", flush=True)
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
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
        )
    finally:
        if bar is not None:
            bar.close()
    skipped = result.selected - result.written
    print(
        f"{result.written} models probed in {result.wall_s / 60:.1f} min, {skipped} already there; "
        f"{result.rows} rows in {result.csv}; summary {result.summary}"
    )
    return 0


def _hint(close: Sequence[str]) -> str:
    return f"; did you mean {', '.join(close)}?" if close else ""


def load(name: str, weights: str | None, device: str | None = None) -> zoo.Model:
    """`zoo.load_model`, with a wrong name, weights policy or device as a usage error."""
    try:
        zoo.resolve_name(name)
        zoo.weights_policy(weights)
        zoo.resolve_device(device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return zoo.load_model(name, weights=weights, device=device)


COMMANDS = {
    "explain": run_explain,
    "models": run_models,
    "inspect": run_inspect,
    "methods": run_methods,
    "sweep": run_sweep_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, --version, or argparse's own usage errors
        return int(exc.code or 0)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        return fail(args.command, str(exc), 2)
    except zoo.WeightsUnavailableError as exc:
        return fail(args.command, str(exc), 1)
    except KeyboardInterrupt:
        return fail(args.command, "interrupted", 130)
    except BrokenPipeError:  # output piped into a pager or `head` that closed early
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence the interpreter's flush at exit)
        return 141
