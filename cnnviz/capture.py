"""Run a model once and keep what the methods need, with no lasting side effects.

Three scoped tools live here:

* `ActivationRules`, a `torch.overrides.TorchFunctionMode` that sees every activation call,
  module (`nn.ReLU`, `nn.SiLU`...) and functional (`F.relu`, `x.relu()`...) alike, records its
  kind and, when asked, routes it through an autograd function whose backward rule can be
  switched between the plain gradient, guided backpropagation and the deconvnet rule. One
  forward graph then serves all three backward passes. The user's modules are never replaced.
* `model_guard`, which puts a model in eval mode for one call and restores every module's
  `training` flag afterwards, and checks that no parameter `.grad` appeared.
* `capture_outputs`, forward hooks registered for one call on named modules, removed in
  ``finally``; they only record in the thread that registered them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

RULES = ("plain", "guided", "deconv")

# The rectifier-like activations whose backward rule guided backprop and deconvnet change.
# kind -> (pure out-of-place function, names of its arguments after the input)
_RECTIFIERS: dict[str, tuple[Callable[..., torch.Tensor], tuple[str, ...]]] = {
    "relu": (lambda x: torch.relu(x), ()),
    "relu6": (lambda x: F.hardtanh(x, 0.0, 6.0), ()),
    "hardtanh": (F.hardtanh, ("min_val", "max_val")),
    "leaky_relu": (F.leaky_relu, ("negative_slope",)),
    "elu": (F.elu, ("alpha",)),
    "celu": (F.celu, ("alpha",)),
    "selu": (lambda x: F.selu(x), ()),
    "gelu": (F.gelu, ("approximate",)),
    "silu": (lambda x: F.silu(x), ()),
    "mish": (lambda x: F.mish(x), ()),
    "hardswish": (lambda x: F.hardswish(x), ()),
    "softplus": (F.softplus, ("beta", "threshold")),
}

# Gates and squashing functions: recorded, but their gradient is always the plain one.
_GATES = ("sigmoid", "hardsigmoid", "tanh", "softmax")


_aten = torch.ops.aten


def _local_backward(kind: str, bound: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """``(grad_out, saved) -> grad_in`` for an activation, with torch's own fused backward kernel.

    ``saved`` is the output for ReLU and the input otherwise. None: no fused kernel is known
    for this kind, and the gradient is taken through autograd at backward time.
    """
    if kind == "relu":
        return lambda g, y: _aten.threshold_backward(g, y, 0)
    if kind == "silu":
        return _aten.silu_backward
    if kind == "gelu":
        approximate = bound.get("approximate", "none")
        return lambda g, x: _aten.gelu_backward(g, x, approximate=approximate)
    if kind == "hardswish":
        return _aten.hardswish_backward
    if kind == "mish":
        return _aten.mish_backward
    if kind in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if kind == "relu6" else (bound.get("min_val", -1.0), bound.get("max_val", 1.0))
        return lambda g, x: _aten.hardtanh_backward(g, x, lo, hi)
    if kind == "leaky_relu":
        slope = bound.get("negative_slope", 0.01)
        return lambda g, x: _aten.leaky_relu_backward(g, x, slope, False)
    return None


def _function_table() -> dict[object, str]:
    """Every callable through which an activation reaches torch, mapped to its kind."""
    table: dict[object, str] = {}
    names = {
        "relu": ["relu", "relu_"],
        "relu6": ["relu6"],
        "hardtanh": ["hardtanh", "hardtanh_"],
        "leaky_relu": ["leaky_relu", "leaky_relu_"],
        "elu": ["elu", "elu_"],
        "celu": ["celu", "celu_"],
        "selu": ["selu", "selu_"],
        "gelu": ["gelu"],
        "silu": ["silu"],
        "mish": ["mish"],
        "hardswish": ["hardswish"],
        "softplus": ["softplus"],
        "sigmoid": ["sigmoid", "sigmoid_"],
        "hardsigmoid": ["hardsigmoid"],
        "tanh": ["tanh", "tanh_"],
        "softmax": ["softmax"],
    }
    for kind, fnames in names.items():
        for fname in fnames:
            for owner in (F, torch, torch.Tensor, torch._C._nn):
                fn = getattr(owner, fname, None)
                if fn is not None:
                    table[fn] = kind
    return table


_TABLE = _function_table()


def rule_note(kind: str, rule: str) -> str:
    """How a backward rule treats one activation kind, in words."""
    if kind in _GATES or rule == "plain":
        return f"{kind}: plain gradient"
    if rule == "deconv":
        return f"{kind}: ReLU(grad_out), the input is ignored" + (
            " (Zeiler & Fergus)" if kind == "relu" else ""
        )
    if kind == "relu":
        return "relu: 1[x>0] * ReLU(grad_out) (Springenberg et al.)"
    return f"{kind}: {kind}'(x) * ReLU(grad_out), the local derivative times the positive part"


class _RuleState:
    """Which backward rule the activations apply; shared by one forward graph."""

    def __init__(self) -> None:
        self.rule = "plain"


class _SwitchableActivation(torch.autograd.Function):
    """An activation whose backward rule is read from a `_RuleState` at backward time."""

    @staticmethod
    def forward(ctx, x, fn, state, is_relu, local):
        ctx.fn = fn
        ctx.state = state
        ctx.local = local
        y = fn(x)
        # ReLU's derivative is read from its output; other functions keep their input.
        ctx.save_for_backward(y if is_relu else x)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        (saved,) = ctx.saved_tensors
        rule = ctx.state.rule
        none = (None,) * 4
        if rule == "deconv":
            return grad_out.clamp(min=0), *none
        if rule == "guided":
            grad_out = grad_out.clamp(min=0)
        if ctx.local is not None:
            return ctx.local(grad_out, saved), *none
        # The exact local derivative, from torch's own backward formula for the function.
        with torch.enable_grad():
            xd = saved.detach().requires_grad_(True)
            (grad_in,) = torch.autograd.grad(ctx.fn(xd), xd, grad_out)
        return grad_in, *none


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")

# id(running_var) -> (weak reference to it, what alpha and beta came from, alpha, beta); an entry
# goes when its tensor does. Keyed by identity: tensors compare by value.
_AFFINE_CACHE: dict[int, tuple] = {}


def _forget(key: int) -> Callable[[weakref.ref], None]:
    return lambda _ref: _AFFINE_CACHE.pop(key, None)


def _frozen_affine(mean, var, weight, bias, eps: float, like: torch.Tensor):
    """Per-channel ``(alpha, beta)`` of an eval-mode batch norm, shaped to broadcast over `like`."""
    made_from = (
        *((id(t), t._version, t.data_ptr()) if t is not None else None for t in (mean, var, weight, bias)),
        eps,
        like.dtype,
        like.device,
        like.dim(),
    )
    hit = _AFFINE_CACHE.get(id(var))
    if hit is not None and hit[0]() is var and hit[1] == made_from:
        return hit[2], hit[3]
    acc = torch.promote_types(var.dtype, torch.float32)  # float32 at least, float64 stays
    with torch.no_grad():
        alpha = torch.rsqrt(var.to(acc) + eps)
        if weight is not None:
            alpha = alpha * weight.to(acc)
        beta = -mean.to(acc) * alpha
        if bias is not None:
            beta = beta + bias.to(acc)
        shape = (-1, *([1] * (like.dim() - 2)))
        alpha = alpha.to(like.dtype).reshape(shape)
        beta = beta.to(like.dtype).reshape(shape)
    _AFFINE_CACHE[id(var)] = (weakref.ref(var, _forget(id(var))), made_from, alpha, beta)
    return alpha, beta


def _frozen_batch_norm(args, kwargs) -> torch.Tensor | None:
    """`F.batch_norm` with running statistics as ``x * alpha_c + beta_c`` (else None).

    In eval mode batch normalization is a fixed affine map per channel; torch's CPU kernel
    computes it in just this form (``alpha = weight / sqrt(var + eps)``, ``beta = bias -
    mean * alpha``). Written as a multiply and an add, its input gradient is a single multiply
    in autograd's C++ engine, where autograd's batch-norm backward also works out the
    statistics' terms at several times the cost. No gradient reaches the statistics or the
    affine parameters: the passes this serves only ask for gradients of the input and of
    intermediate maps.
    ``(alpha, beta)`` are cached per module until one of its tensors changes.
    """
    if len(args) == 8 and not kwargs:  # how torch and timm call it
        x, mean, var, weight, bias, training, _, eps = args
    else:
        bound = dict(zip(_BATCH_NORM_ARGS, args, strict=False)) | kwargs
        x, mean, var = bound.get("input"), bound.get("running_mean"), bound.get("running_var")
        weight, bias = bound.get("weight"), bound.get("bias")
        training, eps = bound.get("training", False), bound.get("eps", 1e-5)
    if training or mean is None or var is None or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    if not (torch.is_grad_enabled() and x.requires_grad):
        return None
    alpha, beta = _frozen_affine(mean, var, weight, bias, eps, x)
    return (x * alpha).add_(beta)  # faster than addcmul, whose broadcasting path is slow on CPU


class ActivationRules(TorchFunctionMode):
    """Record activation kinds; with ``switchable=True`` also make their backward rule switchable.

    Use as a context manager around one forward pass, then set ``.rule`` before each backward.
    In-place activations are computed out of place so that autograd can keep their input.
    Switchable mode also gives batch normalization with running statistics its one-multiply
    input gradient (`_frozen_batch_norm`).
    """

    def __init__(self, switchable: bool = False) -> None:
        super().__init__()
        self.switchable = switchable
        self.state = _RuleState()
        self.kinds: set[str] = set()

    @property
    def rule(self) -> str:
        return self.state.rule

    @rule.setter
    def rule(self, value: str) -> None:
        if value not in RULES:
            raise ValueError(f"unknown backward rule {value!r}; known: {', '.join(RULES)}")
        self.state.rule = value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _TABLE.get(func)
        if kind is None:
            if func is F.batch_norm and self.switchable:
                out = _frozen_batch_norm(args, kwargs)
                if out is not None:
                    return out
            return func(*args, **kwargs)
        self.kinds.add(kind)
        x = args[0] if args else kwargs.get("input")
        if not (self.switchable and kind in _RECTIFIERS and isinstance(x, torch.Tensor)):
            return func(*args, **kwargs)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return func(*args, **kwargs)
        pure, params = _RECTIFIERS[kind]
        bound = {k: v for k, v in zip(params, args[1:], strict=False)}
        bound.update({k: v for k, v in kwargs.items() if k in params})
        fn = (lambda t, _p=pure, _b=bound: _p(t, **_b)) if bound else pure
        return _SwitchableActivation.apply(x, fn, self.state, kind == "relu", _local_backward(kind, bound))


def describe_rules(kinds: set[str] | tuple[str, ...], rule: str) -> tuple[str, ...]:
    """Notes naming the rule applied to each activation kind present."""
    return tuple(rule_note(k, rule) for k in sorted(kinds))


def has_rectifiers(kinds: set[str] | tuple[str, ...]) -> bool:
    return any(k in _RECTIFIERS for k in kinds)


@dataclass(frozen=True)
class Members:
    """The model's modules, parameters and buffers, gathered once per `explain` call."""

    modules: list[nn.Module]
    params: list[nn.Parameter]
    buffers: list[torch.Tensor]


def members(model: nn.Module) -> Members:
    """Every module once (like ``model.modules()``), with its parameters and buffers, in linear time.

    `nn.Module.modules` yields through one generator per level of nesting, which cost about
    half a millisecond per walk on a 300-module network (efficientnet_b0): too much for
    something `explain` does on every call (the state guard and the anatomy cache's
    fingerprint both need the list).
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


@dataclass
class Passes:
    """What one `explain` call computed, shared by all requested methods.

    Attributes:
        x: the input batch (B, 3, H, W).
        logits: (B, K), detached.
        targets: (B,) long.
        map: canonical (B, C, h, w) feature map at the chosen layer (detached), or None.
        map_grad: d score / d map, canonical, plain rule, or None.
        input_grads: rule -> d score / d x.
        rule_notes: rule -> notes naming the rule used for each activation kind present.
        fold: the CAM head fold of the model (see `cnnviz.anatomy.HeadFold`), or None.
        layer: name of the layer the map comes from.
        layer_notes: why that layer.
        kinds: activation kinds seen in this forward.
    """

    x: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    layer: str
    map: torch.Tensor | None = None
    map_grad: torch.Tensor | None = None
    input_grads: dict[str, torch.Tensor] = field(default_factory=dict)
    rule_notes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    fold: object | None = None
    layer_notes: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
