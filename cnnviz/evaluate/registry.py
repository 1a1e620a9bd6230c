"""The metric registry: every way of judging a map is one registered `Metric`.

Like the method registry, it is filled at import and never mutated; the CLI's choices, the
app's lists, the README table and the test parametrization all read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..common import Registry

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


METRICS: Registry[Metric] = Registry("metric", Metric)


def register_metric(metric: Metric) -> Metric:
    """Add a metric; a duplicate id raises."""
    if metric.direction not in ("higher", "lower"):
        raise ValueError(f"metric {metric.id!r}: direction must be 'higher' or 'lower'")
    return METRICS.add(metric.id, metric)


def list_metrics() -> tuple[Metric, ...]:
    """All registered metrics, in registration order."""
    return METRICS.values()


def metric_ids() -> tuple[str, ...]:
    return METRICS.ids()


def get_metric(metric_id: str) -> Metric:
    """The metric registered as `metric_id`; an unknown id raises with close matches."""
    return METRICS.get(metric_id)


def resolve_metrics(metrics: str | Metric | Sequence[str | Metric]) -> tuple[Metric, ...]:
    """Normalize a metrics argument: an id, a comma-separated string, a Metric or a list."""
    return METRICS.resolve(metrics)
