"""Build one timm model for the sweep: random weights, a small input size, non-trivial statistics.

Random initialisation hides bugs: BatchNorm starts as the identity (running mean 0, variance 1),
several families zero-initialise their classifier, and some produce features of 1e-10 or less.
A check passed on such a model proves little, so after creation:

* residual scales initialised (near) zero are woken up to ``U(0.1, 0.3)``: layer scales
  (``gamma``, 1e-6 in ConvNeXt and DeiT-III) and zero-initialised norm weights at the end of
  residual branches (ResNet's last BN). At 1e-6 a branch is invisible: guided backprop, which
  only changes the rule of the activations inside the branches, then equals the plain gradient
  to 1e-6 and nothing about the branch is tested;
* every BatchNorm's running statistics are set from a forward pass in training mode on a
  random batch (cumulative averaging, ``momentum=None``): no longer the identity, and the
  features keep a usable scale;
* the classifier (``pretrained_cfg['classifier']`` and ``get_classifier()``) is re-drawn:
  weights ``N(0, 1/fan_in)``, biases ``U(-0.5, 0.5)``, norm affines perturbed, so that the
  CAM offset and any head folding are exercised.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import timm
import torch
from timm.models import PretrainedCfg, get_pretrained_cfg
from torch import nn

from ..common import first_line, name_seed

SMALL_SIDE = 160
"""Preferred input side: most models accept it, and it keeps the sweep's cost down."""

DEFAULT_HEAD_CLASSES = 1000
"""Classes given to feature towers that default to ``num_classes=0``, as a fine-tune would."""


@dataclass(frozen=True)
class Built:
    """A model ready for the sweep's checks.

    Attributes:
        module: the timm module, eval mode.
        input_size: (3, H, W) it runs at (its ``pretrained_cfg['input_size']`` is set to it, so
            that `cnnviz.inspect` probes the same size).
        native_size: (3, H, W) of the model's own data config.
        size_note: why the size differs from the preferred small one, or why native was used.
        head_added: created with ``num_classes=1000`` because the default is 0.
        dtype: parameter dtype name (``float32``, or ``bfloat16`` for models too large for
            the memory cap in float32).
        init_note: how residual scales and BatchNorm statistics were set.
    """

    module: nn.Module
    input_size: tuple[int, int, int]
    native_size: tuple[int, int, int]
    size_note: str
    head_added: bool
    dtype: str
    init_note: str


def _config(name: str) -> PretrainedCfg:
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"{name}: timm has no pretrained config for it (not a timm model name?)")
    return cfg


def candidate_sizes(name: str, small: int = SMALL_SIDE) -> tuple[list[tuple[int, int, int]], str]:
    """Input sizes to try, smallest first (the native size last), and a note.

    The short side goes down to `small` (not below the config's ``min_input_size``); a
    non-square input keeps its aspect ratio, both sides rounded to multiples of 32.
    """
    cfg = _config(name)
    c, h, w = (int(v) for v in cfg.input_size)
    native = (c, h, w)
    # A "fixed input size" (ViT-like position tables, MLP-Mixer) is fixed once the model is
    # built: most of them build at another size through `img_size`, so it is still tried.
    short = min(native[1:])
    target = min(short, small)
    if cfg.min_input_size:
        target = max(target, min(int(v) for v in cfg.min_input_size[1:]))
    if target >= short:
        return [native], ""
    if native[1] == native[2]:
        return [(3, target, target), native], ""
    h, w = (max(32, round(v * target / short / 32) * 32) for v in native[1:])
    return [(3, h, w), native], f"aspect ratio of {native[1]}x{native[2]} kept"


def _create(name: str, size: tuple[int, int, int], native: tuple[int, int, int], kwargs: dict) -> nn.Module:
    torch.manual_seed(name_seed(name))
    if size == native:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=False, img_size=size[1:], **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    torch.manual_seed(name_seed(name))
    return timm.create_model(name, pretrained=False, **kwargs)


def build(name: str, small: int = SMALL_SIDE, dtype: torch.dtype = torch.float32) -> Built:
    """Create `name` with random weights at the smallest size it accepts (see module docstring).

    Raises:
        Whatever timm raises when the model cannot be created or run at its native size.
    """
    head_added = not _config(name).num_classes
    kwargs = {"num_classes": DEFAULT_HEAD_CLASSES} if head_added else {}
    sizes, note = candidate_sizes(name, small)
    native = sizes[-1]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        while True:
            size = sizes.pop(0)
            module = None
            try:
                module = _create(name, size, native, kwargs).eval()
                cfg = dict(getattr(module, "pretrained_cfg", {}), input_size=size)
                setattr(module, "pretrained_cfg", cfg)  # noqa: B010  (a plain attribute, not a submodule)
                x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1), dtype=dtype)
                with torch.no_grad():
                    module(x)
            except Exception as exc:  # too small for this model: a patch multiple, then native
                if not sizes:
                    raise
                retry = _patch_multiple(module, size, native, str(exc))
                if retry and retry not in sizes:
                    sizes.insert(0, retry)
                note = f"{size[1]}x{size[2]} failed ({first_line(exc)})"
                continue
            if size == native and note and not note.startswith("native"):
                note = f"native: {note}"
            woken = wake_residual_scales(module, name)
            init_note = calibrate_batchnorm(module, x)
            if woken:
                init_note = f"{woken} near-zero residual scales set to U(0.1, 0.3); {init_note}"
            randomize_classifier(module, name)
            return Built(module, size, native, note, head_added, str(dtype).removeprefix("torch."), init_note)
    finally:
        torch.set_default_dtype(previous)


def _patch_multiple(
    module: nn.Module | None, size: tuple[int, int, int], native: tuple[int, int, int], error: str = ""
) -> tuple[int, int, int] | None:
    """The smallest multiples of the model's input granularity at least `size`, if below native.

    The granularity is read from the error's "divisible by ... N" when it says so (Gemma's
    pooled patches need 48), else from the first ``patch_size`` attribute of the model.
    """
    said = re.search(r"divisible by\D*(\d+)", error)
    if said:
        p: object = int(said.group(1))
    else:
        patch = (
            next((m.patch_size for m in module.modules() if hasattr(m, "patch_size")), None)
            if module
            else None
        )
        p = patch[0] if isinstance(patch, tuple | list) and patch else patch
    if not isinstance(p, int) or p <= 1 or all(v % p == 0 for v in size[1:]):
        return None
    h, w = (-(-v // p) * p for v in size[1:])
    return (3, h, w) if h <= native[1] and w <= native[2] and (h, w) != native[1:] else None


def wake_residual_scales(module: nn.Module, name: str, scale: tuple[float, float] = (0.1, 0.3)) -> int:
    """Set vector parameters that start below 1e-3 (not biases, tokens or embeddings) to U(*scale).

    Returns how many tensors were changed.
    """
    gen = torch.Generator().manual_seed(name_seed(name) + 3)
    changed = 0
    with torch.no_grad():
        for pname, p in module.named_parameters():
            leaf = pname.rsplit(".", 1)[-1]
            if any(k in leaf for k in ("bias", "token", "embed", "pos")):
                continue
            if p.numel() > 1 and p.numel() == max(p.shape) and float(p.detach().abs().amax()) < 1e-3:
                p.copy_(scale[0] + (scale[1] - scale[0]) * torch.rand(p.shape, generator=gen))
                changed += 1
    return changed


def calibrate_batchnorm(module: nn.Module, x: torch.Tensor) -> str:
    """Set BatchNorm running statistics from a training-mode pass on `x` (see module docstring)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return "no BatchNorm"
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        if m.track_running_stats:
            m.reset_running_stats()
        m.momentum = None
    module.train()
    try:
        with torch.no_grad():
            module(x)
    except Exception as exc:  # some models cannot run in training mode: perturb the statistics instead
        perturb_batchnorm(module, seed=2)
        return f"{len(norms)} BatchNorm layers perturbed (training-mode pass failed: {first_line(exc)})"
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        module.eval()
    return f"{len(norms)} BatchNorm layers calibrated on a random batch"


def perturb_batchnorm(module: nn.Module, seed: int, var: tuple[float, float] = (0.8, 1.25)) -> int:
    """Draw every BatchNorm's running statistics at random (mean ~ N(0, 0.1^2), variance ~ U(*var)),
    so that no layer is the identity a fresh BatchNorm is; returns how many layers were changed."""
    gen = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                assert m.running_var is not None, "BatchNorm tracks mean and variance together"
                m.reset_running_stats()
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                spread = torch.rand(m.running_var.shape, generator=gen)
                m.running_var.copy_(var[0] + (var[1] - var[0]) * spread)
                changed += 1
    return changed


def classifier_modules(module: nn.Module, name: str) -> list[nn.Module]:
    """The final classifier(s): ``pretrained_cfg['classifier']`` names and `get_classifier()`."""
    found: list[nn.Module] = []
    cfg = get_pretrained_cfg(name)
    names = (cfg.classifier if cfg is not None else None) or ()
    for path in (names,) if isinstance(names, str) else names:
        try:
            found.append(module.get_submodule(path))
        except AttributeError:
            continue  # the config names a module this variant does not have; get_classifier covers it
    head = getattr(module, "get_classifier", lambda: None)()
    for m in head if isinstance(head, tuple | list) else (head,):
        if isinstance(m, nn.Module) and all(m is not f for f in found):
            found.append(m)
    return found


def randomize_classifier(module: nn.Module, name: str) -> int:
    """Re-draw the classifier's parameters; returns how many tensors were changed."""
    gen = torch.Generator().manual_seed(name_seed(name) + 1)
    changed = 0
    with torch.no_grad():
        for head in classifier_modules(module, name):
            for sub in head.modules():
                changed += _redraw(sub, gen)
    return changed


def _redraw(sub: nn.Module, gen: torch.Generator) -> int:
    weight = getattr(sub, "weight", None)
    bias = getattr(sub, "bias", None)
    changed = 0
    if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
        fan_in = math.prod(weight.shape[1:])
        weight.copy_(torch.randn(weight.shape, generator=gen) / math.sqrt(fan_in))
        changed += 1
    elif isinstance(weight, nn.Parameter) and weight.dim() == 1:  # a norm's scale
        weight.mul_(0.5 + torch.rand(weight.shape, generator=gen))
        changed += 1
    if isinstance(bias, nn.Parameter):
        bias.copy_(torch.rand(bias.shape, generator=gen) - 0.5)
        changed += 1
    return changed
