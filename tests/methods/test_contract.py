"""The method contract: declared needs, typed parameters, typed results, one registry."""

from __future__ import annotations

import pytest
import torch
from conftest import input_for, make_model

import cnnviz
from cnnviz.engine.passes import Needs
from cnnviz.engine.rules import RULES
from cnnviz.methods import registry
from cnnviz.methods.registry import Param, Params, Result, register_method, resolve_params


def test_every_method_declares_its_science_and_a_valid_contract():
    for m in cnnviz.list_methods():
        assert m.paper and m.url.startswith("https://") and m.formula and m.summary and m.cost, m.id
        assert isinstance(m.needs, Needs) and m.needs.rules <= set(RULES), m.id
        for p in m.params:
            assert p.parse(p.default) == p.default and p.help, (m.id, p.name)
    assert registry.preferred_ids() and set(registry.preferred_ids()) <= set(registry.method_ids())
    assert registry.list_rules().keys() == set(RULES)


def test_param_parsing_types_ranges_and_errors():
    p = Param("n", 25, "copies", low=1, high=100)
    assert p.parse("7") == 7 and p.parse(7.0) == 7
    for bad in ("0", 101, 2.5, True, "x" * 50, "seven"):
        with pytest.raises(ValueError, match=r"n=.*expected n: int in \[1, 100\]"):
            p.parse(bad)
    s = Param("sigma", 0.15, "noise", low=0.0, high=1.0)
    assert s.parse("0") == 0.0 and isinstance(s.parse(1), float)
    with pytest.raises(ValueError, match="not finite"):
        s.parse(float("nan"))
    c = Param("baseline", "zeros", "start", choices=("zeros", "blur"))
    with pytest.raises(ValueError, match="did you mean 'zeros'"):
        c.parse("zero")
    b = Param("flag", False, "a switch")
    assert b.parse("true") is True and b.parse("off") is False
    with pytest.raises(ValueError):
        b.parse("maybe")


@pytest.fixture
def probe_method():
    """A registered method with parameters, for the duration of one test."""
    seen: dict = {}

    @register_method(
        id="_probe_contract",
        label="probe",
        family="cam",
        paper="-",
        url="https://example.org",
        formula="-",
        summary="-",
        cost="-",
        requires=(),
        needs={"map"},
        params=(
            Param("batch_size", 2, "inputs per forward", low=1, high=5),
            Param("mode", "sum", "how to reduce", choices=("sum", "max")),
        ),
    )
    def probe(passes, params, runner):
        seen["params"] = params
        seen["logits"] = runner.forward(passes.x, batch_size=params.batch_size)
        seen["runner"] = runner
        reduced = passes.map.sum(1) if params.mode == "sum" else passes.map.amax(1)
        return Result(reduced, ("probe",))

    try:
        yield cnnviz.get_method("_probe_contract"), seen
    finally:
        registry.METHODS.remove("_probe_contract")


def test_resolve_params_by_method_by_dotted_key_and_by_bare_name(probe_method):
    probe, _ = probe_method
    grad = cnnviz.get_method("grad_cam")
    got = resolve_params([probe, grad], {"_probe_contract": {"batch_size": "4"}})
    assert got["_probe_contract"]["batch_size"] == 4 and got["grad_cam"] == Params({})
    assert resolve_params([probe], {"_probe_contract.mode": "max"})["_probe_contract"].mode == "max"
    assert resolve_params([probe], {"batch_size": 3})["_probe_contract"].batch_size == 3
    assert resolve_params([probe], None)["_probe_contract"].batch_size == 2
    with pytest.raises(ValueError, match=r"no requested method has a parameter 'batchsize'.*'batch_size'"):
        resolve_params([probe], {"batchsize": 2})
    with pytest.raises(ValueError, match="not among the requested methods"):
        resolve_params([grad], {"_probe_contract": {"batch_size": 2}})
    with pytest.raises(ValueError, match="unknown method 'grad_cm'"):
        resolve_params([grad], {"grad_cm.batch_size": 2})
    with pytest.raises(ValueError, match="out of range"):
        resolve_params([probe], {"batch_size": 0})
    with pytest.raises(ValueError, match=r"has no parameter 'mood'.*'mode'"):
        resolve_params([probe], {"_probe_contract": {"mood": "max"}})


def test_a_method_gets_its_params_and_the_runner_and_must_return_a_result(probe_method):
    probe, seen = probe_method
    model = make_model("test_resnet")
    x = input_for(model, batch=2)
    ex = cnnviz.explain(model, x, ["_probe_contract", "grad_cam"], params={"batch_size": 1, "mode": "max"})
    assert seen["params"] == Params({"batch_size": 1, "mode": "max"}) and ex["_probe_contract"].notes == (
        "probe",
    )
    assert torch.allclose(seen["logits"], ex.logits, atol=1e-5) and seen["runner"].forwards == 2
    with pytest.raises(ValueError, match="batch_size"):  # checked before any work
        cnnviz.explain(model, x, ["_probe_contract"], params={"batch_size": -1})
    with pytest.raises(ValueError, match="registered twice"):
        register_method(
            id="_probe_contract",
            label="",
            family="cam",
            paper="",
            url="",
            formula="",
            summary="",
            cost="",
            requires=(),
        )(probe.compute)
    with pytest.raises(ValueError, match="grad:nope"):
        register_method(
            id="_probe_bad",
            label="",
            family="cam",
            paper="",
            url="",
            formula="",
            summary="",
            cost="",
            requires=(),
            needs={"grad:nope"},
        )


def test_runner_passes_batches_and_concatenates_the_shared_passes():
    from cnnviz.engine.anatomy import inspection
    from cnnviz.engine.capture import members
    from cnnviz.engine.passes import Runner, run_passes

    model = make_model("test_resnet")
    x = input_for(model, batch=3)
    found = members(model)
    insp = inspection(model, found)
    needs = Needs(map_grad=True, rules=frozenset({"plain", "guided"}))
    whole = run_passes(model, found, x, needs, [1, 2, 3], insp.anatomy.source, insp)
    runner = Runner(model, found, insp, whole)
    parts = runner.passes(x, torch.tensor([1, 2, 3]), needs, batch_size=2)
    assert runner.forwards == 3 and parts.map.shape == whole.map.shape
    for a, b in [(parts.map, whole.map), (parts.map_grad, whole.map_grad)] + [
        (parts.input_grads[r], whole.input_grads[r]) for r in ("plain", "guided")
    ]:
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
    assert torch.allclose(runner.forward(x, batch_size=2), whole.logits, atol=1e-5)


def test_method_result_must_be_a_result():
    @register_method(
        id="_probe_tuple",
        label="t",
        family="cam",
        paper="-",
        url="https://e.org",
        formula="-",
        summary="-",
        cost="-",
        requires=(),
        needs={"map"},
    )
    def old_style(passes, params, runner):
        return passes.map.sum(1), ("old",)

    try:
        model = make_model("test_resnet")
        with pytest.raises(TypeError, match="not a Result"):
            cnnviz.explain(model, input_for(model, batch=1), ["_probe_tuple"])
    finally:
        registry.METHODS.remove("_probe_tuple")
