"""The zoo: models.yaml validation, names, the weights policy through a local Hub cache, the bounded
cache and `Model.explain`. Runs offline: real weights come from a Hub cache built under tmp_path."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from safetensors.torch import save_file
from timm.data import ImageNetInfo

import cnnviz
from cnnviz import zoo
from cnnviz.zoo import hub
from cnnviz.zoo.catalog import ZooConfigError, parse_catalog

TINY = "test_resnet.r160_in1k"  # a timm test model with a pretrained tag (timm/test_resnet.r160_in1k)
TINY_VIT = "test_vit.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _isolated_zoo(monkeypatch, tmp_path):
    """Each test: empty model cache, default bounds, an empty Hub cache, offline."""
    zoo.clear_cache()
    limits = zoo.configure_cache(max_models=4, max_mb=4096)
    for var in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "CNNVIZ_WEIGHTS",
        "CNNVIZ_DEVICE",
        "TRANSFORMERS_OFFLINE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    zoo.clear_cache()
    zoo.configure_cache(limits.max_models, limits.max_mb)


def write_hub_cache(cache_dir: Path, name: str, seed: int = 123) -> dict[str, torch.Tensor]:
    """Put `name`'s weights in the layout huggingface_hub reads:
    ``models--timm--NAME/{refs/main, snapshots/COMMIT/model.safetensors}``. Returns the tensors,
    drawn so that they differ from any random init."""
    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    model = timm.create_model(name, pretrained=False)
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(tensors, snapshot / "model.safetensors")
    return tensors


def same_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return set(state) == set(tensors) and all(torch.equal(state[k].cpu(), v) for k, v in tensors.items())


def picture(size=(200, 150), seed=0) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=gen) * 255).byte().numpy(), "RGB")


# ----------------------------------------------------------------------------- models.yaml


REQUIRED_ARCHS = {
    "resnet50": r"^resnet50$",
    "densenet121": r"^densenet121$",
    "vgg16_bn": r"^vgg16_bn$",
    "inception_v3": r"^inception_v3$",
    "xception": r"xception",
    "efficientnet_b0": r"^efficientnet_b0$",
    "efficientnetv2": r"efficientnetv2",
    "mobilenetv3_large_100": r"^mobilenetv3_large_100$",
    "regnet": r"^regnet",
    "ghostnet": r"^ghostnet",
    "convnext_tiny": r"^convnext_tiny$",
    "convnextv2": r"^convnextv2",
    "vit_base_patch16": r"^vit_base_patch16",
    "deit distilled": r"^deit.*distilled",
    "swin": r"^swin",
    "maxvit": r"^maxvit",
    "eva02 or beit": r"^(eva02|beit)",
    "fastvit": r"^fastvit",
}


def test_curated_list_covers_the_brief():
    entries = zoo.curated()
    assert len(entries) >= 30
    assert len({e.family for e in entries}) >= 15
    assert len({zoo._timm_module(e.id) for e in entries}) >= 15
    pretrained = set(timm.list_models(pretrained=True))
    for e in entries:
        cfg = timm.models.get_pretrained_cfg(e.id)
        assert e.id in pretrained and "." in e.id
        assert cfg.num_classes == 1000, e.id
        assert cfg.hf_hub_id, f"{e.id} is not on the Hub (Spaces preloads from there)"
        assert e.label and e.family and e.note and "\n" not in e.note
    archs = [e.arch for e in entries]
    missing = [k for k, pat in REQUIRED_ARCHS.items() if not any(re.search(pat, a) for a in archs)]
    assert not missing


def test_entries_are_frozen_and_know_their_line():
    entries = zoo.curated()
    lines = zoo.catalog_path().read_text().splitlines()
    for e in entries:
        assert lines[e.line - 1].strip() == f"- id: {e.id}"
    with pytest.raises(AttributeError):
        entries[0].label = "x"  # type: ignore[misc]


GOOD = """\
models:
  - id: resnet18.a1_in1k
    label: ResNet-18
    family: ResNet
    note: fine
"""


def catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_valid_catalog_with_overrides(tmp_path):
    text = GOOD + "    overrides:\n      layer: layer3\n"
    (entry,) = zoo.curated(catalog(tmp_path, text))
    assert entry == zoo.ZooEntry(
        "resnet18.a1_in1k", "ResNet-18", "ResNet", "fine", zoo.Overrides("layer3"), 2
    )


BAD = [
    (
        "unknown timm name",
        GOOD.replace("resnet18.a1_in1k", "resnet18.a1_in1kk"),
        2,
        "did you mean resnet18.a1_in1k",
    ),
    ("no tag", GOOD.replace("resnet18.a1_in1k", "resnet18"), 2, "arch.tag"),
    (
        "not a 1k head",
        GOOD.replace("resnet18.a1_in1k", "vit_base_patch16_224.augreg_in21k"),
        2,
        "21843-class",
    ),
    ("unknown key", GOOD.replace("label:", "lable:"), 3, "unknown key 'lable'"),
    ("wrong type", GOOD.replace("note: fine", "note: 3"), 5, "`note` must be a string, got int"),
    ("list instead of string", GOOD.replace("note: fine", "note: [a, b]"), 5, "`note` must be a string"),
    ("missing key", GOOD.replace("    family: ResNet\n", ""), 2, "missing family"),
    ("duplicate key", GOOD + "    note: again\n", 6, "duplicate key 'note'"),
    ("duplicate id", GOOD + GOOD.split("\n", 1)[1].replace("ResNet-18", "Other"), 6, "duplicate id"),
    (
        "duplicate label",
        GOOD + GOOD.split("\n", 1)[1].replace("resnet18.a1_in1k", "resnet18.tv_in1k"),
        6,
        "duplicate label 'ResNet-18'",
    ),
    ("unknown override", GOOD + "    overrides:\n      layr: x\n", 7, "unknown key 'layr'"),
    ("override type", GOOD + "    overrides:\n      layer: 4\n", 7, "`overrides.layer` must be a string"),
    ("overrides not a mapping", GOOD + "    overrides: layer3\n", 6, "expected a mapping"),
    ("top-level key", GOOD + "extra: 1\n", 6, "unknown key 'extra'"),
    ("models not a list", "models:\n  id: x\n", 2, "must be a list"),
    ("entry not a mapping", "models:\n  - resnet18.a1_in1k\n", 2, "expected a mapping"),
    ("syntax", GOOD + "  - id: [unclosed\n", None, "not valid YAML"),
    ("empty", "", None, "empty file"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_catalog_names_line_and_problem(tmp_path, text, line, fragment):
    path = catalog(tmp_path, text)
    with pytest.raises(ZooConfigError) as info:
        zoo.curated(path)
    message = str(info.value)
    assert str(path) in message and fragment in message
    if line is not None:
        assert f"line {line}," in message or f"line {line}:" in message
    assert "\n" not in message


def test_error_names_the_entry(tmp_path):
    with pytest.raises(ZooConfigError, match=r"entry 'resnet18.a1_in1k'"):
        parse_catalog(GOOD.replace("note: fine", "note: 3"))


def test_missing_catalog_file(tmp_path):
    with pytest.raises(ZooConfigError, match="cannot read the model list"):
        zoo.curated(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- names and settings


def test_resolve_names():
    assert zoo.resolve_name("resnet50.a1_in1k")[1].label == "ResNet-50"
    default_tag = timm.models.get_pretrained_cfg("resnet50").tag
    assert zoo.resolve_name("resnet50") == (
        f"resnet50.{default_tag}",
        zoo.resolve_name(f"resnet50.{default_tag}")[1],
    )
    assert zoo.resolve_name(f"timm/{TINY}") == (TINY, None)
    assert zoo.resolve_name("test_resnet")[0] == TINY
    no_weights = next(n for n in timm.list_models() if not timm.models.is_model_pretrained(n))
    assert zoo.resolve_name(no_weights) == (no_weights, None)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("resnt50", "did you mean resnet50"),
        ("resnet50.a1_in1kk", "no pretrained tag 'a1_in1kk'"),
        ("resnet50.a1_in1kk", "did you mean resnet50.a1_in1k"),
        ("", "expected a curated id or a timm model name"),
    ],
)
def test_unknown_names_get_close_matches(name, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        zoo.load_model(name)


def test_weights_policy(monkeypatch):
    assert zoo.weights_policy() == "hub"
    assert zoo.weights_policy(pretrained=False) == "random"
    assert zoo.weights_policy("hub", pretrained=True) == "hub"
    monkeypatch.setenv("CNNVIZ_WEIGHTS", "auto")
    assert zoo.weights_policy() == "auto"
    assert zoo.weights_policy("random") == "random"
    assert zoo.weights_policy(" Random ") == "random"
    monkeypatch.setenv("CNNVIZ_WEIGHTS", "radnom")
    with pytest.raises(
        ValueError, match=r"CNNVIZ_WEIGHTS: unknown weights policy 'radnom'.*did you mean 'random'"
    ):
        zoo.weights_policy()
    with pytest.raises(ValueError, match="contradicts"):
        zoo.weights_policy("random", pretrained=True)


def test_resolve_device(monkeypatch):
    assert zoo.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("CNNVIZ_DEVICE", "cpu")
    assert zoo.resolve_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="device: 'gpu0' is not a torch device"):
        zoo.resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CNNVIZ_DEVICE: 'cuda' asks for CUDA"):
        monkeypatch.setenv("CNNVIZ_DEVICE", "cuda")
        zoo.resolve_device()
    monkeypatch.delenv("CNNVIZ_DEVICE")
    assert zoo.resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert zoo.resolve_device().type == "cuda"


# ----------------------------------------------------------------------------- weights


def test_hub_weights_come_from_the_local_hub_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    tensors = write_hub_cache(cache, TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    was_offline = hf_constants.HF_HUB_OFFLINE
    m = zoo.load_model(TINY, weights="hub", device="cpu")
    assert same_state(m.module, tensors)
    assert (m.weights_source, m.random_weights, m.weights_note) == ("hub", False, "")
    assert "random" not in m.display_name and "random" not in repr(m)
    assert was_offline == hf_constants.HF_HUB_OFFLINE  # the call-time setting is undone
    zoo.clear_cache()
    assert same_state(zoo.load_model(TINY, pretrained=True).module, tensors)
    assert not same_state(zoo.load_model(TINY, weights="random").module, tensors)


def test_hub_cache_found_through_hf_home(monkeypatch, tmp_path):
    tensors = write_hub_cache(tmp_path / "home" / "hub", TINY, seed=7)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # as if imported without the variable
    assert same_state(zoo.load_model(TINY, weights="hub").module, tensors)


@pytest.mark.parametrize("env_offline", [True, False])
def test_offline_setting_is_read_at_call_time(monkeypatch, tmp_path, env_offline):
    """huggingface_hub reads HF_HUB_OFFLINE at import; the zoo honours its value at call time."""
    write_hub_cache(tmp_path / "hf-cache", TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if env_offline else "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", not env_offline)  # imported under the other value
    real_create = hub.timm.create_model
    seen = []

    def spy(name, pretrained, cache_dir):
        seen.append((hf_constants.HF_HUB_OFFLINE, cache_dir))
        return real_create(name, pretrained=False)  # no Hub traffic: only the setting is checked

    monkeypatch.setattr(hub.timm, "create_model", spy)
    zoo.load_model(TINY, weights="hub")
    assert seen == [(env_offline, str(tmp_path / "hf-cache"))]
    assert hf_constants.HF_HUB_OFFLINE is (not env_offline)  # restored afterwards


def test_offline_without_cache_is_one_clear_line():
    start = time.perf_counter()
    with pytest.raises(zoo.WeightsUnavailableError) as info:
        zoo.load_model(TINY, weights="hub")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"cannot load pretrained weights for {TINY}: offline and not in the Hugging Face cache"
    )
    assert "HF_HUB_OFFLINE=1" in message and "CNNVIZ_WEIGHTS=auto or random" in message
    assert time.perf_counter() - start < 5  # no network attempt
    assert zoo.cache_info()["models"] == []


def test_default_policy_is_hub_and_env_can_change_it(monkeypatch):
    with pytest.raises(zoo.WeightsUnavailableError):
        zoo.load_model(TINY)
    monkeypatch.setenv("CNNVIZ_WEIGHTS", "random")
    assert zoo.load_model(TINY).random_weights


def test_auto_falls_back_to_random_weights_and_says_so(monkeypatch, tmp_path):
    m = zoo.load_model(TINY, weights="auto")
    assert m.random_weights and m.weights_source == "random"
    assert "offline" in m.weights_note and m.display_name.endswith("(random weights)")
    cache = tmp_path / "hf-cache"
    tensors = write_hub_cache(cache, TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    real = zoo.load_model(TINY, weights="auto")
    assert not real.random_weights and same_state(real.module, tensors)


def test_random_weights_are_reproducible_per_name():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a = zoo.load_model(TINY, weights="random")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    assert a.random_weights and a.weights_note == "" and a.display_name == f"{TINY} (random weights)"
    assert "random weights" in repr(a)
    zoo.clear_cache()
    b = zoo.load_model(TINY, weights="random")
    assert a is not b and same_state(b.module, a.module.state_dict())
    c = zoo.load_model("test_resnet", weights="random")
    assert c is b  # same canonical name, same cache entry


def test_model_without_pretrained_weights(monkeypatch):
    no_weights = next(n for n in timm.list_models() if not timm.models.is_model_pretrained(n))
    with pytest.raises(zoo.WeightsUnavailableError, match="timm has no pretrained weights"):
        zoo.load_model(no_weights, weights="hub")


@pytest.mark.parametrize(
    "error",
    [
        LocalEntryNotFoundError("cannot find the requested files\nin the local cache"),
        ConnectionError("no route"),
    ],
)
def test_online_failures_become_one_line(monkeypatch, error):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    seen = {}

    def fail(name, pretrained, cache_dir):
        seen["offline"], seen["cache_dir"] = hf_constants.HF_HUB_OFFLINE, cache_dir
        raise error

    monkeypatch.setattr(hub.timm, "create_model", fail)
    with pytest.raises(zoo.WeightsUnavailableError) as info:
        zoo.load_model(TINY, weights="hub")
    assert seen["offline"] is False and seen["cache_dir"].endswith("empty-hf-home/hub")
    assert "\n" not in str(info.value) and type(error).__name__ in str(info.value)
    assert info.value.__cause__ is error


# ----------------------------------------------------------------------------- Model


def test_curated_model_fields():
    m = zoo.load_model("resnet18.a1_in1k", weights="random", device="cpu")
    assert (m.name, m.label, m.family) == ("resnet18.a1_in1k", "ResNet-18", "ResNet")
    assert m.entry is zoo.resolve_name("resnet18.a1_in1k")[1] and m.note == m.entry.note
    assert not m.module.training and m.device == torch.device("cpu")
    assert m.data_config["input_size"] == (3, 224, 224)
    assert len(m.class_names) == 1000
    x = m.preprocess(picture())
    assert x.shape == (1, 3, 224, 224) and x.device == m.device


def test_in21k_miil_head_gets_its_own_names():
    m = zoo.load_model("mobilenetv3_large_100.miil_in21k", weights="random")
    assert m.module.num_classes == len(m.class_names) == 11221
    assert m.class_names == tuple(ImageNetInfo("imagenet-21k-miil").label_descriptions())


def test_other_timm_names_get_their_module_as_family():
    m = zoo.load_model(TINY, weights="random")
    assert (m.label, m.family, m.note, m.entry, m.default_layer) == (TINY, "resnet", "", None, None)


def test_anatomy_is_lazy_and_is_the_engines():
    m = zoo.load_model(TINY, weights="random")
    assert "anatomy" not in m.__dict__
    assert m.anatomy == cnnviz.inspect(m.module)
    assert m.anatomy is m.anatomy


def test_explain_through_model_equals_the_engine():
    m = zoo.load_model(TINY, weights="random")
    images = [picture(seed=1), picture((120, 180), seed=2)]
    methods = ("grad_cam", "cam", "vanilla_gradient", "guided_backprop")
    direct = cnnviz.explain(m.module, torch.cat([m.preprocess(i) for i in images]), methods=methods, target=3)
    for through in (
        m.explain(images, methods, target=3),
        m.explain(torch.cat([m.preprocess(i) for i in images]), methods, target=3),
    ):
        assert torch.equal(through.logits, direct.logits) and through.layer == direct.layer
        for method in methods:
            assert torch.equal(through[method].raw, direct[method].raw), method
    one = m.explain(images[1], ("grad_cam",))
    ref = cnnviz.explain(m.module, m.preprocess(images[1]), methods=("grad_cam",))
    assert torch.equal(one["grad_cam"].raw, ref["grad_cam"].raw)
    assert torch.equal(m.explain(m.preprocess(images[1])[0])["grad_cam"].raw, ref["grad_cam"].raw)
    with pytest.raises(TypeError, match="image: expected a PIL image"):
        m.explain("not an image")


def test_curated_layer_override_is_the_default_layer(monkeypatch, tmp_path):
    text = GOOD.replace("resnet18.a1_in1k", TINY) + "    overrides:\n      layer: layer3\n"
    monkeypatch.setenv("CNNVIZ_MODELS_YAML", str(catalog(tmp_path, text)))
    m = zoo.load_model(TINY, weights="random")
    assert m.label == "ResNet-18" and m.default_layer == "layer3"
    x = m.preprocess(picture())
    ex = m.explain(x, ("grad_cam",))
    ref = cnnviz.explain(m.module, x, methods=("grad_cam",), layer="layer3")
    assert ex.layer == "layer3" and torch.equal(ex["grad_cam"].raw, ref["grad_cam"].raw)
    final = cnnviz.explain(m.module, x, methods=("grad_cam",))
    assert ex["grad_cam"].raw.shape != final["grad_cam"].raw.shape  # the override changed something
    assert torch.equal(m.explain(x, ("grad_cam",), layer=final.layer)["grad_cam"].raw, final["grad_cam"].raw)


# ----------------------------------------------------------------------------- the cache


SMALL = ("test_resnet.r160_in1k", "test_efficientnet.r160_in1k", "test_convnext.r160_in1k")


def test_cache_evicts_least_recently_used_by_count():
    zoo.configure_cache(max_models=2)
    a = zoo.load_model(SMALL[0], weights="random")
    b = zoo.load_model(SMALL[1], weights="random")
    assert zoo.load_model(SMALL[0], weights="random") is a  # a is now the most recent
    zoo.load_model(SMALL[2], weights="random")  # evicts b
    assert [s.split(" ")[0] for s in zoo.cache_info()["models"]] == [SMALL[0], SMALL[2]]
    assert zoo.load_model(SMALL[0], weights="random") is a
    assert zoo.load_model(SMALL[1], weights="random") is not b


def test_cache_evicts_by_memory_budget():
    a = zoo.load_model(SMALL[0], weights="random")
    b = zoo.load_model(SMALL[1], weights="random")
    expected = sum(t.numel() * t.element_size() for t in [*a.module.parameters(), *a.module.buffers()])
    assert a.nbytes == expected > 0
    zoo.configure_cache(max_mb=(a.nbytes + b.nbytes) / 2**20 * 0.99)  # both no longer fit: a goes
    assert [s.split(" ")[0] for s in zoo.cache_info()["models"]] == [SMALL[1]]
    zoo.configure_cache(max_mb=b.nbytes / 2**20 / 10)  # the newest stays even when alone too big
    assert zoo.load_model(SMALL[1], weights="random") is b
    assert zoo.cache_info()["mb"] == pytest.approx(b.nbytes / 2**20)


def test_cache_limits_from_env_and_validation(monkeypatch):
    monkeypatch.setenv("CNNVIZ_CACHE_MODELS", "3")
    monkeypatch.setenv("CNNVIZ_CACHE_MB", "512.5")
    assert zoo.CacheLimits.from_env() == zoo.CacheLimits(3, 512.5)
    monkeypatch.setenv("CNNVIZ_CACHE_MODELS", "many")
    with pytest.raises(ValueError, match="CNNVIZ_CACHE_MODELS: expected int, got 'many'"):
        zoo.CacheLimits.from_env()
    with pytest.raises(ValueError, match="max_models"):
        zoo.configure_cache(max_models=0)
    with pytest.raises(ValueError, match="max_mb"):
        zoo.configure_cache(max_mb=-1)


def test_concurrent_loads_build_once(monkeypatch):
    calls = []
    original = hub.random_module

    def slow_build(name):
        calls.append(name)
        time.sleep(0.3)
        return original(name)

    monkeypatch.setattr(hub, "random_module", slow_build)
    barrier = threading.Barrier(6)
    results: list = [None] * 6

    def worker(i):
        barrier.wait()
        results[i] = zoo.load_model(SMALL[i % 2], weights="random")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == sorted(SMALL[:2])
    assert all(r is results[0] for r in results[0::2]) and all(r is results[1] for r in results[1::2])
    assert results[0] is not results[1]


def test_failed_build_is_not_cached_and_can_be_retried(monkeypatch):
    original = hub.random_module
    monkeypatch.setattr(hub, "random_module", lambda name: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        zoo.load_model(TINY, weights="random")
    monkeypatch.setattr(hub, "random_module", original)
    assert zoo.load_model(TINY, weights="random").random_weights


def test_load_model_is_exported():
    assert cnnviz.load_model is zoo.load_model


@pytest.mark.parametrize("layer", ["layer3", "layer9"])
def test_a_curated_layer_override_is_the_default_and_must_be_a_stage(tmp_path, monkeypatch, layer):
    from cnnviz.app import settings as app_settings
    from cnnviz.types import FINAL

    yaml_text = (
        "models:\n  - id: resnet18.a1_in1k\n    label: ResNet-18\n    family: ResNet\n"
        "    note: a test entry\n"
        f"    overrides: {{layer: {layer}}}\n"
    )
    (tmp_path / "models.yaml").write_text(yaml_text)
    monkeypatch.setenv("CNNVIZ_MODELS_YAML", str(tmp_path / "models.yaml"))
    zoo.clear_cache()
    try:
        model = zoo.load_model("resnet18.a1_in1k", weights="random", device="cpu")
        assert model.entry is not None and model.entry.overrides.layer == layer
        if layer == "layer9":
            with pytest.raises(zoo.ZooConfigError, match=r"overrides\.layer .*'layer9'.*did you mean"):
                model.default_layer
            return
        image = Image.new("RGB", (64, 64), (120, 30, 200))
        assert model.default_layer == "layer3"
        assert model.explain(image, "grad_cam").layer == "layer3"
        # the app's "final map (default)" means the engine's own choice, not the curated override
        chosen = app_settings.parse_layer(app_settings.FINAL_LABEL, model.anatomy)
        assert chosen == FINAL
        assert model.explain(image, "grad_cam", layer=chosen).layer == FINAL
    finally:
        zoo.clear_cache()
