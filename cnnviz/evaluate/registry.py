"""The metric registry: every way of judging a map is one registered `Metric`.

Like the method registry, it is filled at import and never mutated; the CLI's choices, the
app's lists, the README table and the test parametrization all read it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]
Kind = Literal["faithfulness", "localization", "sanity"]


@dataclass(frozen=True)
class Metric:
    """One way to judge a saliency map.

    Attributes:
        id: stable registry key (``deletion``).
        label: display name.
        kind: ``faithfulness`` (does the model's score follow the map?), ``localization``
            (does the map fall on the object? needs a box or mask) or ``sanity`` (does the map
            depend on the model at all?).
        paper: citation: authors, title, venue, year.
        url: link to the paper.
        formula: the definition in LaTeX.
        summary: what the number means and how to read it.
        direction: ``higher`` or ``lower`` is better.
        cost: forward/backward passes per map, in words.
        needs_box: needs a box or mask per sample (`score(..., boxes=...)`).
        families: method families it is defined for (``cam``, ``gradient``).
        unit: how a per-sample value reads (``probability x fraction``, ``0/1``...).
    """

    id: str
    label: str
    kind: Kind
    paper: str
    url: str
    formula: str
    summary: str
    direction: Direction
    cost: str
    needs_box: bool = False
    families: frozenset[str] = frozenset({"cam", "gradient"})
    unit: str = ""

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    def refusal(self, family: str) -> str | None:
        """Why this metric is not defined for maps of a method family (None when it is)."""
        if family in self.families:
            return None
        return (
            f"{self.label} is defined for {' and '.join(sorted(self.families))} maps only "
            f"(a {family} map is not one); see {self.paper}"
        )


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric; a duplicate id raises."""
    if metric.id in _REGISTRY:
        raise ValueError(f"metric id {metric.id!r} is registered twice")
    if metric.direction not in ("higher", "lower"):
        raise ValueError(f"metric {metric.id!r}: direction must be 'higher' or 'lower'")
    _REGISTRY[metric.id] = metric
    return metric


def list_metrics() -> tuple[Metric, ...]:
    """All registered metrics, in registration order."""
    return tuple(_REGISTRY.values())


def metric_ids() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_metric(metric_id: str) -> Metric:
    """The metric registered as `metric_id`; an unknown id raises with close matches."""
    try:
        return _REGISTRY[metric_id]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(metric_id), list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown metric {metric_id!r}; known metrics: {', '.join(_REGISTRY)}.{hint}"
        ) from None


def resolve_metrics(metrics: str | Metric | Sequence[str | Metric]) -> tuple[Metric, ...]:
    """Normalize a metrics argument: an id, a comma-separated string, a Metric or a list."""
    if isinstance(metrics, Metric):
        return (metrics,)
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    out: list[Metric] = []
    for m in metrics:
        metric = m if isinstance(m, Metric) else get_metric(m)
        if metric not in out:
            out.append(metric)
    if not out:
        raise ValueError(f"no metric given; known metrics: {', '.join(_REGISTRY)}")
    return tuple(out)
