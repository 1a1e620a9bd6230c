"""`explain`: one forward pass, shared backward passes, one `Attribution` per method."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .anatomy import FINAL, Inspection, MapSpec, infer_spec, inspection, param_like
from .capture import ActivationRules, Members, Passes, capture_outputs, describe_rules, members, model_guard
from .methods import Method, resolve_methods
from .types import Attribution, Explanation

TargetArg = int | Sequence[int] | torch.Tensor | None


def explain(
    model: nn.Module,
    x: torch.Tensor,
    methods: str | Sequence[str | Method] = ("grad_cam",),
    target: TargetArg = None,
    layer: str | None = None,
    strict: bool = True,
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

    Returns:
        An `Explanation` with one `Attribution` per method that applies.
    """
    chosen = resolve_methods(methods)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a preprocessed batch of shape (B, 3, H, W); got {shape}")
    found = members(model)
    insp = inspection(model, found)
    anatomy = insp.anatomy
    layer_name = _resolve_layer(model, insp, layer)
    layer_is_final = layer_name == FINAL
    refused: dict[str, str] = {}
    run: list[Method] = []
    for method in chosen:
        reason = method.refusal(anatomy, layer_is_final)
        if reason is None:
            run.append(method)
        elif strict:
            raise ValueError(f"{method.id} does not apply to {anatomy.architecture}: {reason}")
        else:
            refused[method.id] = reason
    needs = frozenset().union(*(m.needs for m in run)) if run else frozenset()
    passes = _run_passes(model, found, x, needs, target, layer_name, insp)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    attributions: dict[str, Attribution] = {}
    for method in run:
        raw, notes, *offset = method.compute(passes)
        attributions[method.id] = Attribution(
            method=method.id,
            raw=raw.detach().float(),
            notes=tuple(notes),
            layer=passes.layer if method.family == "cam" else "input",
            input_size=hw,
            offset=offset[0].detach().float() if offset else None,
        )
    return Explanation(
        attributions=attributions,
        logits=passes.logits,
        targets=passes.targets,
        anatomy=anatomy,
        layer=passes.layer,
        refused=refused,
    )


def _resolve_layer(model: nn.Module, insp: Inspection, layer: str | None) -> str:
    if layer is None or layer == "":
        return insp.anatomy.source
    if layer in (FINAL, "final"):
        return FINAL
    if layer in insp.anatomy.stages:
        return layer
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, list(insp.anatomy.stages) + names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown layer {layer!r}; use None (the final map), 'forward_features', one of the stages "
        f"{list(insp.anatomy.stages)} or a module name from model.named_modules().{hint}"
    )


def _resolve_targets(target: TargetArg, logits: torch.Tensor) -> torch.Tensor:
    b, k = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, torch.Tensor):
        values = target.flatten().tolist()
    elif isinstance(target, int | float) and not isinstance(target, bool):
        values = [target] * b
    else:
        values = list(target)
    if len(values) == 1 and b > 1:
        values = values * b
    if len(values) != b or any(int(v) != v or not 0 <= int(v) < k for v in values):
        raise ValueError(
            f"target must be None, an int in [0, {k}) or one such int per sample ({b}); got {target!r}"
        )
    return torch.tensor([int(v) for v in values], dtype=torch.long, device=logits.device)


@dataclass(frozen=True)
class _Plan:
    """Which passes the requested methods need."""

    rules: tuple[str, ...]  # backward rules whose input gradient is needed
    need_map: bool
    need_map_grad: bool

    @classmethod
    def of(cls, needs: frozenset[str]) -> _Plan:
        rules = tuple(r for r in ("plain", "guided", "deconv") if f"grad:{r}" in needs)
        return cls(rules, "map" in needs or "map_grad" in needs, "map_grad" in needs)

    @property
    def switchable(self) -> bool:
        return any(r != "plain" for r in self.rules)

    @property
    def late_graph(self) -> bool:
        """Without input gradients the graph only needs to start at the layer."""
        return self.need_map_grad and not self.rules

    @property
    def backward_order(self) -> list[str]:
        return (["plain"] if self.need_map_grad and "plain" not in self.rules else []) + list(self.rules)


def _run_passes(
    model: nn.Module,
    found: Members,
    x: torch.Tensor,
    needs: frozenset[str],
    target: TargetArg,
    layer: str,
    insp: Inspection,
) -> Passes:
    plan = _Plan.of(needs)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    with model_guard(model, found), torch.inference_mode(False):
        xin = x.detach().to(*param_like(model))
        if plan.rules:  # a leaf of our own, so that the caller's tensor never requires grad
            xin = xin.clone().requires_grad_(True)
        mode = ActivationRules(switchable=True) if plan.switchable else nullcontext()
        feats, logits, cap = _forward(model, xin, plan, layer, mode)
        targets = _resolve_targets(target, logits.detach())
        passes = Passes(x=xin.detach(), logits=logits.detach(), targets=targets, layer=layer, fold=insp.fold)
        passes.kinds = tuple(sorted(mode.kinds)) if plan.switchable else insp.anatomy.activations
        native, spec = None, None
        if plan.need_map:
            native, spec = _map_at(model, feats, cap, layer, hw)
            passes.map = spec.to_canonical(native).detach().float()
            passes.layer_notes = (insp.anatomy.source_note,) if layer == insp.anatomy.source != FINAL else ()
        score = logits.gather(1, targets[:, None]).sum()
        order = plan.backward_order
        for i, rule in enumerate(order):
            inputs = [xin] if rule in plan.rules else []
            if rule == "plain" and plan.need_map_grad:
                inputs.append(native)
            if plan.switchable:
                mode.rule = rule
            grads = torch.autograd.grad(score, inputs, retain_graph=i < len(order) - 1, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
            if rule in plan.rules:
                passes.input_grads[rule] = grads[0].detach().float()
                passes.rule_notes[rule] = describe_rules(passes.kinds, rule)
            if rule == "plain" and plan.need_map_grad:
                passes.map_grad = spec.to_canonical(grads[-1]).detach().float()
    return passes


def _forward(model: nn.Module, xin: torch.Tensor, plan: _Plan, layer: str, mode):
    """One forward pass recording what the plan needs: (features, logits, captured outputs)."""
    late = plan.late_graph
    capture = nullcontext()
    if plan.need_map and layer != FINAL:
        capture = capture_outputs(model, [layer], start_graph=late)
    if not (plan.rules or plan.need_map_grad):
        grad_mode = torch.inference_mode()
    else:
        grad_mode = torch.no_grad() if late else torch.enable_grad()
    with grad_mode, mode, capture as cap:
        feats = model.forward_features(xin)
        if late and layer == FINAL:
            feats = feats.detach().requires_grad_(True)
        with torch.enable_grad() if late else nullcontext():
            logits = model.forward_head(feats)
    return feats, logits, cap


def _map_at(model: nn.Module, feats, cap, layer: str, hw: tuple[int, int]) -> tuple[torch.Tensor, MapSpec]:
    native = feats if layer == FINAL else cap.outputs.get(layer)
    if native is None:
        raise ValueError(f"layer {layer!r} produced no tensor output in the forward pass")
    spec = infer_spec(native, hw, model, final=layer == FINAL)
    if spec is None:
        raise ValueError(
            f"layer {layer!r} outputs shape {tuple(native.shape)}, which is not a spatial map "
            "(NCHW, NHWC or tokens on a grid); choose one of the anatomy's stages"
        )
    return native, spec
