"""`cnnviz models [PATTERN]`: the curated zoo or matching timm models, with layout and CAM exactness."""

from __future__ import annotations

import argparse

from cnnviz import zoo
from cnnviz.common import close_matches, did_you_mean, first_line

from ..types import Anatomy
from .util import UsageError, positive_int


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="the curated zoo, or timm models matching a pattern, with layout and CAM exactness",
        description="Without PATTERN: the curated zoo (models.yaml). With PATTERN (a glob such as "
        "'resnet1*'): timm models matching it. Each is built with random weights and inspected.",
    )
    p.add_argument("pattern", nargs="?", metavar="PATTERN", help="glob over timm.list_models()")
    p.add_argument("--limit", type=positive_int, default=20, help="inspect at most N matches (default 20)")


def _describe(anatomy: Anatomy) -> tuple[str, str, str]:
    shape = "x".join(str(v) for v in anatomy.shape)
    cam = "exact" if anatomy.cam_exact else f"no ({anatomy.cam_reason})"
    return anatomy.layout, shape, cam


def run_models(args: argparse.Namespace) -> int:
    if args.pattern:
        import timm

        names = timm.list_models(args.pattern)
        if not names:
            close = close_matches(args.pattern, timm.list_models(), cutoff=0.5)
            raise UsageError(f"PATTERN {args.pattern!r} matches no timm model" + did_you_mean(close))
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
            print(f"{name:<{width}}  cannot inspect: {first_line(exc)}")
            continue
        layout, shape, cam = _describe(anatomy)
        print(f"{name:<{width}}  {layout:<6}  {shape:<12}  {anatomy.head_kind:<9}  {cam}", flush=True)
    return 0
