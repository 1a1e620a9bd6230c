"""The metric registry is the one list: ids, science, direction, boxes; duplicates raise."""

from __future__ import annotations

import pytest

import cnnviz.evaluate as ev
from cnnviz.evaluate.registry import Metric, register_metric


def test_registry_lists_the_metrics_with_their_science():
    ids = [m.id for m in ev.list_metrics()]
    assert ids == [
        "deletion",
        "insertion",
        "average_drop",
        "increase_in_confidence",
        "pointing_game",
        "energy_in_box",
        "randomization",
    ]
    for m in ev.list_metrics():
        assert m.direction in ("higher", "lower")
        assert m.paper and m.url.startswith("https://") and m.formula and m.summary and m.cost
    assert {m.id for m in ev.list_metrics() if m.needs_box} == {"pointing_game", "energy_in_box"}
    assert ev.get_metric("deletion").direction == "lower" and ev.get_metric("insertion").higher_is_better
    assert ev.get_metric("average_drop").refusal("gradient") is not None
    assert ev.get_metric("average_drop").refusal("cam") is None
    assert "omits the division" in ev.get_metric("average_drop").summary


def test_duplicates_raise_and_unknown_ids_suggest():
    with pytest.raises(ValueError, match="registered twice"):
        register_metric(ev.get_metric("deletion"))
    with pytest.raises(ValueError, match="Did you mean 'insertion'"):
        ev.get_metric("insertoin")
    with pytest.raises(ValueError, match="direction"):
        register_metric(
            Metric(
                id="x",
                label="x",
                kind="sanity",
                paper="",
                url="",
                formula="",
                summary="",
                direction="up",
                cost="",
            )
        )
    assert ev.resolve_metrics("deletion, insertion,deletion") == (
        ev.get_metric("deletion"),
        ev.get_metric("insertion"),
    )


def test_methods_and_metrics_share_one_registry_and_its_messages():
    """One `Registry` serves both kinds: the same lookup, the same refusal, an id from a request
    quoted short (a megabyte id must not come back whole)."""
    import cnnviz
    from cnnviz.common import Registry
    from cnnviz.evaluate.registry import METRICS
    from cnnviz.methods.registry import METHODS

    assert isinstance(METHODS, Registry) and isinstance(METRICS, Registry)
    assert METHODS.ids() == tuple(m.id for m in cnnviz.list_methods())
    for lookup, kind in ((ev.get_metric, "metric"), (cnnviz.get_method, "method")):
        with pytest.raises(ValueError, match=f"unknown {kind} 'x{{80}}'; known {kind}s: ") as err:
            lookup("x" * 100_000)
        assert len(str(err.value)) < 1_000
    with pytest.raises(ValueError, match="registered twice"):
        METRICS.add("deletion", ev.get_metric("deletion"))
    assert ev.resolve_metrics("deletion, insertion,deletion") == (
        ev.get_metric("deletion"),
        ev.get_metric("insertion"),
    )
