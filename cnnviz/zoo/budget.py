"""A model's memory, known before it is built: timm builds it on PyTorch's ``meta`` device.

A module built under ``torch.device("meta")`` has every parameter's shape and dtype but no storage,
so counting a 7-billion-parameter network takes seconds and no memory. A deployment sets a budget
(the app reads ``CNNVIZ_MAX_MODEL_MB``) and `check_size` refuses a model above it before
`cnnviz.load_model` allocates anything.

    >>> from cnnviz.zoo import budget
    >>> budget.model_size("resnet50").mb        # ~98 MB of float32 parameters and buffers
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import timm
import torch

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSize:
    """Parameters and bytes of a timm architecture as `timm.create_model` builds it (float32).

    Attributes:
        name: the timm name measured.
        params: number of parameter elements.
        nbytes: bytes of parameters and buffers (what the model cache counts once it is built).
    """

    name: str
    params: int
    nbytes: int

    @property
    def mb(self) -> float:
        return self.nbytes / 2**20


class ModelTooLargeError(ValueError):
    """A model's weights exceed the memory budget; the message names both sizes."""


@functools.lru_cache(maxsize=512)
def model_size(name: str) -> ModelSize:
    """Measure a timm model (``arch`` or ``arch.tag``) without allocating its weights.

    Raises:
        ValueError: timm cannot build the architecture on the meta device.
    """
    try:
        with torch.device("meta"):
            module = timm.create_model(name, pretrained=False)
    except Exception as exc:  # timm raises many types; the caller gets one
        why = type(exc).__name__
        raise ValueError(f"{name}: its size cannot be measured before building it ({why})") from exc
    params = sum(p.numel() for p in module.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return ModelSize(name, params, nbytes)


def check_size(name: str, max_mb: float) -> ModelSize:
    """`model_size(name)`, or `ModelTooLargeError` when it exceeds `max_mb` MiB.

    A model whose size cannot be measured is refused too: a budget that unknown models could pass
    would not bound anything.
    """
    try:
        size = model_size(name)
    except ValueError as exc:
        raise ModelTooLargeError(f"{exc}; this deployment only loads models it can measure") from None
    if size.mb > max_mb:
        raise ModelTooLargeError(
            f"{name} needs {_human(size.nbytes)} for its weights ({size.params / 1e6:,.0f} million "
            f"parameters); this deployment loads models up to {_human(max_mb * 2**20)} "
            f"(CNNVIZ_MAX_MODEL_MB={max_mb:g})."
        )
    return size


def _human(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MB"
