"""The command line: registry-driven choices, one-line errors, and what `explain` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnviz
from cnnviz.cli import main
from cnnviz.cli.explain import RANDOM_WEIGHTS_NOTE, expand_images

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
METHOD_IDS = [m.id for m in cnnviz.list_methods()]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The one ``cnnviz ...: error: ...`` line (notes such as "random weights" may precede it)."""
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- help, choices, errors


def _explain_argv(image: str, model: str, out) -> list[str]:
    return ["explain", str(EXAMPLES / image), "--model", model, "--weights", "random", "--out", str(out)]


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("explain", "models", "inspect", "methods", "sweep"):
        assert command in out


@pytest.mark.parametrize("method", METHOD_IDS)
def test_explain_help_offers_every_registered_method(capsys, method):
    code, out, _ = run(capsys, "explain", "--help")
    assert code == 0
    assert method in out


def test_methods_prints_the_registry(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    for m in cnnviz.list_methods():
        assert m.id in out and m.url in out and m.label in out


def test_method_typo_gets_close_matches_and_exit_2(capsys):
    image = str(EXAMPLES / "chelsea.jpg")
    code, _, err = run(capsys, "explain", image, "--model", "resnet18", "--methods", "grad_cam,gradcam")
    assert code == 2
    line = one_error_line(err)
    assert "'gradcam'" in line and "Did you mean 'grad_cam'" in line


def test_model_typo_gets_close_matches_and_exit_2(capsys):
    code, _, err = run(capsys, "inspect", "resnt18")
    assert code == 2
    line = one_error_line(err)
    assert "resnt18" in line and "resnet18" in line


def test_sweep_pattern_that_matches_nothing_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "sweep", "resnett18", "--out", str(tmp_path / "s.csv"))
    assert code == 2
    assert "resnet18" in one_error_line(err)
    assert not (tmp_path / "s.csv").exists()


def test_missing_image_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "explain", str(tmp_path / "nope.jpg"), "--model", "resnet18")
    assert code == 2
    assert "nope.jpg" in one_error_line(err)


def test_argparse_errors_return_2_instead_of_raising(capsys):
    code, _, err = run(capsys, "explain", "x.jpg")  # --model missing
    assert code == 2
    assert "--model" in err


def test_hub_weights_unavailable_is_one_line_exit_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    image = str(EXAMPLES / "chelsea.jpg")
    code, _, err = run(capsys, "explain", image, "--model", "resnet10t", "--weights", "hub", "--quiet")
    assert code == 1
    line = one_error_line(err)
    assert "random" in line  # the message says how to get going without the Hub


# ---------------------------------------------------------------- image expansion


def test_expand_images_folders_globs_files(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.JPEG").write_bytes(b"x")
    assert expand_images([str(tmp_path)]) == [tmp_path / "a.jpg", tmp_path / "b.png"]
    assert expand_images([str(tmp_path / "**" / "*.JPEG")]) == [sub / "c.JPEG"]
    both = expand_images([str(tmp_path / "a.jpg"), str(tmp_path), str(sub)])
    assert both == [tmp_path / "a.jpg", tmp_path / "b.png", sub / "c.JPEG"]  # no duplicates


def test_expand_images_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no image"):
        expand_images([str(tmp_path)])


# ---------------------------------------------------------------- explain end to end


def test_explain_writes_overlays_maps_and_a_truthful_manifest(capsys, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        (images / name).write_bytes((EXAMPLES / name).read_bytes())
    out = tmp_path / "out"
    argv = ["explain", str(images), "--model", "resnet18", "--weights", "random", "--out", str(out)]
    code, _, err = run(capsys, *argv, "--methods", "all")
    assert code == 0, err
    assert "random weights" in err
    for stem in ("chelsea", "coffee"):
        folder = out / stem
        manifest = json.loads((folder / "manifest.json").read_text())
        model_view = Image.open(folder / "input.png")
        assert manifest["model"]["weights_source"] == "random"
        assert manifest["model"]["weights"] == RANDOM_WEIGHTS_NOTE
        assert manifest["anatomy"]["layout"] == "NCHW" and manifest["anatomy"]["cam_exact"] is True
        assert set(manifest["versions"]) == {"cnnviz", "torch", "timm"}
        assert set(manifest["methods"]) == set(METHOD_IDS)
        top5 = manifest["top5"]
        assert len(top5) == 5
        assert [t["probability"] for t in top5] == sorted((t["probability"] for t in top5), reverse=True)
        assert manifest["target"]["index"] == top5[0]["index"] and manifest["target"]["chosen"] == "top-1"
        assert all(t["class_name"] for t in top5)
        h, w = manifest["anatomy"]["shape"][1:]
        for mid in METHOD_IDS:
            entry = manifest["methods"][mid]
            assert entry["status"] == "ok"
            raw = np.load(folder / entry["raw"])
            assert list(raw.shape) == entry["raw_shape"]
            is_cam = cnnviz.get_method(mid).family == "cam"
            assert raw.shape == ((h, w) if is_cam else (3, *model_view.size[::-1]))
            assert Image.open(folder / entry["overlay"]).size == model_view.size
        # CAM's identity, read back from the files: mean of the saved map + offset = the target's logit.
        cam = np.load(folder / "cam.npy").astype(np.float64)
        logit = manifest["target"]["logit"]
        assert abs(cam.mean() + manifest["methods"]["cam"]["offset"] - logit) <= 1e-4 * max(1.0, abs(logit))


def test_explain_target_is_honoured(capsys, tmp_path):
    argv = _explain_argv("chelsea.jpg", "resnet18", tmp_path)
    code, _, err = run(capsys, *argv, "--methods", "grad_cam", "--target", "7", "--quiet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "chelsea" / "manifest.json").read_text())
    assert manifest["target"]["index"] == 7 and manifest["target"]["chosen"] == "--target"


def test_explain_target_out_of_range_is_exit_2(capsys, tmp_path):
    argv = _explain_argv("chelsea.jpg", "resnet18", tmp_path)
    code, _, err = run(capsys, *argv, "--target", "5000", "--quiet")
    assert code == 2
    assert "5000" in one_error_line(err)


def test_explain_layer_typo_gets_close_matches(capsys, tmp_path):
    argv = _explain_argv("chelsea.jpg", "resnet18", tmp_path)
    code, _, err = run(capsys, *argv, "--methods", "grad_cam", "--layer", "layer3x", "--quiet")
    assert code == 2
    assert "'layer3'" in one_error_line(err)


def test_refused_method_is_reported_not_fatal(capsys, tmp_path):
    # MobileNetV3's head is pool -> conv -> hardswish -> linear: CAM does not apply.
    argv = _explain_argv("coffee.jpg", "mobilenetv3_small_050", tmp_path)
    code, _, err = run(capsys, *argv, "--methods", "cam,grad_cam", "--quiet")
    assert code == 0, err
    assert "cam does not apply" in err
    manifest = json.loads((tmp_path / "coffee" / "manifest.json").read_text())
    assert manifest["methods"]["cam"]["status"] == "refused"
    assert manifest["methods"]["cam"]["reason"] == manifest["anatomy"]["cam_reason"] != ""
    assert manifest["methods"]["grad_cam"]["status"] == "ok"
    assert not (tmp_path / "coffee" / "cam.png").exists()


def test_all_methods_refused_is_exit_2_with_the_reason(capsys, tmp_path):
    argv = _explain_argv("coffee.jpg", "mobilenetv3_small_050", tmp_path)
    code, _, err = run(capsys, *argv, "--methods", "cam", "--quiet")
    assert code == 2
    assert "cam does not apply" in err and "none of the requested methods" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- models, inspect


def test_inspect_prints_anatomy_and_every_methods_applicability(capsys):
    code, out, _ = run(capsys, "inspect", "mobilenetv3_small_050")
    assert code == 0
    assert "random weights" in out and "final map" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(METHOD_IDS) <= set(lines)
    assert "no:" in lines["cam"] and "applies" in lines["grad_cam"]


def test_models_pattern_is_limited_and_says_so(capsys):
    code, out, _ = run(capsys, "models", "resnet1*", "--limit", "2")
    assert code == 0
    assert "showing 2" in out
    rows = [line for line in out.splitlines() if line.startswith("resnet1")]
    assert len(rows) == 2
    assert all("NCHW" in r and "exact" in r for r in rows)


def test_models_without_pattern_lists_the_curated_zoo(capsys, monkeypatch):
    from cnnviz import zoo

    entries = [e for e in zoo.curated() if e.id.startswith(("resnet18", "mobilenetv3"))]
    assert len(entries) >= 2
    monkeypatch.setattr(zoo, "curated", lambda: tuple(entries))
    code, out, _ = run(capsys, "models")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {e.id for e in entries}
    for e in entries:
        anatomy = zoo.load_model(e.id, weights="random", device="cpu").anatomy
        assert anatomy.layout in rows[e.id]
        assert ("exact" in rows[e.id]) == anatomy.cam_exact and ("no (" in rows[e.id]) != anatomy.cam_exact


def test_layer_moves_grad_cam_and_refuses_cam(capsys, tmp_path):
    argv = _explain_argv("chelsea.jpg", "resnet18", tmp_path)
    code, _, err = run(capsys, *argv, "--methods", "cam,grad_cam", "--layer", "layer3", "--quiet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "chelsea" / "manifest.json").read_text())
    assert manifest["layer"] == "layer3"
    assert (
        manifest["methods"]["cam"]["status"] == "refused"
        and "final map" in manifest["methods"]["cam"]["reason"]
    )
    assert manifest["methods"]["grad_cam"]["layer"] == "layer3"
    assert np.load(tmp_path / "chelsea" / "grad_cam.npy").shape == (14, 14)  # layer3 of a 224 input


def test_unreadable_image_is_reported_and_the_others_still_written(capsys, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "coffee.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes())
    out = tmp_path / "out"
    argv = ["explain", str(images), "--model", "resnet18", "--weights", "random", "--out", str(out)]
    code, _, err = run(capsys, *argv, "--methods", "grad_cam", "--quiet")
    assert code == 1
    assert "broken.jpg" in one_error_line(err)
    assert (out / "coffee" / "manifest.json").exists() and not (out / "broken").exists()


def test_param_reaches_the_method_and_the_manifest(capsys, tmp_path, monkeypatch):
    from cnnviz.methods import registry
    from cnnviz.methods.registry import Param, Result, register_method

    seen = []

    @register_method(
        id="_cli_probe",
        label="probe",
        family="cam",
        paper="-",
        url="https://e.org",
        formula="-",
        summary="-",
        cost="-",
        requires=(),
        needs={"map"},
        params=(
            Param("k", 2, "a number", low=1, high=9),
            Param("mode", "sum", "reduce", choices=("sum", "max")),
        ),
    )
    def probe(passes, params, runner):
        seen.append(dict(params))
        return Result(passes.map.sum(1))

    try:
        argv = [
            *_explain_argv("chelsea.jpg", "resnet18", tmp_path),
            "--methods",
            "_cli_probe,grad_cam",
            "--quiet",
        ]
        code, _, err = run(capsys, *argv, "--param", "_cli_probe.k=7", "--param", "mode=max")
        assert code == 0, err
        assert seen == [{"k": 7, "mode": "max"}]
        manifest = json.loads((tmp_path / "chelsea" / "manifest.json").read_text())
        assert manifest["methods"]["_cli_probe"]["params"] == {"k": 7, "mode": "max"}
        assert manifest["methods"]["grad_cam"]["params"] == {}
        for bad, why in [
            ("k=10", "out of range"),
            ("_cli_probe.kk=3", "Did you mean 'k'"),
            ("k", "expected NAME=VALUE"),
            ("nope=1", "no requested method has a parameter 'nope'"),
            ("score=1", "no requested method"),
        ]:
            code, _, err = run(capsys, *argv, "--param", bad)
            assert code == 2 and why in one_error_line(err), (bad, err)
        assert len(seen) == 1  # every bad value was refused before any work
        code, out, _ = run(capsys, "methods")
        assert "--param _cli_probe.k: int in [1, 9], default 2: a number" in out
    finally:
        registry.METHODS.remove("_cli_probe")


def test_load_turns_only_argument_errors_into_usage_errors(monkeypatch):
    from cnnviz import zoo
    from cnnviz.cli.util import UsageError, load
    from cnnviz.common import ArgumentError

    for name, weights, device in (
        ("resnt18", "random", None),
        ("resnet18", "radnom", None),
        ("resnet18", None, "tpu"),
    ):
        with pytest.raises(UsageError):
            load(name, weights, device)
    with pytest.raises(
        ArgumentError, match="did you mean resnet18"
    ):  # still a ValueError for library callers
        cnnviz.load_model("resnt18", weights="random")

    def broken(*args, **kwargs):
        raise ValueError("a layer of this model rejects its own config")

    monkeypatch.setattr(zoo, "load_model", broken)
    with pytest.raises(ValueError, match="rejects its own config") as caught:
        load("resnet18", "random")
    assert not isinstance(caught.value, UsageError)  # a failure of the work, not of the command line
