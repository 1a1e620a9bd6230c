"""``cnnviz evaluate`` and ``cnnviz metrics``: scores CSV, curves PNG, summary, resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import cnnviz.evaluate as ev
from cnnviz.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LITE0 = "tf_efficientnet_lite0.in1k"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _argv(out: Path, *extra: str, weights: str = "packaged") -> list[str]:
    return [
        "evaluate",
        str(EXAMPLES / "chelsea.jpg"),
        str(EXAMPLES / "coffee.jpg"),
        "--model",
        LITE0,
        "--weights",
        weights,
        "--methods",
        "cam,grad_cam,vanilla_gradient",
        "--steps",
        "3",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_command_lists_the_registry(capsys):
    code, out, _ = run(capsys, "metrics")
    assert code == 0
    for m in ev.list_metrics():
        assert m.id in out and m.url in out and f"{m.direction} is better" in out


def test_evaluate_writes_scores_curves_and_a_summary_and_resumes(capsys, tmp_path):
    code, out, err = run(capsys, *_argv(tmp_path))
    assert code == 0, err
    rows = _rows(tmp_path / "scores.csv")
    assert [(Path(r["image"]).name, r["method"]) for r in rows] == [
        (image, method)
        for image in ("chelsea.jpg", "coffee.jpg")
        for method in ("cam", "grad_cam", "vanilla_gradient")
    ]
    for r in rows:
        assert 0 <= float(r["deletion"]) <= 1 and 0 <= float(r["insertion"]) <= 1
        assert r["weights"] == "packaged"
        cam_family = r["method"] != "vanilla_gradient"
        assert (r["average_drop"] != "") == cam_family  # AD/IC only for CAM-family maps
    assert rows[3]["class_name"].startswith("espresso")
    assert (tmp_path / "chelsea" / "curves.png").stat().st_size > 1000
    summary = _rows(tmp_path / "summary.csv")
    grad_cam = next(r for r in summary if r["method"] == "grad_cam" and r["metric"] == "deletion")
    assert grad_cam["images"] == "2" and float(grad_cam["ci95_low"]) <= float(grad_cam["mean"])
    assert "95% bootstrap interval" in out and "vanilla_gradient: not scored by average_drop" in err
    # a second run resumes: nothing is recomputed, the CSV is the same
    before = (tmp_path / "scores.csv").read_text()
    code, _, err = run(capsys, *_argv(tmp_path))
    assert code == 0 and "resuming: 2 image(s)" in err
    assert (tmp_path / "scores.csv").read_text() == before
    # other settings in the same folder: refused, unless --fresh
    code, _, err = run(capsys, *_argv(tmp_path, "--metrics", "deletion"))
    assert code == 2 and "other settings" in err
    code, _, _ = run(capsys, *_argv(tmp_path, "--metrics", "deletion", "--fresh"))
    assert code == 0 and set(_rows(tmp_path / "scores.csv")[0]) >= {"deletion"}


def test_random_weights_are_written_in_every_file(capsys, tmp_path):
    code, out, err = run(capsys, *_argv(tmp_path, weights="random"))
    assert code == 0
    assert "RANDOM WEIGHTS" in err and "RANDOM WEIGHTS" in out
    assert all(r["weights"].startswith("RANDOM") for r in _rows(tmp_path / "scores.csv"))
    assert json.loads((tmp_path / "evaluate.json").read_text())["weights_source"] == "random"


def test_boxes_map_into_the_input_and_bad_ones_are_named(capsys, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x0,y0,x1,y1\nchelsea.jpg,100,20,380,280\ncoffee.jpg,5000,5000,6000,6000\n")
    argv = _argv(tmp_path / "out", "--metrics", "pointing_game,energy_in_box", "--boxes", str(boxes))
    code, _, err = run(capsys, *argv)
    assert code == 1  # coffee's box lies outside the picture: that image fails, chelsea is scored
    assert "coffee.jpg: the box" in err and "outside" in err
    rows = _rows(tmp_path / "out" / "scores.csv")
    assert {Path(r["image"]).name for r in rows} == {"chelsea.jpg"}
    assert all(r["pointing_game"] in ("0", "1") for r in rows)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--steps", "1"), "integer >= 2"),
        (("--metrics", "pointing_game"), "need the objects' boxes"),
        (("--metrics", "deletoin"), "'deletion'"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(capsys, tmp_path, extra, message):
    code, _, err = run(capsys, *_argv(tmp_path, *extra))
    assert code == 2 and message in err and "Traceback" not in err
