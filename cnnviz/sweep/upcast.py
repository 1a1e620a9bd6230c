"""Run a bfloat16 model with float32 arithmetic, its weights kept in bfloat16.

The sweep runs a model in bfloat16 only when float32 weights would not fit its memory cap. On a
CPU without a native bfloat16 matrix kernel (`fast_bfloat16`) torch multiplies bfloat16
matrices in a reference kernel, 5x (``a @ b.T``) to 95x (``a @ b``) float32's time measured on an
AVX2 machine: a 4.4B-parameter ViT then takes hours where it took minutes. Under `Float32Compute`
every operation receives its bfloat16 tensors as float32 copies, so activations and gradients are
float32 and the fast float32 kernels do the work. Only the linear layers' weights (nearly all of
a transformer's memory) need care: the copy a plain upcast would hand to ``F.linear`` is what
autograd saves for the backward pass, which would bring the whole model back to float32 size. A
linear layer whose bfloat16 weight and bias need no gradient (`freeze`) therefore goes through
`_BFloat16Linear`, which saves the bfloat16 weight and makes the float32 copy again in backward:
one layer's copy at a time.

The weights are the model's bfloat16 weights, exactly; what changes is the rounding of the
arithmetic (float32 instead of bfloat16), so results are closer to a float32 model's than a
bfloat16 run's are. The activations (and what autograd saves of them) are float32, twice a
bfloat16 run's memory, so the sweep runs the batched methods one sample at a time in this mode
(``UPCAST_BATCH`` in `cnnviz.sweep.probe`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

FLOAT32_COMPUTE = "(float32 compute)"
"""Added to the CSV's ``dtype`` of a model run under `Float32Compute`."""

_METADATA = frozenset(
    {
        "__get__",  # attribute reads: .dtype, .shape, .device, .requires_grad, ...
        "size",
        "dim",
        "numel",
        "stride",
        "storage_offset",
        "is_contiguous",
        "is_floating_point",
        "element_size",
        "data_ptr",
        "__len__",
        "__repr__",
        "__format__",
        "requires_grad_",
    }
)


def fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices with a native kernel (oneDNN's, which needs
    AVX-512 or newer). Without one torch uses a reference kernel: measured on an AVX2 machine, 5x
    float32's time for ``a @ b.T`` (a linear layer's forward) and 95x for ``a @ b`` (its input
    gradient): the 4.4B-parameter EVA-02 was still in one forward and backward after 20 min, where
    its whole inspection took 28 s in an earlier sweep on a machine with such a kernel."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: judge by the vector unit
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class _BFloat16Linear(torch.autograd.Function):
    """``F.linear`` in float32 over a bfloat16 weight that needs no gradient, saving the bfloat16
    weight (not a float32 copy) for the input gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight.float(), None if bias is None else bias.float())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        return (grad @ weight.float() if ctx.needs_input_grad[0] else None), None, None


def _up(t: object) -> object:
    return t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 else t


def _keeps_its_tensors(func: Any) -> bool:
    """Reads metadata or writes into its arguments: a float32 copy would cost a full copy for
    nothing, or receive the write in place of the tensor itself."""
    name = getattr(func, "__name__", "")
    in_place = name.endswith("_") and not name.endswith("__")
    dunder_in_place = name.startswith("__i") and name not in (
        "__init__",
        "__iter__",
        "__index__",
        "__int__",
        "__invert__",
    )
    return name in _METADATA or in_place or dunder_in_place or name == "__setitem__"


class Float32Compute(TorchFunctionMode):
    """Inside it, operations on bfloat16 tensors compute in float32 (see the module's text)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if _keeps_its_tensors(func):
            return func(*args, **kwargs)
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            frozen = not weight.requires_grad and (bias is None or not bias.requires_grad)
            if weight.dtype == torch.bfloat16 and frozen:
                return _BFloat16Linear.apply(_up(x), weight, bias)
        return func(*tree_map(_up, args), **tree_map(_up, kwargs))


def freeze(model: torch.nn.Module) -> None:
    """No parameter of the sweep's own model needs a gradient (saliency differentiates inputs and
    activations), which lets `Float32Compute` keep the linear weights in bfloat16 through backward."""
    for p in model.parameters():
        p.requires_grad_(False)
