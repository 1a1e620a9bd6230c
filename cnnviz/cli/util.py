"""Small pieces the command line shares: usage errors, argument types, method parsing, loading."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import cnnviz
from cnnviz import zoo
from cnnviz.common import ArgumentError


class UsageError(ValueError):
    """A wrong argument: reported as one line on stderr, exit code 2."""


def fail(command: str, message: str, code: int) -> int:
    print(f"cnnviz {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def parse_methods(text: str) -> tuple[str, ...]:
    """``"all"`` or comma-separated registry ids, in order, without duplicates.

    Raises:
        UsageError: an unknown id (the registry's message lists the ids and close matches).
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--methods: empty; give method ids separated by commas, or 'all'")
    if items == ["all"]:
        return tuple(m.id for m in cnnviz.list_methods())
    out: list[str] = []
    for item in items:
        try:
            method = cnnviz.get_method(item)
        except ValueError as exc:
            raise UsageError(f"--methods: {exc}") from None
        if method.id not in out:
            out.append(method.id)
    return tuple(out)


def parse_params(items: Sequence[str] | None, methods: Sequence[str]) -> dict[str, object]:
    """``--param`` values (``NAME=VALUE`` or ``METHOD.NAME=VALUE``) as `cnnviz.explain`'s `params`,
    checked against the registry for the chosen `methods`.

    Raises:
        UsageError: a malformed item, an unknown method or parameter, or a value out of range.
    """
    params: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UsageError(f"--param: expected NAME=VALUE or METHOD.NAME=VALUE, got {item[:80]!r}")
        params[key] = value.strip()
    try:
        cnnviz.methods.resolve_params([cnnviz.get_method(m) for m in methods], params)
    except ValueError as exc:
        raise UsageError(f"--param: {exc}") from None
    return params


def params_help() -> str:
    """Every method parameter, for the help text (from the registry)."""
    lines = [f"{m.id}.{p.describe()}" for m in cnnviz.list_methods() for p in m.params]
    return "; ".join(lines) or "no method has parameters"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def load(name: str, weights: str | None, device: str | None = None) -> zoo.Model:
    """`zoo.load_model`, with a wrong name, weights policy or device as a usage error."""
    try:
        return zoo.load_model(name, weights=weights, device=device)
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None
