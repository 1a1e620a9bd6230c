"""The method registry: every attribution method is one registered `Method`.

The CLI's choices, the app's lists, the methods reference page and the test
parametrization all read this registry, so a new method is one new function.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

    from ..engine.passes import Passes
    from ..types import Anatomy

Family = Literal["gradient", "cam"]

# What a method can ask the shared passes for (see `cnnviz.engine.passes.Passes`):
#   "map"          the feature map at the chosen layer, canonical (B, C, h, w)
#   "map_grad"     d score / d map with the plain backward rule
#   "grad:plain"   d score / d input with the plain backward rule
#   "grad:guided"  d score / d input with guided backpropagation's rule
#   "grad:deconv"  d score / d input with the deconvnet rule
PRODUCTS = frozenset({"map", "map_grad", "grad:plain", "grad:guided", "grad:deconv"})

Compute = Callable[["Passes"], "tuple[torch.Tensor, tuple[str, ...]]"]
Check = Callable[["Anatomy", bool], "str | None"]


@dataclass(frozen=True)
class Method:
    """One attribution method.

    Attributes:
        id: stable registry key (``grad_cam``).
        label: display name.
        family: ``gradient`` (input-resolution signed images) or ``cam`` (maps at a layer).
        paper: citation, authors, title, venue, year.
        url: link to the paper.
        formula: the definition in LaTeX (rendered by the app's Methods tab).
        summary: one or two sentences on what the map means and where it misleads.
        cost: passes needed, e.g. "1 forward" or "1 forward + 1 backward".
        requires: what the method needs of a model, readable.
        needs: products of the shared passes it consumes (see `PRODUCTS`).
        compute: `Passes` -> (raw tensor, notes).
        check: (anatomy, layer_is_final) -> the reason it does not apply, or None.
    """

    id: str
    label: str
    family: Family
    paper: str
    url: str
    formula: str
    summary: str
    cost: str
    requires: tuple[str, ...]
    needs: frozenset[str]
    compute: Compute
    check: Check

    def refusal(self, anatomy: Anatomy, layer_is_final: bool = True) -> str | None:
        """Why this method does not apply to a model (None when it does)."""
        return self.check(anatomy, layer_is_final)


_REGISTRY: dict[str, Method] = {}


def _always(anatomy: Anatomy, layer_is_final: bool) -> str | None:
    return None


def register_method(
    *,
    id: str,
    label: str,
    family: Family,
    paper: str,
    url: str,
    formula: str,
    summary: str,
    cost: str,
    requires: tuple[str, ...],
    needs: frozenset[str] | set[str],
    check: Check = _always,
) -> Callable[[Compute], Compute]:
    """Decorator registering a compute function as a method; a duplicate id raises."""
    unknown = set(needs) - PRODUCTS
    if unknown:
        raise ValueError(f"method {id!r} needs unknown products {sorted(unknown)}; known: {sorted(PRODUCTS)}")

    def wrap(fn: Compute) -> Compute:
        if id in _REGISTRY:
            raise ValueError(f"method id {id!r} is registered twice")
        _REGISTRY[id] = Method(
            id=id,
            label=label,
            family=family,
            paper=paper,
            url=url,
            formula=formula,
            summary=summary,
            cost=cost,
            requires=tuple(requires),
            needs=frozenset(needs),
            compute=fn,
            check=check,
        )
        return fn

    return wrap


def list_methods() -> tuple[Method, ...]:
    """All registered methods, in registration order."""
    return tuple(_REGISTRY.values())


def method_ids() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(method_id: str) -> Method:
    """The method registered as `method_id`; an unknown id raises with close matches."""
    try:
        return _REGISTRY[method_id]
    except KeyError:
        close = difflib.get_close_matches(str(method_id), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown method {method_id!r}; known methods: {', '.join(_REGISTRY)}.{hint}"
        ) from None


def resolve_methods(methods: str | Method | list | tuple) -> tuple[Method, ...]:
    """Normalize a method argument: an id, a comma-separated string, a Method or a list."""
    if isinstance(methods, Method):
        return (methods,)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out: list[Method] = []
    for m in methods:
        method = m if isinstance(m, Method) else get_method(m)
        if method not in out:
            out.append(method)
    if not out:
        raise ValueError(f"no method given; known methods: {', '.join(_REGISTRY)}")
    return tuple(out)
