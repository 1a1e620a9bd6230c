"""What an API user and a returning operator see: named, typed endpoints; one number format; no litter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from cnnviz.app import models, results, ui, widgets
from cnnviz.app import settings as core

SETTINGS = core.AppSettings(weights="random", allow_any_model=True, default_model="test_resnet")


def test_every_api_input_and_output_is_named_and_typed():
    info = ui.build(SETTINGS).get_api_info()["named_endpoints"]
    for name in ("/explain", "/compare"):
        labels = [r["label"] for r in info[name]["returns"]] + [p["label"] for p in info[name]["parameters"]]
        assert all(label and not label.startswith("value_") for label in labels), (name, labels)
        image = info[name]["parameters"][0]
        assert image["type"]["description"] == widgets.UPLOAD_ONLY
    types = {p["parameter_name"]: p["python_type"]["type"] for p in info["/explain"]["parameters"]}
    assert types["model_name"] == types["target"] == types["layer"] == "str"  # typed text, not one literal
    assert types["alpha"] == "float" and types["methods"].startswith("list[Literal['cam'")
    compare = {p["parameter_name"]: p["python_type"]["type"] for p in info["/compare"]["parameters"]}
    assert compare["models"] == "list[str]" and compare["shared_scale"] == "bool"


def test_one_percent_rule():
    assert [models.percent(p) for p in (0.001, 0.005, 0.0149, 0.125, 0.995, 1.0)] == [
        "0%", "1%", "1%", "13%", "100%", "100%",
    ]  # fmt: skip


def test_folders_left_by_crashed_runs_are_removed_at_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    parent = Path(tempfile.gettempdir())
    crashed = parent / f"{results.ARCHIVE_PREFIX}{int(dead.stdout)}-test"
    mine = parent / f"{results.ARCHIVE_PREFIX}{os.getpid()}-test"
    old_style = parent / f"{results.ARCHIVE_PREFIX}oldtest"
    fresh_style = parent / f"{results.ARCHIVE_PREFIX}newtest"
    for folder in (crashed, mine, old_style, fresh_style):
        folder.mkdir(exist_ok=True)
        (folder / "cnnviz-x.zip").write_bytes(b"x" * 1000)
    os.utime(old_style, (time.time() - 7200, time.time() - 7200))
    try:
        archives = results.ArchiveDir()
        assert not crashed.exists() and not old_style.exists()
        assert mine.exists() and fresh_style.exists() and archives.path.exists()
        assert archives.path.name.startswith(f"{results.ARCHIVE_PREFIX}{os.getpid()}-")
    finally:
        for folder in (crashed, mine, old_style, fresh_style):
            for f in folder.glob("*"):
                f.unlink()
            if folder.exists():
                folder.rmdir()


def test_the_support_table_filters_by_name_family_layout_and_cam():
    headers, everything = core.support_table()
    if not everything:  # before the sweep has run the tab shows the curated list
        assert core.support_choices("family") == [core.ANY]
        return
    column = {h: i for i, h in enumerate(headers)}
    assert len(everything) == len(core.support_rows()) > 1000
    vits = core.support_table("VIT_")[1]
    assert vits and all("vit_" in row[column["model"]] for row in vits) and len(vits) < len(everything)
    exact_nhwc = core.support_table("", core.ANY, "NHWC", "True")[1]
    assert exact_nhwc
    assert all(r[column["layout"]] == "NHWC" and r[column["CAM exact"]] == "True" for r in exact_nhwc)
    assert isinstance(everything[0][column["params (M)"]], float)  # sorts as a number
    families = core.support_choices("family")
    assert families[0] == core.ANY and "resnet" in families
    assert all(r[column["family"]] == "resnet" for r in core.support_table(family="resnet")[1])
    demo = ui.build(SETTINGS)
    tables = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "cnnviz-support"]
    assert len(tables) == 1 and len(tables[0].value["data"]) == len(everything)


def test_a_shared_scale_comes_with_a_colour_bar_and_is_not_the_default():
    import numpy as np

    from cnnviz import render, zoo

    picture = Image.open(core.EXAMPLES_DIR / "chelsea.jpg").convert("RGB")
    rows = []
    for name in ("test_resnet", "test_convnext"):
        model = zoo.load_model(name, weights="random")
        ex = model.explain(model.preprocess(picture), ["grad_cam", "guided_backprop"], strict=False)
        rows.append(results.CompareRow(model, ex, model.model_view(picture)))
    methods = ["grad_cam", "guided_backprop"]
    own, *_ = results.compare_grid(rows, methods, "jet", 0.5, shared=False)
    shared, *_ = results.compare_grid(rows, methods, "jet", 0.5, shared=True)
    assert shared.height == own.height + 6 + 2 * results.LEGEND_ROW
    legend = np.asarray(shared)[own.height :]
    bar = legend[6 + 3 + 7]  # the middle line of the first method's bar
    colours = {tuple(px) for px in bar}
    jet = {tuple(c) for c in np.asarray(render.colorize(np.linspace(0, 1, 200)[None], "jet"))[0]}
    assert len(colours & jet) > 50  # the colormap's colours, from low to high
    low, high = results.shared_scales(rows, methods)["grad_cam"]
    assert low <= min(float(r.explanation["grad_cam"].raw.min()) for r in rows)
    assert high >= max(float(r.explanation["grad_cam"].raw.max()) for r in rows)
    demo = ui.build(SETTINGS)
    box = next(
        b
        for b in demo.blocks.values()
        if getattr(b, "label", "") == "One colour scale per method across models"
    )
    assert box.value is False and "where the models look" in box.info


def test_loading_progress_is_shown_on_the_anatomy_panel_not_over_the_methods_note():
    config = ui.build(SETTINGS).get_config_file()
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    on_model = [d for d in config["dependencies"] if d["api_name"] in ("on_model", "on_model_1")]
    assert on_model and all([ids[i] for i in d["show_progress_on"]] == ["cnnviz-anatomy"] for d in on_model)
    on_layer = [d for d in config["dependencies"] if d["api_name"] == "on_layer"]
    assert on_layer[0]["show_progress"] == "hidden"
