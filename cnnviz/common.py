"""Small helpers that every layer may use; this module imports nothing from cnnviz.

* `close_matches` and `did_you_mean`: the one way a wrong name gets its suggestions.
* `first_line`: an exception as one short line (type and first line of its message).
* `env_flag`: an on/off environment variable, with the one set of words both ways.
* `name_seed`: the seed a model name gives, so that "random weights" are the same every time.
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Iterable, Mapping, Sequence


class ArgumentError(ValueError):
    """A caller's argument names nothing that exists or contradicts another (a typo in a model
    name, an unknown weights policy or device): the message says what is allowed. Front ends
    report it as a usage error; other ValueErrors are failures of the work itself."""


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def close_matches(value: object, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to `n` of `choices` close to `value` (difflib's ratio >= `cutoff`), best first."""
    return difflib.get_close_matches(str(value), list(choices), n=n, cutoff=cutoff)


def did_you_mean(close: Sequence[str], quote: bool = False) -> str:
    """``"; did you mean a, b?"`` to append to a message, or ``""`` when nothing is close."""
    if not close:
        return ""
    names = [repr(c) if quote else c for c in dict.fromkeys(close)]
    return f"; did you mean {', '.join(names)}?"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"``, at most `limit` characters."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:limit]


def is_true(text: str) -> bool:
    """Whether an environment value says yes (``1``, ``true``, ``yes``, ``on``, any case)."""
    return text.strip().lower() in TRUE_WORDS


def env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off setting: `default` when unset or empty; an unknown word raises ValueError."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS | FALSE_WORDS:
        return raw in TRUE_WORDS
    raise ValueError(
        f"environment variable {name}={raw[:40]!r} must be one of {sorted(TRUE_WORDS | FALSE_WORDS)}"
    )


def name_seed(name: str) -> int:
    """The random seed of a model name (CRC32 of its UTF-8 bytes): same name, same weights."""
    return zlib.crc32(name.encode("utf-8"))
