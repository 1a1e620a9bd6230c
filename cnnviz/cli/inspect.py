"""`cnnviz inspect NAME`: the anatomy of one model and which methods apply."""

from __future__ import annotations

import argparse

import cnnviz
from cnnviz import zoo

from ..types import Anatomy
from .util import load


def add_inspect(sub: argparse._SubParsersAction) -> None:
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


def applicability(anatomy: Anatomy) -> list[tuple[str, str | None]]:
    """(method id, reason it does not apply or None) for every method, at the default layer."""
    return [(m.id, m.refusal(anatomy, anatomy.is_final())) for m in cnnviz.list_methods()]


def run_inspect(args: argparse.Namespace) -> int:
    model = load(args.name, args.weights)
    print(f"model        : {model.display_name} [{model.name}]")
    print(model.anatomy.summary())
    print("methods      :")
    for mid, reason in applicability(model.anatomy):
        print(f"  {mid:<18} " + ("applies" if reason is None else f"no: {reason}"))
    return 0
