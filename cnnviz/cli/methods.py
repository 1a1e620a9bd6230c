"""`cnnviz methods`: the registry, with papers, formulas, costs and requirements."""

from __future__ import annotations

import argparse

import cnnviz


def add_methods(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("methods", help="list the attribution methods (the registry)", description=_methods_text())


def _methods_text() -> str:
    return "Methods: " + "; ".join(f"{m.id} ({m.label})" for m in cnnviz.list_methods()) + "."


def run_methods(args: argparse.Namespace) -> int:
    for m in cnnviz.list_methods():
        print(f"{m.id}  [{m.family}]  {m.label}")
        print(f"    {m.summary}")
        print(f"    cost: {m.cost}; requires: {', '.join(m.requires)}")
        if m.warning:
            print(f"    misleads: {m.warning}")
        for p in m.params:
            print(f"    --param {m.id}.{p.describe()}")
        print(f"    {m.paper}  {m.url}")
    return 0
