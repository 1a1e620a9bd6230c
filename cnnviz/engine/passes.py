"""The shared passes: one forward pass, then the backward passes the requested methods need."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..common import close_matches, did_you_mean
from .anatomy import Inspection
from .capture import Members, capture_outputs, model_guard
from .head import HeadFold
from .layout import FINAL, MapSpec, infer_spec, param_like, timm_api
from .rules import RULES, ActivationRules, describe_rules

TargetArg = int | Sequence[int] | torch.Tensor | None


@dataclass(frozen=True)
class Needs:
    """What a method reads from the shared passes.

    Attributes:
        map: the feature map at the chosen layer, canonical (B, C, h, w).
        map_grad: d score / d map, plain rule (implies `map`).
        rules: backward rules (names in `RULES`) whose input gradient d score / d x it reads.
    """

    map: bool = False
    map_grad: bool = False
    rules: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.rules) - set(RULES)
        if unknown:
            raise ValueError(f"unknown backward rules {sorted(unknown)}; known: {', '.join(RULES)}")
        if self.map_grad and not self.map:
            object.__setattr__(self, "map", True)
        object.__setattr__(self, "rules", frozenset(self.rules))

    @classmethod
    def parse(cls, products: Iterable[str]) -> Needs:
        """From product names: ``"map"``, ``"map_grad"``, ``"grad:<rule>"``."""
        products = set(products)
        rules = {p.split(":", 1)[1] for p in products if p.startswith("grad:")}
        unknown = products - {"map", "map_grad"} - {f"grad:{r}" for r in rules}
        if unknown or set(rules) - set(RULES):
            raise ValueError(
                f"unknown products {sorted(unknown | {f'grad:{r}' for r in set(rules) - set(RULES)})}; "
                f"known: {', '.join(products_known())}"
            )
        return cls("map" in products, "map_grad" in products, frozenset(rules))

    def __or__(self, other: Needs) -> Needs:
        return Needs(self.map or other.map, self.map_grad or other.map_grad, self.rules | other.rules)

    def __bool__(self) -> bool:
        return self.map or self.map_grad or bool(self.rules)


def products_known() -> tuple[str, ...]:
    return ("map", "map_grad", *(f"grad:{r}" for r in RULES))


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
        fold: the CAM head fold of the model (see `cnnviz.engine.head.HeadFold`), or None.
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
    fold: HeadFold | None = None
    layer_notes: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    @property
    def fmap(self) -> torch.Tensor:
        """`map`, for a method that declared it needs it (a programming error otherwise)."""
        if self.map is None:
            raise RuntimeError("the feature map was not computed: the method must declare that it needs it")
        return self.map

    @property
    def fmap_grad(self) -> torch.Tensor:
        """`map_grad`, for a method that declared it needs it (a programming error otherwise)."""
        if self.map_grad is None:
            raise RuntimeError(
                "the map's gradient was not computed: the method must declare that it needs it"
            )
        return self.map_grad


def resolve_layer(model: nn.Module, insp: Inspection, layer: str | None) -> str:
    if layer is None or layer == "":
        return insp.anatomy.source
    if layer in (FINAL, "final"):
        return FINAL
    if layer in insp.anatomy.stages:
        return layer
    names = [n for n, _ in model.named_modules() if n]
    if layer in names:
        return layer
    hint = did_you_mean(close_matches(layer, list(insp.anatomy.stages) + names), quote=True)
    raise ValueError(
        f"unknown layer {layer!r}; use None (the final map), 'forward_features', one of the stages "
        f"{list(insp.anatomy.stages)} or a module name from model.named_modules(){hint}"
    )


def resolve_targets(target: TargetArg, logits: torch.Tensor) -> torch.Tensor:
    b, k = logits.shape
    if target is None:
        return logits.argmax(1)
    if isinstance(target, bool):
        raise ValueError(f"target must be None, an int or one int per sample; got {target!r}")
    if isinstance(target, torch.Tensor):
        values = target.flatten().tolist()
    elif isinstance(target, int | float):
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

    rules: tuple[str, ...]  # backward rules whose input gradient is needed, in RULES' order
    need_map: bool
    need_map_grad: bool

    @classmethod
    def of(cls, needs: Needs) -> _Plan:
        return cls(tuple(r for r in RULES if r in needs.rules), needs.map, needs.map_grad)

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


def run_passes(
    model: nn.Module,
    found: Members,
    x: torch.Tensor,
    needs: Needs,
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
        rules = ActivationRules(switchable=True) if plan.switchable else None
        feats, logits, cap = _forward(model, xin, plan, layer, rules if rules is not None else nullcontext())
        targets = resolve_targets(target, logits.detach())
        passes = Passes(x=xin.detach(), logits=logits.detach(), targets=targets, layer=layer, fold=insp.fold)
        passes.kinds = tuple(sorted(rules.kinds)) if rules is not None else insp.anatomy.activations
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
                assert native is not None, "the plan computes the map whenever it needs its gradient"
                inputs.append(native)
            if rules is not None:
                rules.rule = rule
            computed = torch.autograd.grad(score, inputs, retain_graph=i < len(order) - 1, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, computed, strict=True)]
            if rule in plan.rules:
                passes.input_grads[rule] = grads[0].detach().float()
                passes.rule_notes[rule] = describe_rules(passes.kinds, rule)
            if rule == "plain" and plan.need_map_grad and spec is not None:
                passes.map_grad = spec.to_canonical(grads[-1]).detach().float()
    return passes


def _forward(model: nn.Module, xin: torch.Tensor, plan: _Plan, layer: str, mode):
    """One forward pass recording what the plan needs: (features, logits, captured outputs)."""
    late = plan.late_graph
    capture: AbstractContextManager[Any] = nullcontext()
    if plan.need_map and layer != FINAL:
        capture = capture_outputs(model, [layer], start_graph=late)
    grad_mode: AbstractContextManager[Any]
    if not (plan.rules or plan.need_map_grad):
        grad_mode = torch.inference_mode()
    else:
        grad_mode = torch.no_grad() if late else torch.enable_grad()
    with grad_mode, mode, capture as cap:
        feats = timm_api(model).forward_features(xin)
        if late and layer == FINAL:
            feats = feats.detach().requires_grad_(True)
        with torch.enable_grad() if late else nullcontext():
            logits = timm_api(model).forward_head(feats)
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


class Runner:
    """The narrow handle through which a method runs the model itself, batched.

    A method gets one in `compute`; everything it runs stays inside the `explain` call's state
    guard (eval mode, hooks removed afterwards, no parameter ``.grad``). Two operations:

    * `forward`: logits of many inputs (Score-CAM's masked copies), no graph, in batches;
    * `passes`: the same shared passes `explain` runs, on other inputs (SmoothGrad's noisy
      copies, Integrated Gradients' path points): the map, its gradient and input gradients under
      any rule, for explicit targets, in batches, concatenated.

    `forwards` counts the samples it pushed through the model.
    """

    def __init__(self, model: nn.Module, found: Members, insp: Inspection, passes: Passes):
        self._model = model
        self._found = found
        self._insp = insp
        self.layer = passes.layer
        self.x = passes.x
        self.targets = passes.targets
        self.logits = passes.logits
        self.forwards = 0

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The (mean, std) per channel that turned pixels in [0, 1] into the model's input: timm's
        data config of the model (its ``pretrained_cfg``; ImageNet's when it has none). Methods
        that need a pixel-space reference (a black image) read it here."""
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(self._model)
        return tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])

    def forward(self, xs: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 32) -> torch.Tensor:
        """Logits (N, K) of `xs`: one tensor (cut into batches of `batch_size`) or an iterable of
        batches (made lazily by the caller, so that N inputs never sit in memory at once)."""
        batches = _chunks(xs, batch_size) if isinstance(xs, torch.Tensor) else xs
        like = param_like(self._model)
        out = []
        with torch.inference_mode():
            for batch in batches:
                out.append(self._model(batch.to(*like)).float())
                self.forwards += batch.shape[0]
        if not out:
            return self.logits.new_zeros((0, self.logits.shape[1]))
        return torch.cat(out)

    def passes(self, xs: torch.Tensor, targets: torch.Tensor, needs: Needs, batch_size: int = 32) -> Passes:
        """The shared passes on `xs` (N, 3, H, W) for `targets` (N,), in batches, concatenated."""
        if xs.shape[0] != targets.shape[0]:
            raise ValueError(f"{xs.shape[0]} inputs but {targets.shape[0]} targets")
        parts = []
        for start in range(0, xs.shape[0], batch_size):
            part = run_passes(
                self._model,
                self._found,
                xs[start : start + batch_size],
                needs,
                targets[start : start + batch_size],
                self.layer,
                self._insp,
            )
            parts.append(part)
            self.forwards += part.x.shape[0]
        return _concat(parts)


def _chunks(xs: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, xs.shape[0], size):
        yield xs[start : start + size]


def _concat(parts: list[Passes]) -> Passes:
    first = parts[0]
    if len(parts) == 1:
        return first

    def cat(get):
        values = [get(p) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return Passes(
        x=cat(lambda p: p.x),
        logits=cat(lambda p: p.logits),
        targets=cat(lambda p: p.targets),
        layer=first.layer,
        map=cat(lambda p: p.map),
        map_grad=cat(lambda p: p.map_grad),
        input_grads={r: torch.cat([p.input_grads[r] for p in parts]) for r in first.input_grads},
        rule_notes=first.rule_notes,
        fold=first.fold,
        layer_notes=first.layer_notes,
        kinds=first.kinds,
    )
