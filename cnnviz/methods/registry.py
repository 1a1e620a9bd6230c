"""The method registry: the only list of attribution methods, their parameters and rules.

A method is one registered `Method`: what it needs from the shared passes (`Needs`), its
parameters (`Param`, typed, with defaults and ranges), when it applies (`check`), how a result
of it can be verified (`verify`, used by the support sweep) and its `compute` function, which
returns a `Result`. The CLI's choices and ``--param`` help, the app's lists and parameter
accordions, the Methods tab and the tests' parametrization all read this registry, so a new
method is one new module in `cnnviz/methods/` (see the README's Development section).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..common import Registry
from ..engine.passes import Needs
from ..engine.rules import RULES

if TYPE_CHECKING:
    import torch

    from ..engine.passes import Passes, Runner
    from ..types import Anatomy, Attribution, Explanation

Family = Literal["gradient", "cam"]
Value = bool | int | float | str


@dataclass(frozen=True)
class Param:
    """One parameter of a method: typed by its default, bounded, documented.

    Attributes:
        name: the key (``n_samples``); unique within its method.
        default: the value used when none is given; its type is the parameter's type
            (bool, int, float or str).
        help: one line, shown by the CLI, the app and the Methods tab.
        low, high: inclusive bounds for numbers (None: unbounded on that side).
        choices: the allowed values of a string parameter (empty: none allowed but the default).
    """

    name: str
    default: Value
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.default, str) and self.default not in self.choices:
            raise ValueError(f"parameter {self.name!r}: default {self.default!r} not in its choices")
        if not isinstance(self.default, str) and self.choices:
            raise ValueError(f"parameter {self.name!r}: choices are for string parameters")

    @property
    def kind(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """``n_samples: int in [1, 500], default 25: noisy copies averaged``."""
        if self.choices:
            allowed = f"one of {', '.join(self.choices)}"
        elif self.kind is bool:
            allowed = "true or false"
        else:
            lo = "-inf" if self.low is None else _num(self.low)
            hi = "inf" if self.high is None else _num(self.high)
            allowed = f"{self.kind.__name__} in [{lo}, {hi}]"
        return f"{self.name}: {allowed}, default {_num(self.default)}: {self.help}"

    def parse(self, value: object, owner: str = "") -> Value:
        """`value` checked and converted (strings from the CLI or a form are parsed)."""
        where = f"{owner}.{self.name}" if owner else self.name

        def bad(why: str) -> ValueError:
            return ValueError(f"parameter {where}={value!r}: {why}; expected {self.describe()}")

        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOLS:
                return _BOOLS[value.strip().lower()]
            raise bad("not a boolean")
        if kind is str:
            if not isinstance(value, str) or value not in self.choices:
                close = difflib.get_close_matches(str(value), self.choices, n=1, cutoff=0.5)
                raise bad(f"not allowed{f' (did you mean {close[0]!r}?)' if close else ''}")
            return value
        if isinstance(value, bool):
            raise bad("a boolean is not a number")
        if isinstance(value, str):
            text = value.strip()
            if len(text) > 40:
                raise bad("too long")
            try:
                value = int(text) if kind is int else float(text)
            except ValueError:
                raise bad(f"not {'an integer' if kind is int else 'a number'}") from None
        if kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad("not an integer")
        elif isinstance(value, int | float):
            value = float(value)
            if not math.isfinite(value):
                raise bad("not finite")
        else:
            raise bad("not a number")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise bad("out of range")
        return value


_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _num(v: object) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v)) if abs(v) >= 1e4 else f"{v:g}"
    return str(v).lower() if isinstance(v, bool) else str(v)


class Params(Mapping[str, Value]):
    """A method's validated parameters, read as ``params["n_samples"]`` or ``params.n_samples``."""

    __slots__ = ("_values",)
    _values: dict[str, Value]

    def __init__(self, values: Mapping[str, Value]):
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Value:
        return self._values[key]

    def __getattr__(self, key: str) -> Value:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Params are read-only")

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


@dataclass(frozen=True)
class Result:
    """What a method's `compute` returns.

    Attributes:
        raw: CAM family (B, h, w) at the map's resolution; gradient family (B, 3, H, W).
        notes: readable facts about how it was computed (rules, layer, errors of identities).
        offset: (B,) for methods with an additive identity (``cam``: ``raw.mean + offset ==
            logit``), else None.
    """

    raw: torch.Tensor
    notes: tuple[str, ...] = ()
    offset: torch.Tensor | None = None


@dataclass(frozen=True)
class Evidence:
    """What a method's `verify` sees: one call's result, for the support sweep's checks.

    Attributes:
        explanation: the `Explanation` the attribution belongs to.
        attribution: the result to check.
        anatomy: the model's anatomy.
        tol: relative tolerance of exact identities for the dtype (1e-4 float32).
        others: results of the other methods computed on the same input, by id (a check may
            compare with them, e.g. guided backprop with the plain gradient).
    """

    explanation: Explanation
    attribution: Attribution
    anatomy: Anatomy
    tol: float
    others: Mapping[str, Attribution] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: ``problem`` ('' when it passes) and measurements by column name."""

    problem: str = ""
    measures: Mapping[str, str] = field(default_factory=dict)


Compute = Callable[["Passes", Params, "Runner"], Result]
Check = Callable[["Anatomy", bool, Params], "str | None"]
Verify = Callable[[Evidence], Verdict]


@dataclass(frozen=True)
class Method:
    """One attribution method.

    Attributes:
        id: stable registry key (``grad_cam``).
        label: display name.
        family: ``gradient`` (input-resolution signed images) or ``cam`` (maps at a layer).
        paper: citation: authors, title, venue, year.
        url: link to the paper.
        formula: the definition in LaTeX (rendered by the app's Methods tab).
        summary: one or two sentences on what the map means.
        warning: one line on where it misleads ('' when nothing specific).
        cost: passes needed, e.g. "1 forward" or "1 forward + 1 backward".
        requires: what the method needs of a model, readable.
        needs: what it reads from the shared passes (`cnnviz.engine.passes.Needs`).
        params: its parameters, in display order.
        compute: ``(passes, params, runner) -> Result``; `runner` is the engine's handle for
            forward/backward work of the method's own (batched), see `cnnviz.engine.passes.Runner`.
        check: ``(anatomy, layer_is_final, params) -> reason it does not apply, or None``.
        verify: the sweep's check of a result (None: only the generic checks).
        measures: the column names `verify` reports.
        verify_with: ids of the methods whose results `verify` compares with (the sweep runs them).
        preferred: selected by default where a user picks methods (the app).
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
    needs: Needs
    compute: Compute
    check: Check
    warning: str = ""
    params: tuple[Param, ...] = ()
    verify: Verify | None = None
    measures: tuple[str, ...] = ()
    verify_with: tuple[str, ...] = ()
    preferred: bool = False

    def refusal(
        self, anatomy: Anatomy, layer_is_final: bool = True, params: Params | None = None
    ) -> str | None:
        """Why this method does not apply to a model (None when it does)."""
        return self.check(anatomy, layer_is_final, self.defaults() if params is None else params)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = [p.name for p in self.params]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"method {self.id!r} has no parameter {name!r}; "
            f"its parameters: {', '.join(known) or 'none'}.{hint}"
        )

    def defaults(self) -> Params:
        return Params({p.name: p.default for p in self.params})

    def bind(self, values: Mapping[str, object] | None = None) -> Params:
        """Defaults overridden by `values`, each checked (unknown names raise)."""
        out = {p.name: p.default for p in self.params}
        for name, value in (values or {}).items():
            out[name] = self.param(name).parse(value, self.id)
        return Params(out)


METHODS: Registry[Method] = Registry("method", Method)


def _always(anatomy: Anatomy, layer_is_final: bool, params: Params) -> str | None:
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
    needs: Needs | Iterable[str] = (),
    check: Check = _always,
    warning: str = "",
    params: tuple[Param, ...] = (),
    verify: Verify | None = None,
    measures: tuple[str, ...] = (),
    verify_with: tuple[str, ...] = (),
    preferred: bool = False,
) -> Callable[[Compute], Compute]:
    """Decorator registering a compute function as a method; a duplicate id raises.

    `needs` is a `Needs` or product names: ``"map"``, ``"map_grad"``, ``"grad:<rule>"`` with a
    rule of `list_rules()`.
    """
    need = needs if isinstance(needs, Needs) else Needs.parse(needs)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"method {id!r} declares a parameter twice: {names}")
    if family not in ("gradient", "cam"):
        raise ValueError(f"method {id!r}: unknown family {family!r}")

    def wrap(fn: Compute) -> Compute:
        METHODS.add(
            id,
            Method(
                id=id,
                label=label,
                family=family,
                paper=paper,
                url=url,
                formula=formula,
                summary=summary,
                cost=cost,
                requires=tuple(requires),
                needs=need,
                compute=fn,
                check=check,
                warning=warning,
                params=tuple(params),
                verify=verify,
                measures=tuple(measures),
                verify_with=tuple(verify_with),
                preferred=preferred,
            ),
        )
        return fn

    return wrap


def list_methods() -> tuple[Method, ...]:
    """All registered methods, in registration order."""
    return METHODS.values()


def method_ids() -> tuple[str, ...]:
    return METHODS.ids()


def preferred_ids() -> tuple[str, ...]:
    """The methods a user gets selected by default (the app)."""
    return tuple(m.id for m in METHODS.values() if m.preferred)


def list_rules() -> dict[str, str]:
    """Backward rule name -> what it does (the rules input-gradient methods can ask for)."""
    return dict(RULES)


def get_method(method_id: str) -> Method:
    """The method registered as `method_id`; an unknown id raises with close matches."""
    return METHODS.get(method_id)


def resolve_methods(methods: str | Method | Sequence[str | Method]) -> tuple[Method, ...]:
    """Normalize a method argument: an id, a comma-separated string, a Method or a list."""
    return METHODS.resolve(methods)


ParamsArg = Mapping[str, Any] | None


def resolve_params(methods: Iterable[Method], params: ParamsArg) -> dict[str, Params]:
    """Each method's `Params` from the user's `params`.

    `params` maps a method id to its values (``{"score_cam": {"batch_size": 16}}``), a
    ``"method.name"`` key to one value, or a bare parameter name to a value for every chosen
    method that has that parameter (``{"batch_size": 16}``). Unknown ids, names or values and
    parameters of methods that were not asked for raise ValueError.
    """
    chosen = {m.id: m for m in methods}
    given: dict[str, dict[str, object]] = {i: {} for i in chosen}
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(
            f"params must be a dict such as {{'score_cam': {{'batch_size': 16}}}}; got {params!r}"
        )
    for key, value in (params or {}).items():
        if not isinstance(key, str):
            raise ValueError(f"params keys are method ids or parameter names; got {key!r}")
        if isinstance(value, Mapping):
            _owner(key, chosen)
            for name, v in value.items():
                given[key][str(name)] = v
            continue
        if "." in key:
            mid, name = key.split(".", 1)
            _owner(mid, chosen)
            given[mid][name] = value
            continue
        takers = [i for i, m in chosen.items() if any(p.name == key for p in m.params)]
        if not takers:
            known = sorted({p.name for m in chosen.values() for p in m.params})
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"no requested method has a parameter {key!r}; their parameters: "
                f"{', '.join(known) or 'none'}.{hint}"
            )
        for i in takers:
            given[i][key] = value
    return {i: chosen[i].bind(given[i]) for i in chosen}


def _owner(method_id: str, chosen: Mapping[str, Method]) -> None:
    if method_id not in chosen:
        get_method(method_id)  # an unknown id raises with close matches
        raise ValueError(
            f"parameters given for {method_id!r}, which is not among the requested methods "
            f"({', '.join(chosen)})"
        )
