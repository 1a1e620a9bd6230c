"""`cnnviz.explain`: resolve the methods, run the shared passes once, one `Attribution` per method."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..engine.anatomy import inspection
from ..engine.capture import members, model_guard
from ..engine.passes import Needs, Runner, TargetArg, resolve_layer, run_passes
from ..types import Attribution, Explanation
from .registry import Method, ParamsArg, Result, resolve_methods, resolve_params


def explain(
    model: nn.Module,
    x: torch.Tensor,
    methods: str | Sequence[str | Method] = ("grad_cam",),
    target: TargetArg = None,
    layer: str | None = None,
    strict: bool = True,
    params: ParamsArg = None,
) -> Explanation:
    """Explain a batch with several methods, sharing every pass that can be shared.

    Args:
        model: a timm classification model (its mode and gradients are left as they were).
        x: a preprocessed batch (B, 3, H, W).
        methods: method ids (see `cnnviz.list_methods()`), a list or a comma-separated string.
        target: None (each sample's top-1 class), an int, or one int per sample.
        layer: None (the final map, or for class-token models the layer the gradient
            reaches, see `Anatomy.source`), ``"forward_features"``, or one of `Anatomy.stages`.
        strict: raise ValueError when a method does not apply; with False it is left out
            and its reason is in `Explanation.refused`.
        params: method parameters (see each method's ``params`` and `cnnviz.list_methods()`):
            ``{"score_cam": {"batch_size": 16}}``, ``{"score_cam.batch_size": 16}``, or
            ``{"batch_size": 16}`` for every requested method that has it. Checked before any
            work starts; an unknown name or a value out of range raises ValueError.

    Returns:
        An `Explanation` with one `Attribution` per method that applies.
    """
    chosen = resolve_methods(methods)
    bound = resolve_params(chosen, params)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a preprocessed batch of shape (B, 3, H, W); got {shape}")
    found = members(model)
    insp = inspection(model, found)
    anatomy = insp.anatomy
    layer_name = resolve_layer(model, insp, layer)
    layer_is_final = anatomy.is_final(layer_name)
    refused: dict[str, str] = {}
    run: list[Method] = []
    for method in chosen:
        reason = method.refusal(anatomy, layer_is_final, bound[method.id])
        if reason is None:
            run.append(method)
        elif strict:
            raise ValueError(f"{method.id} does not apply to {anatomy.architecture}: {reason}")
        else:
            refused[method.id] = reason
    needs = Needs()
    for method in run:
        needs = needs | method.needs
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    attributions: dict[str, Attribution] = {}
    with model_guard(model, found):
        passes = run_passes(model, found, x, needs, target, layer_name, insp)
        runner = Runner(model, found, insp, passes)
        for method in run:
            result = method.compute(passes, bound[method.id], runner)
            if not isinstance(result, Result):
                raise TypeError(f"method {method.id!r} returned {type(result).__name__}, not a Result")
            attributions[method.id] = Attribution(
                method=method.id,
                raw=result.raw.detach().float(),
                notes=tuple(result.notes),
                layer=passes.layer if method.family == "cam" else "input",
                input_size=hw,
                offset=None if result.offset is None else result.offset.detach().float(),
            )
    return Explanation(
        attributions=attributions,
        logits=passes.logits,
        targets=passes.targets,
        anatomy=anatomy,
        layer=passes.layer,
        refused=refused,
    )
