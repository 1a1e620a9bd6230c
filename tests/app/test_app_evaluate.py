"""The app's Evaluate action (Explain tab) and Sanity check tab: named endpoints `/evaluate` and
`/sanity` driven through gradio_client and raw HTTP, their limits and refusals, the pool's model left
untouched, and, on the packaged trained EfficientNet-Lite0, the same numbers as `cnnviz.evaluate`.

Wiring tests use tiny `test_resnet` on random weights (a second or two per call); the meaning tests
use the trained model through the handlers, as the server calls them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import gradio as gr
import pytest
from conftest import assert_same_state, model_state, running_app
from PIL import Image
from test_file_guard import (  # noqa: F401  (cache and outside are fixtures)
    META,
    attacks,
    cache,
    call,
    outside,
    payloads,
    upload,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cnnviz
import cnnviz.evaluate as ev
from cnnviz import zoo
from cnnviz.app import evaluation, guard, ui, ui_evaluate, widgets
from cnnviz.app import settings as core

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.app

SETTINGS = core.AppSettings(weights="random", allow_any_model=True, default_model="test_resnet")
CAT = core.EXAMPLES_DIR / "chelsea.jpg"
COFFEE = core.EXAMPLES_DIR / "coffee.jpg"
LITE0 = "tf_efficientnet_lite0.in1k"


def noop(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def server():
    with running_app(SETTINGS) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False, analytics_enabled=False)


def evaluate(client, methods=("grad_cam", "guided_backprop"), steps=5, layer=core.FINAL_LABEL, image=CAT):
    return client.predict(
        gradio_client.handle_file(str(image)),
        "test_resnet",
        list(methods),
        core.TOP1,
        layer,
        steps,
        api_name="/evaluate",
    )


def sanity(client, methods=("grad_cam", "guided_backprop"), steps=12, image=CAT):
    return client.predict(
        gradio_client.handle_file(str(image)),
        "test_resnet",
        list(methods),
        core.TOP1,
        steps,
        api_name="/sanity",
    )


def table_rows(table: str) -> dict[str, list[str]]:
    """Method label -> the cells of its row in a markdown table."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        header = cells[0].startswith("method") or set(cells[-1]) <= set("-: ")
        if line.startswith("| ") and len(cells) > 1 and not header:
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------- the API surface


def test_evaluate_and_sanity_are_named_typed_endpoints():
    info = ui.build(SETTINGS).get_api_info()["named_endpoints"]
    for name in ("/evaluate", "/sanity"):
        labels = [r["label"] for r in info[name]["returns"]] + [p["label"] for p in info[name]["parameters"]]
        assert all(label and not label.startswith("value_") for label in labels), (name, labels)
        assert info[name]["parameters"][0]["type"]["description"] == widgets.UPLOAD_ONLY
        types = {p["parameter_name"]: p["python_type"]["type"] for p in info[name]["parameters"]}
        assert types["model_name"] == types["target"] == "str"
        assert types["methods"].startswith("list[Literal['cam'") and types["steps"] == "float"
    evaluate_params = [p["parameter_name"] for p in info["/evaluate"]["parameters"]]
    assert evaluate_params[:6] == ["image", "model_name", "methods", "target", "layer", "steps"]
    assert len(evaluate_params) == 6 + len(core.param_specs())  # the method parameters, as /explain
    assert [r["label"] for r in info["/evaluate"]["returns"]] == [
        "Deletion and insertion curves", "Scores table", "Scores",
    ]  # fmt: skip
    assert [r["label"] for r in info["/sanity"]["returns"]] == [
        "Maps as the network is randomized", "Rank correlation with the trained map", "What it means",
        "Correlations",
    ]  # fmt: skip


def test_evaluate_is_off_by_default_and_shows_progress_on_the_plot():
    demo = ui.build(SETTINGS)
    config = demo.get_config_file()
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    panel = next(c for c in config["components"] if c["props"].get("elem_id") == "cnnviz-evaluate-panel")
    assert panel["props"]["open"] is False
    explain = next(d for d in config["dependencies"] if d["api_name"] == "explain")
    assert not any(ids.get(o, "") and ids[o].startswith("cnnviz-eval") for o in explain["outputs"])
    for api, target in (("evaluate", "cnnviz-eval-curves"), ("sanity", "cnnviz-sanity-strip")):
        dep = next(d for d in config["dependencies"] if d["api_name"] == api)
        assert [ids[i] for i in dep["show_progress_on"]] == [target]
        fn = next(f for f in demo.fns.values() if f.api_name == api)
        assert fn.concurrency_id == ui.MODEL_EVENTS  # one model at a time, like /explain


# ----------------------------------------------------------------------------- gradio_client


def test_evaluate_endpoint_on_random_weights_says_so_everywhere(client):
    curves, table, scores = evaluate(client)
    picture = Image.open(curves)
    assert picture.size[0] >= 800 and picture.size[1] >= 300
    assert table.startswith(f"**⚠ {ev.RANDOM_WEIGHTS_NOTE}")
    rows = table_rows(table)
    assert set(rows) == {"Grad-CAM (RANDOM WEIGHTS)", "Guided backpropagation (RANDOM WEIGHTS)"}
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    for metric in evaluation.EVALUATE_METRICS:  # each column says its direction, from the registry
        m = ev.get_metric(metric)
        assert f"{m.label} ({m.direction} is better)" in header
    assert rows["Guided backpropagation (RANDOM WEIGHTS)"][2:] == ["n/a", "n/a"]  # AD/IC: CAM family only
    assert rows["Grad-CAM (RANDOM WEIGHTS)"][2].endswith("%")
    assert "n/a: Average Drop and Increase in Confidence are defined for CAM-family maps only" in table
    assert scores["random_weights"] is True and scores["warning"] == ev.RANDOM_WEIGHTS_NOTE
    assert scores["directions"] == {m: ev.get_metric(m).direction for m in evaluation.EVALUATE_METRICS}
    assert set(scores["scores"]["grad_cam"]) == set(evaluation.EVALUATE_METRICS)
    assert set(scores["scores"]["guided_backprop"]) == {"deletion", "insertion"}
    assert scores["steps"] == 5 and scores["seconds"] > 0
    for method, label in (("grad_cam", "Grad-CAM"), ("guided_backprop", "Guided backpropagation")):
        cells = rows[f"{label} (RANDOM WEIGHTS)"]
        assert cells[0] == f"{scores['scores'][method]['deletion']:.3f}"
        assert cells[1] == f"{scores['scores'][method]['insertion']:.3f}"


def test_sanity_endpoint_on_random_weights_says_so_everywhere(client):
    strip, curves, text, correlations = sanity(client)
    steps = ev.cascade(zoo.load_model("test_resnet", weights="random").module)
    assert correlations["steps"] == [s.label for s in steps]  # 12 asked: the whole cascade
    strip_picture = Image.open(strip)
    cell = evaluation.STRIP_CELL
    assert strip_picture.width >= (len(steps) + 1) * cell and strip_picture.height >= 2 * cell
    assert Image.open(curves).width >= 700
    assert text.startswith(evaluation.RANDOM_SANITY)
    assert "Grad-CAM (RANDOM WEIGHTS)" in text and "Guided backpropagation (RANDOM WEIGHTS)" in text
    assert evaluation.SANITY_MEANING in text and "the whole cascade" in text
    assert correlations["random_weights"] is True and correlations["warning"] == ev.RANDOM_WEIGHTS_NOTE
    for method in ("grad_cam", "guided_backprop"):
        assert len(correlations["spearman_abs"][method]) == len(steps)
        assert len(correlations["ssim"][method]) == len(steps)
    _, _, fewer, short = sanity(client, ["guided_backprop"], steps=2)
    assert short["steps"] == [s.label for s in steps[:2]] and f"2 of its {len(steps)} steps" in fewer


@pytest.mark.parametrize(
    ("api", "change", "message"),
    [
        ("evaluate", {"steps": 1}, "Deletion/insertion steps: 1 is outside 2 to 50"),
        ("evaluate", {"steps": 51}, "Deletion/insertion steps: 51 is outside 2 to 50"),
        ("evaluate", {"steps": 2.5}, "steps must be a whole number from 2 to 50; got 2.5"),
        ("evaluate", {"methods": []}, "choose at least one method to evaluate"),
        ("evaluate", {"methods": ["cam", "grad_cam"], "layer": "layer3"}, "CAM does not apply here"),
        ("evaluate", {"methods": [m.id for m in cnnviz.list_methods()][:7]}, "at most 6 methods"),
        ("sanity", {"steps": 0}, "Randomization steps: 0 is outside 1 to 12"),
        ("sanity", {"methods": []}, "choose at least one method to check"),
        ("sanity", {"methods": ["cam", "grad_cam", "vanilla_gradient", "guided_backprop"]}, "at most 3"),
    ],
)
def test_bad_input_gets_one_clear_sentence_and_nothing_else(client, api, change, message):
    call_ = evaluate if api == "evaluate" else sanity
    with pytest.raises(gradio_client.exceptions.AppError, match=re.escape(message)):
        call_(client, **change)


def test_the_pools_model_is_untouched_by_evaluate_and_sanity(client):
    evaluate(client, steps=3)  # the pool's model is loaded and cached
    model = zoo.load_model("test_resnet", weights="random")  # the same cached instance
    before = model_state(model.module)
    evaluate(client, ["cam", "grad_cam", "vanilla_gradient"], steps=4)
    sanity(client, ["grad_cam", "guided_backprop", "vanilla_gradient"])
    assert zoo.load_model("test_resnet", weights="random") is model
    assert_same_state(before, model_state(model.module))


# ----------------------------------------------------------------------------- raw HTTP: the file guard


def evaluate_args(image: object) -> list:
    return [image, "test_resnet", ["grad_cam"], core.TOP1, core.FINAL_LABEL, 3] + [
        p.default for _, p in core.param_specs()
    ]


def sanity_args(image: object) -> list:
    return [image, "test_resnet", ["grad_cam"], core.TOP1, 2]


ARGS = {"evaluate": evaluate_args, "sanity": sanity_args}


@pytest.mark.parametrize("api", ["evaluate", "sanity"])
def test_both_endpoints_refuse_every_server_path_like_explain(server, outside, cache, api):  # noqa: F811
    answers = {}
    for name, path in attacks(outside, cache, server).items():
        for payload in payloads(path):
            answers[(name, json.dumps(payload)[:80])] = call(server, api, ARGS[api](payload))
    wrong = {k: v for k, v in answers.items() if v[0] != "error" or v[1].get("error") != guard.REFUSED_FILE}
    assert not wrong, wrong
    assert all(v[1].get("title") in ("Image refused", "Input refused") for v in answers.values())
    assert all(set(v[1]) <= {"error", "title", "duration", "visible"} for v in answers.values())
    path = upload(server, CAT)  # an upload still works
    event, data = call(server, api, ARGS[api]({"path": path, "meta": META}))
    assert event == "complete", data
    event, data = call(server, api, ARGS[api](None))
    assert event == "error" and "image" in data["error"].lower()


# ----------------------------------------------------------------------------- limits


def test_the_apps_time_budget_stops_evaluate_and_sanity():
    app = ui.App(dataclasses.replace(SETTINGS, time_limit_s=0.05))
    judge = ui_evaluate.Judge(app)
    picture = Image.open(CAT).convert("RGB")
    zoo.load_model("test_resnet", weights="random")  # cached: the budget stops the judging, not a load
    with pytest.raises(gr.Error, match=r"took longer than 0\.05 s"):
        ui.user_errors(judge.evaluate)(
            picture, "test_resnet", ["grad_cam"], core.TOP1, core.FINAL_LABEL, 50, progress=noop
        )
    with pytest.raises(gr.Error, match=r"took longer than 0\.05 s"):
        ui.user_errors(judge.sanity)(picture, "test_resnet", ["grad_cam"], core.TOP1, 12, progress=noop)


# ----------------------------------------------------------------------------- trained weights


@pytest.fixture(scope="module")
def trained_judge():
    settings = core.AppSettings(weights="packaged", allow_any_model=False, default_model=LITE0)
    return ui_evaluate.Judge(ui.App(settings))


def test_app_shows_the_librarys_numbers_on_trained_lite0(trained_judge, trained_lite0):
    picture = Image.open(COFFEE).convert("RGB")
    curves, table, scores = ui.user_errors(trained_judge.evaluate)(
        picture, LITE0, ["grad_cam", "guided_backprop"], core.TOP1, core.FINAL_LABEL, 20, progress=noop
    )
    model = trained_lite0
    x = model.preprocess(core.prepare_image(picture))
    ex = model.explain(x, ["grad_cam", "guided_backprop"])
    lib = ev.evaluate(model, x, ex, evaluation.EVALUATE_METRICS, steps=20, strict=False)
    assert scores["class"] == "espresso" and scores["random_weights"] is False and "warning" not in scores
    assert "RANDOM" not in table
    for method, label in (("grad_cam", "Grad-CAM"), ("guided_backprop", "Guided backpropagation")):
        for metric, value in lib.scores[method].items():
            assert scores["scores"][method][metric] == pytest.approx(float(value[0]), abs=1e-6)
        cells = table_rows(table)[label]
        assert cells[:2] == [f"{float(lib.scores[method][m][0]):.3f}" for m in ("deletion", "insertion")]
    assert (
        table_rows(table)["Grad-CAM"][2] == f"{100 * float(lib.scores['grad_cam']['average_drop'][0]):.1f}%"
    )
    assert scores["scores"]["grad_cam"]["insertion"] > 0.6  # espresso restored quickly by its map
    assert Image.open(curves).size[0] >= 800


def test_sanity_on_trained_lite0_separates_grad_cam_from_guided_backprop(trained_judge):
    model, _ = trained_judge.app.model(LITE0)
    before = model_state(model.module)
    picture = Image.open(COFFEE).convert("RGB")
    _, _, text, corr = ui.user_errors(trained_judge.sanity)(
        picture, LITE0, ["grad_cam", "guided_backprop"], core.TOP1, 3, progress=noop
    )
    assert_same_state(before, model_state(model.module))  # the library worked on a copy
    first = {m: corr["spearman_abs"][m][0] for m in ("grad_cam", "guided_backprop")}
    assert first["guided_backprop"] > 0.9 and first["grad_cam"] < first["guided_backprop"] - 0.25, first
    assert corr["steps"][0] == "classifier" and len(corr["steps"]) == 3
    assert "RANDOM" not in text and "fails the check" in text
    line = next(line for line in text.splitlines() if line.startswith("- **Guided backpropagation**"))
    assert f"ρ = {first['guided_backprop']:.2f}" in line and "fails the check" in line


def test_costly_method_parameters_are_bounded_like_explain():
    app = ui.App(dataclasses.replace(SETTINGS, max_samples=10))
    judge = ui_evaluate.Judge(app)
    picture = Image.open(CAT).convert("RGB")
    values = [p.default for _, p in core.param_specs()]
    values[[(m, p.name) for m, p in core.param_specs()].index(("smoothgrad", "n_samples"))] = 20
    args = (picture, "test_resnet", ["smoothgrad"], core.TOP1, core.FINAL_LABEL, 2, *values)
    with pytest.raises(
        gr.Error, match=r"n_samples = 20 is above this server's limit of 10 \(CNNVIZ_MAX_SAMPLES\)"
    ):
        ui.user_errors(judge.evaluate)(*args, progress=noop)
    with pytest.raises(gr.Error, match="SmoothGrad: the defaults are above this server's limits"):
        ui.user_errors(judge.sanity)(picture, "test_resnet", ["smoothgrad"], core.TOP1, 2, progress=noop)
    _, _, scores = ui.user_errors(judge.evaluate)(
        picture, "test_resnet", ["smoothgrad"], core.TOP1, core.FINAL_LABEL, 2, progress=noop
    )  # without values the default (25) runs at the limit, as /explain does
    assert set(scores["scores"]["smoothgrad"]) == {"deletion", "insertion"}


def test_the_sanity_tab_marks_methods_that_do_not_apply_to_the_model():
    judge = ui_evaluate.Judge(ui.App(SETTINGS))
    update = ui.user_errors(judge.on_model)("test_vit", ["cam", "grad_cam"])
    assert update["value"] == ["grad_cam"]  # CAM does not apply to class-token pooling
    assert ("CAM (n/a)", "cam") in update["choices"]
    demo = ui.build(SETTINGS)
    fns = [f for f in demo.fns.values() if [b.elem_id for b in f.outputs] == ["cnnviz-sanity-methods"]]
    assert len(fns) == 1 and fns[0].fn.__wrapped__.__func__ is ui_evaluate.Judge.on_model
    assert [b.label for b in fns[0].inputs] == ["Model", f"Methods (at most {evaluation.MAX_SANITY_METHODS})"]


def test_progress_is_reported_in_order_while_judging():
    judge = ui_evaluate.Judge(ui.App(SETTINGS))
    picture = Image.open(CAT).convert("RGB")
    seen: list[tuple[float, str]] = []

    def progress(fraction, desc=""):
        seen.append((float(fraction), desc))

    ui.user_errors(judge.evaluate)(
        picture, "test_resnet", ["grad_cam"], core.TOP1, core.FINAL_LABEL, 4, progress=progress
    )
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] >= 0 and fractions[-1] <= 1, seen
    assert {"explaining", "deletion and insertion", "drawing the curves"} <= {d for _, d in seen}, seen
    seen.clear()
    ui.user_errors(judge.sanity)(picture, "test_resnet", ["grad_cam"], core.TOP1, 3, progress=progress)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] <= 1, seen
    assert [d for _, d in seen if d.startswith("randomized")] == [
        f"randomized {i} of 3 steps" for i in (1, 2, 3)
    ]


def test_a_constant_map_reads_as_not_available_not_as_a_number():
    import torch

    check = ev.SanityCheck(
        steps=(ev.Step("classifier", ("fc.weight",)),),
        methods=("grad_cam",),
        maps={"grad_cam": [torch.rand(1, 4, 4), torch.zeros(1, 4, 4)]},
        spearman_abs={"grad_cam": torch.tensor([[float("nan")]])},
        spearman_signed={"grad_cam": torch.tensor([[float("nan")]])},
        ssim={"grad_cam": torch.tensor([[0.5]])},
        targets=torch.tensor([3]),
        seconds=(0.0, 0.0),
    )
    model = zoo.load_model("test_resnet", weights="random")
    record = evaluation.sanity_record(check, model, "x", 0.1)
    assert record["spearman_abs"] == {"grad_cam": [None]} and record["ssim"] == {"grad_cam": [0.5]}
    text = evaluation.sanity_text(check, model, "x", 1, 0.1)
    assert "ρ = n/a once the classifier is randomized" in text and "constant" in text
    assert "| Grad-CAM (RANDOM WEIGHTS) | n/a |" in text
    view = Image.new("RGB", (32, 32))
    strip = evaluation.sanity_strip(check, view, random_weights=True)
    assert strip.width >= 2 * evaluation.STRIP_CELL
