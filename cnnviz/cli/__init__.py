"""The ``cnnviz`` command line: explain and evaluate images, list and inspect models, list methods
and metrics, sweep timm.

Every choice (method ids, their descriptions) comes from the method registry; a wrong name gets
close matches and exit code 2 with one line on stderr, never a traceback.

Exit codes: 0 success; 1 a run-time failure (weights unavailable, an unreadable image);
2 a usage error, or every requested method refused for the model.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import cnnviz
from cnnviz import zoo

from .batch import add_batch, run_batch_command
from .evaluate import add_evaluate, add_metrics, run_evaluate, run_metrics
from .explain import add_explain, run_explain
from .inspect import add_inspect, run_inspect
from .methods import add_methods, run_methods
from .models import add_models, run_models
from .sweep import add_sweep, run_sweep_command
from .util import UsageError, fail

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
    add_evaluate(sub)
    add_models(sub)
    add_inspect(sub)
    add_methods(sub)
    add_metrics(sub)
    add_sweep(sub)
    add_batch(sub)
    return parser


COMMANDS = {
    "explain": run_explain,
    "evaluate": run_evaluate,
    "models": run_models,
    "inspect": run_inspect,
    "methods": run_methods,
    "metrics": run_metrics,
    "sweep": run_sweep_command,
    "batch": run_batch_command,
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
