"""The public result types: `Anatomy`, `Attribution`, `Explanation`.

They carry tensors and metadata only; turning them into pictures is `cnnviz.render`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Layout = Literal["NCHW", "NHWC", "tokens"]

FINAL = "forward_features"
"""The layer name of the final map: the output of timm's `forward_features`, which the head pools."""


@dataclass(frozen=True)
class Anatomy:
    """What `cnnviz.inspect` found out about a model.

    Attributes:
        architecture: timm architecture name (or the class name for non-timm modules).
        layout: layout of the final feature map as the model produces it.
        shape: the final map as (C, H, W) at `input_size`.
        input_size: (3, H, W) the anatomy was probed at (the model's default input size).
        num_prefix_tokens: class/distillation/register tokens in front of the patch tokens
            (token layouts only, else 0).
        grid: (h, w) patch grid for token layouts, else None.
        source: where the map is taken: ``"forward_features"`` or a module name.
        source_note: why that source was chosen (e.g. class-token pooling).
        head: readable description of what lies between the map and the logits.
        head_kind: ``linear`` (pool + linear/1x1 conv/foldable affine), ``norm`` (pool + norm
            + linear), ``nonlinear`` (pool + MLP or nonlinearity), ``spatial`` (the head
            reads more than the spatial mean: attention/max pooling, flatten-FC, spatial
            conv), ``token`` (class-token pooling), ``none`` (no classifier).
        num_classes: number of logits.
        cam_exact: whether ``mean_xy CAM_c + b_c == logit_c`` holds (checked numerically).
        cam_reason: when not exact, why (empty string when exact).
        activations: activation kinds seen in a forward pass (``relu``, ``silu``, ``gelu``...),
            module and functional calls alike, sorted.
        stages: selectable intermediate layers (module names), shallow to deep.
        stage_shapes: (C, H, W) of each stage at `input_size`, aligned with `stages`.
    """

    architecture: str
    layout: Layout
    shape: tuple[int, int, int]
    input_size: tuple[int, int, int]
    num_prefix_tokens: int
    grid: tuple[int, int] | None
    source: str
    source_note: str
    head: str
    head_kind: str
    num_classes: int
    cam_exact: bool
    cam_reason: str
    activations: tuple[str, ...]
    stages: tuple[str, ...]
    stage_shapes: tuple[tuple[int, int, int], ...] = ()

    def is_final(self, layer: str | None = None) -> bool:
        """Whether `layer` is the final map that the head pools (CAM needs it).

        None (or "") means the default layer, `source`: the final map, except for class-token
        models, whose default is the earlier layer the gradient reaches. ``"final"`` and
        ``"forward_features"`` name the final map itself.
        """
        if not layer:
            return self.source == FINAL
        return layer in (FINAL, "final")

    def summary(self) -> str:
        """A few readable lines, for the CLI and the app."""
        c, h, w = self.shape
        lines = [
            f"architecture : {self.architecture}",
            f"final map    : {self.layout} -> (C={c}, H={h}, W={w}) at input {self.input_size}",
            f"taken from   : {self.source}" + (f" ({self.source_note})" if self.source_note else ""),
            f"head         : {self.head} [{self.head_kind}], {self.num_classes} classes",
            "CAM          : exact" if self.cam_exact else f"CAM          : not exact: {self.cam_reason}",
            f"activations  : {', '.join(self.activations) or 'none'}",
            f"stages       : {', '.join(self.stages) or 'none'}",
        ]
        if self.layout == "tokens":
            lines.insert(2, f"tokens       : {self.num_prefix_tokens} prefix + grid {self.grid}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Attribution:
    """One method's result for a batch.

    Attributes:
        method: registry id (``grad_cam``...).
        raw: CAM family ``(B, h, w)`` at the map's resolution; gradient family
            ``(B, 3, H, W)`` signed, at the input's resolution. Detached, float32, on the
            model's device.
        notes: human-readable facts about how it was computed (rules, layer, why).
        layer: the layer the map was taken from (``"input"`` for gradient methods).
        input_size: (H, W) of the input batch.
        offset: for ``cam``, the (B,) folded bias ``b_c`` such that
            ``raw.mean((-2, -1)) + offset == logit_c`` (Zhou et al.'s identity); else None.
    """

    method: str
    raw: torch.Tensor
    notes: tuple[str, ...] = ()
    layer: str = ""
    input_size: tuple[int, int] = (0, 0)
    offset: torch.Tensor | None = None

    @property
    def is_spatial_map(self) -> bool:
        """True for CAM-like (B, h, w) maps, False for input-gradient (B, 3, H, W) images."""
        return self.raw.dim() == 3

    def heatmap(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """A (B, H, W) map at the input size (or `size`), bilinear for maps.

        Gradient images are reduced over channels by the max of absolute values, the
        usual saliency of Simonyan et al. (2013).
        """
        size = size or self.input_size
        raw = self.raw.detach().float()
        if raw.dim() == 4:
            raw = raw.abs().amax(dim=1)
        if tuple(raw.shape[-2:]) == tuple(size):
            return raw
        return F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class Explanation:
    """The result of `cnnviz.explain`: one `Attribution` per requested method.

    Attributes:
        attributions: method id -> Attribution, in the order requested.
        logits: (B, num_classes) logits of the forward pass (detached).
        targets: (B,) the class explained for each sample.
        anatomy: the model's anatomy.
        layer: the layer used for CAM-family methods.
        refused: method id -> reason, for methods that do not apply (only filled when
            `explain(..., strict=False)`).
    """

    attributions: dict[str, Attribution]
    logits: torch.Tensor
    targets: torch.Tensor
    anatomy: Anatomy
    layer: str
    refused: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, method: str) -> Attribution:
        return self.attributions[method]

    def __iter__(self):
        return iter(self.attributions.values())

    def __len__(self) -> int:
        return len(self.attributions)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.float().softmax(dim=-1)
