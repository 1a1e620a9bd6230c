"""The Gradio app, launched on 127.0.0.1 and driven through gradio_client like any API user.

Tiny timm models (`test_resnet`, `test_vit`) on random weights keep each call to a second or two.
"""

from __future__ import annotations

import json
import os
import zipfile
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import running_app

import cnnviz
from cnnviz import render
from cnnviz.app import models, results
from cnnviz.app import settings as core

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.app

EXAMPLE = core.EXAMPLES_DIR / "chelsea.jpg"
SETTINGS = core.AppSettings(weights="random", allow_any_model=True, default_model="test_resnet")


@pytest.fixture(scope="module")
def client():
    with running_app(SETTINGS) as url:
        yield gradio_client.Client(url, verbose=False, analytics_enabled=False)


def explain(client, methods, target=core.TOP1, image=EXAMPLE, model="test_resnet"):
    return client.predict(
        gradio_client.handle_file(str(image)),
        model,
        methods,
        target,
        core.FINAL_LABEL,
        render.COLORMAPS[0],
        0.5,
        api_name="/explain",
    )


def read_zip(path: str) -> tuple[dict[str, np.ndarray], dict]:
    with zipfile.ZipFile(path) as zf:
        maps = {}
        for name in zf.namelist():
            if name.startswith("maps/"):
                with zf.open(name) as fh:
                    maps[Path(name).stem] = np.load(fh)
        return maps, json.loads(zf.read("meta.json"))


def test_named_endpoints_are_explain_and_compare(client):
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/explain", "/compare"} <= set(named)
    assert all(not name.startswith("/on_") for name in named), named


def test_explain_two_methods_returns_predictions_overlays_and_maps(client):
    predictions, gallery, anatomy, _notes, archive = explain(client, ["grad_cam", "guided_backprop"])
    confidences = predictions["confidences"]
    assert len(confidences) == 5
    probs = [c["confidence"] for c in confidences]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    top1 = predictions["label"]
    maps, meta = read_zip(archive)
    assert (
        models.short_name(meta["target"]["class_name"]) == top1
        and meta["model"]["weights_source"] == "random"
    )
    assert meta["methods"]["grad_cam"]["raw"] == "maps/grad_cam.npy" and meta["target"]["chosen"] == "top-1"

    labels = [cnnviz.get_method(m).label for m in ("grad_cam", "guided_backprop")]
    assert [item["caption"].split(" · ")[0] for item in gallery] == labels
    for item in gallery:  # method · target class · layer · random weights
        assert f" · {top1} · " in item["caption"] and item["caption"].endswith("random weights")
    size = timm.create_model("test_resnet").pretrained_cfg["input_size"][1:]
    overlays = [np.asarray(Image.open(item["image"]).convert("RGB"), dtype=float) for item in gallery]
    assert all(o.shape[:2] == tuple(size) for o in overlays)
    assert np.abs(overlays[0] - overlays[1]).mean() > 1  # two methods, two different pictures

    assert set(maps) == {"grad_cam", "guided_backprop"}
    assert maps["grad_cam"].ndim == 2 and maps["guided_backprop"].shape == (3, *size)
    assert "random weights" in anatomy and "CAM" in anatomy


def test_target_class_changes_the_map_and_top1_index_reproduces_it(client):
    *_, default_zip = explain(client, ["grad_cam"])
    maps, meta = read_zip(default_zip)
    top1 = meta["target"]["index"]
    other = (top1 + 1) % 1000
    *_, same_zip = explain(client, ["grad_cam"], target=str(top1))
    gallery_other = explain(client, ["grad_cam"], target=f"{other} · whatever label")[1]
    *_, other_zip = explain(client, ["grad_cam"], target=str(other))
    np.testing.assert_allclose(read_zip(same_zip)[0]["grad_cam"], maps["grad_cam"], rtol=1e-5, atol=1e-6)
    other_maps, other_meta = read_zip(other_zip)
    assert other_meta["target"]["index"] == other
    assert not np.allclose(other_maps["grad_cam"], maps["grad_cam"])
    assert f" · {models.short_name(other_meta['target']['class_name'])} · " in gallery_other[0]["caption"]


def test_bad_file_gives_readable_error_and_server_keeps_serving(client, tmp_path):
    bad = tmp_path / "not-a-picture.png"
    bad.write_text("this is text, not a PNG\n")
    with pytest.raises(gradio_client.exceptions.AppError, match="not an image"):
        explain(client, ["grad_cam", "cam"], image=bad)
    with pytest.raises(gradio_client.exceptions.AppError, match="target class 'no such class'"):
        explain(client, ["grad_cam"], target="no such class")
    with pytest.raises(gradio_client.exceptions.AppError, match="grad_cma"):
        explain(client, ["grad_cma"])
    with pytest.raises(gradio_client.exceptions.AppError, match="test_resnt"):
        explain(client, ["cam"], model="test_resnt")
    predictions, gallery, *_ = explain(client, ["grad_cam", "cam"])
    assert len(gallery) == 2 and len(predictions["confidences"]) == 5


def test_readme_client_example_runs(client, capsys):
    readme = (core.ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    example = next(b for b in blocks if "from gradio_client import" in b)
    assert 'api_name="/explain"' in example
    for documented, here in [
        ('"http://127.0.0.1:7860/"', repr(client.src)),
        ('"resnet50.a1_in1k"', '"test_resnet"'),
        ('"examples/chelsea.jpg"', repr(str(EXAMPLE))),
    ]:
        assert documented in example
        example = example.replace(documented, here)
    exec(compile(example, "README.md", "exec"), {})  # the example as documented, on the test server
    printed = capsys.readouterr().out
    assert f"{cnnviz.get_method('grad_cam').label} · " in printed and ".zip" in printed


def test_concurrent_requests_all_succeed(client):
    jobs = [
        client.submit(
            gradio_client.handle_file(str(EXAMPLE)), "test_resnet", ["cam"], core.TOP1, core.FINAL_LABEL,
            render.COLORMAPS[0], 0.5, api_name="/explain",
        )
        for _ in range(3)
    ]  # fmt: skip
    wait(jobs, timeout=120)
    captions = [job.result()[1][0]["caption"] for job in jobs]
    assert len(set(captions)) == 1 and captions[0].startswith(f"{cnnviz.get_method('cam').label} · ")


def test_compare_returns_one_grid_with_refusals_as_tiles(client):
    models, methods = ["test_resnet", "test_vit"], ["cam", "grad_cam"]
    grid, table, archive = client.predict(
        gradio_client.handle_file(str(EXAMPLE)), models, methods, render.COLORMAPS[0], 0.5, True,
        api_name="/compare",
    )  # fmt: skip
    width, height = Image.open(grid).size
    assert width >= len(methods) * results.CELL and height >= len(models) * results.CELL
    assert all(f"`{m}." in table for m in models)  # canonical names: arch.tag
    maps, meta = read_zip(archive)
    assert meta["models"] == models
    outcomes = set()
    for name in models:
        anatomy = cnnviz.inspect(timm.create_model(name))
        for method in methods:
            refused = cnnviz.get_method(method).refusal(anatomy) is not None
            drawn = any(k.startswith(f"{name}.") and k.endswith(f"__{method}") for k in maps)
            assert drawn != refused, (name, method)
            outcomes.add(refused)
    assert outcomes == {True, False}  # the case covers a drawn cell and a refused (grey) one


def test_compare_rejects_too_many_models(client):
    with pytest.raises(gradio_client.exceptions.AppError, match="at most 6 models"):
        client.predict(
            gradio_client.handle_file(str(EXAMPLE)), [f"test_resnet{i}" for i in range(7)], ["cam"],
            render.COLORMAPS[0], 0.5, True, api_name="/compare",
        )  # fmt: skip


# ----------------------------------------------------------------------------- no server needed


def test_building_the_app_loads_no_model(monkeypatch):
    from cnnviz import zoo
    from cnnviz.app import ui

    def refuse(*args, **kwargs):
        raise AssertionError("start-up must not load a model")

    monkeypatch.setattr(zoo, "load_model", refuse)
    demo = ui.build(SETTINGS)
    names = {d.api_name for d in demo.fns.values()}
    assert {"explain", "compare"} <= names


def test_settings_from_env_defaults_and_errors():
    s = core.AppSettings.from_env({"CNNVIZ_DEFAULT_MODEL": "test_resnet"})
    assert (s.weights, s.allow_any_model, s.default_model) == ("auto", True, "test_resnet")
    on_spaces = core.AppSettings.from_env({"SPACE_ID": "me/cnnviz", "CNNVIZ_DEFAULT_MODEL": "x"})
    assert on_spaces.allow_any_model is False
    with pytest.raises(ValueError, match="CNNVIZ_WEIGHTS='hug'"):
        core.AppSettings.from_env({"CNNVIZ_WEIGHTS": "hug", "CNNVIZ_DEFAULT_MODEL": "x"})
    with pytest.raises(ValueError, match="CNNVIZ_ALLOW_ANY_MODEL"):
        core.AppSettings.from_env({"CNNVIZ_ALLOW_ANY_MODEL": "maybe", "CNNVIZ_DEFAULT_MODEL": "x"})


def test_free_text_models_only_where_allowed():
    curated = [mid for _, mid in core.model_choices()]
    strict = core.AppSettings(weights="random", allow_any_model=False, default_model=curated[0])
    assert core.resolve_model(curated[-1], strict) == curated[-1]
    assert core.resolve_model(core.model_choices()[0][0], strict) == curated[0]  # "Family · Label"
    assert core.resolve_model("", strict) == curated[0]
    with pytest.raises(ValueError, match="not in this deployment's list"):
        core.resolve_model("test_resnet", strict)
    assert core.resolve_model("test_resnet", SETTINGS) == "test_resnet"


def test_methods_offered_follow_the_anatomy_and_layer():
    anatomy = cnnviz.inspect(timm.create_model("test_vit"))
    choices, refused = core.method_status(anatomy, None)
    assert [mid for _, mid in choices] == [m.id for m in cnnviz.list_methods()]
    assert refused, "test_vit pools its class token: CAM must be refused"
    for label, mid in choices:
        reason = cnnviz.get_method(mid).refusal(anatomy)
        assert refused.get(mid) == reason and label.endswith("(n/a)") == (reason is not None)
    kept = core.kept_methods([*refused, "grad_cam"], refused)
    assert kept == ["grad_cam"]
    resnet = cnnviz.inspect(timm.create_model("test_resnet"))
    assert core.method_status(resnet, None)[1] == {}
    _, refused_early = core.method_status(resnet, resnet.stages[-2])
    assert "cam" in refused_early  # CAM needs the final map's class weights


def test_target_and_layer_parsing():
    names = ["tench", "goldfish, Carassius auratus", "crane", "crane"]
    assert core.parse_target(core.TOP1, names) is None and core.parse_target("", names) is None
    assert core.parse_target("top-1", names) is None
    assert core.parse_target("1 · goldfish", names) == 1 and core.parse_target("Goldfish", names) == 1
    assert core.parse_target("carassius auratus", names) == 1 and core.parse_target("crane", names) == 2
    assert core.parse_target(3, names) == 3
    with pytest.raises(ValueError, match="out of range"):
        core.parse_target("9", names)
    with pytest.raises(ValueError, match="goldfish"):
        core.parse_target("goldfsh", names)
    anatomy = cnnviz.inspect(timm.create_model("test_resnet"))
    assert core.parse_layer(core.FINAL_LABEL, anatomy) == anatomy.source
    assert core.parse_layer(anatomy.stages[-1], anatomy) == anatomy.stages[-1]
    with pytest.raises(ValueError, match="not a stage"):
        core.parse_layer("layer99", anatomy)


def test_label_dict_keeps_repeated_names_apart():
    top = [(134, "crane", 0.5), (517, "crane", 0.3), (1, "goldfish, Carassius auratus", 0.2)]
    assert results.label_dict(top) == {"crane (#134)": 0.5, "crane (#517)": 0.3, "goldfish": 0.2}


def test_methods_and_support_pages_come_from_the_registry_and_zoo():
    page = core.methods_markdown()
    for m in cnnviz.list_methods():
        assert f"(`{m.id}`)" in page and m.url in page and m.formula.strip() in page


def test_support_page_shows_the_sweep_summary_else_the_curated_list(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# a sweep summary written by this test\n", encoding="utf-8")
    monkeypatch.setattr(core, "SUPPORT_SUMMARY", summary)
    assert core.support_markdown() == summary.read_text(encoding="utf-8")
    monkeypatch.setattr(core, "SUPPORT_SUMMARY", tmp_path / "missing.md")
    page = core.support_markdown()
    assert "has not been run" in page
    assert all(f"`{e.id}`" in page for e in cnnviz.zoo.curated())


def test_downloads_folder_prunes_old_zips():
    archives = results.ArchiveDir(max_age_s=60)
    stale, fresh = archives.new_zip("a"), archives.new_zip("b")
    os.utime(stale, (0, 0))
    newest = archives.new_zip("model/with:odd name")
    assert not stale.exists() and fresh.exists() and newest.exists()
    assert newest.parent == archives.path and "/" not in newest.name and ":" not in newest.name


def test_method_parameters_are_inputs_built_from_the_registry(client):
    specs = core.param_specs()
    assert ("score_cam", cnnviz.get_method("score_cam").param("batch_size")) in specs
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/explain"]
    assert len(named["parameters"]) == 7 + len(specs)
    values = [p.default for _, p in specs]
    at = next(i for i, (mid, p) in enumerate(specs) if (mid, p.name) == ("score_cam", "batch_size"))
    values[at] = 4
    args = [
        gradio_client.handle_file(str(EXAMPLE)),
        "test_resnet",
        ["score_cam"],
        core.TOP1,
        core.FINAL_LABEL,
    ]
    out = client.predict(*args, render.COLORMAPS[0], 0.5, *values, api_name="/explain")
    assert len(out[1]) == 1
    values[at] = 0  # out of range: refused with the parameter's name and range, before any work
    with pytest.raises(Exception, match=r"batch_size"):
        client.predict(*args, render.COLORMAPS[0], 0.5, *values, api_name="/explain")
    cleared = core.param_values([*values[:at], None, *values[at + 1 :]])  # an input left empty
    assert "batch_size" not in cleared["score_cam"] and cleared["score_cam"]["max_channels"] == 0
    page = core.methods_markdown()
    assert "**Parameter** `batch_size`" in page and "**Where it misleads**" in page
