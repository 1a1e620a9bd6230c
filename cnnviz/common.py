"""Small helpers that every layer may use; this module imports nothing from cnnviz.

* `close_matches` and `did_you_mean`: the one way a wrong name gets its suggestions.
* `first_line`: an exception as one short line (type and first line of its message).
* `env_flag`: an on/off environment variable, with the one set of words both ways.
* `name_seed`: the seed a model name gives, so that "random weights" are the same every time.
* `Registry`: the one list of the things of a kind (methods, metrics) and how a name finds one.
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Generic, TypeVar


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


T = TypeVar("T")


class Registry(Generic[T]):
    """The registered things of one kind (`kind`: "method", "metric"), by id, in registration order.

    The only list of them: front ends and documentation read it. An unknown id raises a
    ValueError that names the known ones and the close matches (the id quoted, cut to 80
    characters: it may come from a web request).
    """

    def __init__(self, kind: str, item_type: type[T]):
        self.kind = kind
        self._type = item_type
        self._items: dict[str, T] = {}

    def add(self, item_id: str, item: T) -> T:
        """Register `item` as `item_id`; an id registered twice raises."""
        if item_id in self._items:
            raise ValueError(f"{self.kind} id {item_id!r} is registered twice")
        self._items[item_id] = item
        return item

    def remove(self, item_id: str) -> None:
        """Take `item_id` out again, if it is there (tests that register a probe)."""
        self._items.pop(item_id, None)

    def values(self) -> tuple[T, ...]:
        """The items, in registration order."""
        return tuple(self._items.values())

    def ids(self) -> tuple[str, ...]:
        return tuple(self._items)

    def get(self, item_id: str) -> T:
        """The item registered as `item_id`; an unknown id raises with the close matches."""
        try:
            return self._items[item_id]
        except (KeyError, TypeError):
            close = close_matches(item_id, self._items, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"unknown {self.kind} {str(item_id)[:80]!r}; known {self.kind}s: "
                f"{', '.join(self._items)}.{hint}"
            ) from None

    def resolve(self, arg: str | T | Sequence[str | T]) -> tuple[T, ...]:
        """Normalize an argument: an id, a comma-separated string of ids, an item or a list of
        either; duplicates are dropped, the order kept; an empty selection raises."""
        if isinstance(arg, self._type):
            return (arg,)
        if isinstance(arg, str):
            given: Sequence[object] = [a.strip() for a in arg.split(",") if a.strip()]
        else:
            given = arg  # type: ignore[assignment]
        out: list[T] = []
        for a in given:
            item = a if isinstance(a, self._type) else self.get(str(a))
            if item not in out:
                out.append(item)
        if not out:
            raise ValueError(f"no {self.kind} given; known {self.kind}s: {', '.join(self._items)}")
        return tuple(out)
