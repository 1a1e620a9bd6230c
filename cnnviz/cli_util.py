"""Small pieces the command line shares: usage errors and method parsing from the registry."""

from __future__ import annotations

import sys

import cnnviz


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
