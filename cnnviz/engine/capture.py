"""Scoped tools to run a model once with no lasting side effects.

* `members`, one linear-time walk over a model's modules, parameters and buffers.
* `model_guard`, which puts a model in eval mode for one call and restores every module's
  `training` flag afterwards.
* `capture_outputs`, forward hooks registered for one call on named modules, removed in
  ``finally``; they only record in the thread that registered them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Members:
    """The model's modules, parameters and buffers, gathered once per `explain` call."""

    modules: list[nn.Module]
    params: list[nn.Parameter]
    buffers: list[torch.Tensor]


def members(model: nn.Module) -> Members:
    """Every module once (like ``model.modules()``), with its parameters and buffers, in linear time.

    `nn.Module.modules` yields through one generator per level of nesting; one breadth-first
    walk over ``_modules`` is cheaper, and `explain` needs the list on every call (the state
    guard and the anatomy cache's fingerprint).
    """
    seen = {id(model)}
    modules = [model]
    i = 0
    while i < len(modules):
        for child in modules[i]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
        i += 1
    params = [p for m in modules for p in m._parameters.values() if p is not None]
    buffers = [b for m in modules for b in m._buffers.values() if b is not None]
    return Members(modules, params, buffers)


@contextmanager
def model_guard(model: nn.Module, found: Members | None = None) -> Iterator[None]:
    """Eval mode for one call; every module's training flag as it was afterwards.

    The engine itself never touches parameters' ``.grad`` or ``requires_grad``: its backward
    passes are ``torch.autograd.grad`` calls with explicit inputs (leaves of its own), which
    leave ``.grad`` alone (tests check both after success and after failure). So only the
    training flags need restoring, and only when this guard changed them.

    ``found``: ``members(model)`` when the caller has it already.
    """
    modules = (members(model) if found is None else found).modules
    flags = [m.training for m in modules]
    changed = any(flags)
    if changed:
        model.eval()
    try:
        yield
    finally:
        if changed:
            for m, t in zip(modules, flags, strict=True):
                m.training = t


@dataclass
class Captured:
    """Outputs of named modules recorded during one forward, in call order."""

    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


@contextmanager
def capture_outputs(
    model: nn.Module,
    names: list[str] | tuple[str, ...] | None = None,
    keep: Callable[[str, torch.Tensor], bool] | None = None,
    start_graph: bool = False,
) -> Iterator[Captured]:
    """Record the tensor outputs of named modules (all modules when `names` is None).

    The hook hands a clone downstream and keeps the original, so a later in-place operation
    cannot change what was captured and gradients still flow to it. Hooks only act in the
    thread that registered them, and are removed on exit whatever happens.

    With ``start_graph=True`` (one module, a forward begun under ``torch.no_grad()``) the
    captured output becomes a leaf that requires grad and autograd is switched on from there:
    the graph, and so the backward pass, covers only what follows the layer. The caller's
    ``no_grad`` context restores the grad mode when it exits.
    """
    captured = Captured()
    owner = threading.get_ident()
    modules = dict(model.named_modules())
    wanted = list(modules) if names is None else list(names)
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            if threading.get_ident() != owner or not isinstance(output, torch.Tensor):
                return None
            if keep is not None and not keep(name, output):
                return None
            if name in captured.outputs:  # a module called twice: keep the last call
                captured.order.remove(name)
            if start_graph:
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            captured.outputs[name] = output
            captured.order.append(name)
            return output.clone()

        return hook

    try:
        for name in wanted:
            if name:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield captured
    finally:
        for h in handles:
            h.remove()
