"""Backward rules for activations and batch normalization, switchable on one forward graph.

`ActivationRules` is a `torch.overrides.TorchFunctionMode` that sees every activation call,
module (`nn.ReLU`, `nn.SiLU`...) and functional (`F.relu`, `x.relu()`...) alike, records its
kind and, when asked, routes it through an autograd function whose backward rule can be
switched between the plain gradient, guided backpropagation and the deconvnet rule. One
forward graph then serves all three backward passes. The user's modules are never replaced.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES: dict[str, str] = {
    "plain": "the ordinary gradient (autograd's own backward of every activation)",
    "guided": "guided backpropagation: at every rectifying activation, the local derivative times "
    "the positive part of the incoming gradient (Springenberg et al. 2014)",
    "deconv": "the deconvnet rule: at every rectifying activation, the positive part of the "
    "incoming gradient, whatever the input (Zeiler & Fergus 2014)",
}
"""The backward rules, by name: the only list (methods ask for input gradients under these)."""

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

# id(running_var) -> (weak reference to it, what alpha came from, alpha); an entry goes when its
# tensor does. Keyed by identity: tensors compare by value.
_ALPHA_CACHE: dict[int, tuple] = {}


def _forget(key: int) -> Callable[[weakref.ref], None]:
    def drop(_ref: weakref.ref) -> None:
        _ALPHA_CACHE.pop(key, None)

    return drop


def _frozen_alpha(var, weight, eps: float, like: torch.Tensor) -> torch.Tensor:
    """Per-channel ``alpha = weight / sqrt(var + eps)`` of an eval-mode batch norm, shaped to
    broadcast over `like`; cached per module until one of its tensors changes."""
    made_from = (
        *((id(t), t._version, t.data_ptr()) if t is not None else None for t in (var, weight)),
        eps,
        like.dtype,
        like.device,
        like.dim(),
    )
    hit = _ALPHA_CACHE.get(id(var))
    if hit is not None and hit[0]() is var and hit[1] == made_from:
        return hit[2]
    acc = torch.promote_types(var.dtype, torch.float32)  # float32 at least, float64 stays
    with torch.no_grad():
        alpha = torch.rsqrt(var.to(acc) + eps)
        if weight is not None:
            alpha = alpha * weight.to(acc)
        alpha = alpha.to(like.dtype).reshape(-1, *([1] * (like.dim() - 2)))
    _ALPHA_CACHE[id(var)] = (weakref.ref(var, _forget(id(var))), made_from, alpha)
    return alpha


class _FrozenBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm: torch's own kernel forward, a one-multiply input-gradient backward.

    The forward is the very call the model made (the same kernel, so the same bits as the
    model's own forward; ``x * alpha + beta`` rounds differently in float32, and ReLUs sitting
    near zero then switch, so that a method's result would depend on which other methods share
    the call). The backward is ``grad_out * alpha``: no gradient reaches the statistics or the
    affine parameters (the passes ask only for gradients of the input and of maps), and none of
    autograd's batch-norm backward work for them is done.
    """

    @staticmethod
    def forward(ctx, x, kernel, alpha):
        ctx.alpha = alpha
        return kernel(x)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out * ctx.alpha, None, None


def _frozen_batch_norm(func, args, kwargs) -> torch.Tensor | None:
    """`F.batch_norm` with running statistics through `_FrozenBatchNorm` (else None)."""
    if len(args) == 8 and not kwargs:  # how torch calls it
        x, _, var, weight, _, training, _, eps = args
        rest = args[1:]
    else:
        bound = dict(zip(_BATCH_NORM_ARGS, args, strict=False)) | kwargs
        x, var, weight = bound.get("input"), bound.get("running_var"), bound.get("weight")
        training, eps = bound.get("training", False), bound.get("eps", 1e-5)
        if bound.get("running_mean") is None:
            return None
        bound.pop("input", None)
        rest = bound
    if training or var is None or not isinstance(x, torch.Tensor) or x.dim() < 2:
        return None
    if not (torch.is_grad_enabled() and x.requires_grad):
        return None
    alpha = _frozen_alpha(var, weight, eps, x)
    if isinstance(rest, dict):
        return _FrozenBatchNorm.apply(x, lambda t: func(t, **rest), alpha)
    return _FrozenBatchNorm.apply(x, lambda t: func(t, *rest), alpha)


class ActivationRules(TorchFunctionMode):
    """Record activation kinds; with ``switchable=True`` also make their backward rule switchable.

    Use as a context manager around one forward pass, then set ``.rule`` before each backward.
    In-place activations are computed out of place so that autograd can keep their input.
    Switchable mode also gives batch normalization with running statistics its one-multiply
    input gradient, with the model's own forward kernel (`_FrozenBatchNorm`).
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
                out = _frozen_batch_norm(func, args, kwargs)
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
