"""The per-batch work of a batch job, one definition for both modes.

`ExplainBatch(spec, model)` loads its model once (in the local process, or once per Ray actor)
and turns a decoded batch (`cnnviz.batch.decode`) into output rows: one per image and method,
with the top-5 predictions, the map stored as float16 at its own resolution, and the metrics
asked for. Local mode calls it on each `DataLoader` batch; Ray mode hands the class to
``Dataset.map_batches`` over an actor pool. Gradient methods need autograd, so nothing here
runs under ``torch.inference_mode``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .. import zoo
from ..types import Explanation

MAP_MODES = ("full", "saliency", "none")
STATUSES = ("ok", "refused", "error")
KEY = ("model", "method", "image")


@dataclass(frozen=True)
class JobSpec:
    """What every batch of a job computes (picklable: it travels to Ray actors).

    Attributes:
        methods: method ids, in order.
        metrics: metric ids (`cnnviz.evaluate`), in order; empty for none.
        metric_params: keyword arguments for `cnnviz.evaluate.score` (e.g. ``steps``).
        weights: the weights policy (``hub``, ``random``, ``auto``; None: ``CNNVIZ_WEIGHTS``).
        device: torch device for the models (None: CUDA when available, else CPU).
        layer: the layer for CAM-family methods (None: each model's default).
        maps: ``full`` stores each map as computed (CAM family (h, w), gradient family
            (3, H, W)); ``saliency`` reduces gradient images to (H, W) by the max of absolute
            values over channels (Simonyan et al. 2013); ``none`` stores no maps.
        threads: torch threads in the process that runs the models (None: leave torch's default).
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    metric_params: tuple[tuple[str, Any], ...] = field(default=())
    weights: str | None = None
    device: str | None = None
    layer: str | None = None
    maps: str = "full"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.maps not in MAP_MODES:
            raise ValueError(f"maps: {self.maps!r} is not one of {', '.join(MAP_MODES)}")
        if not self.methods:
            raise ValueError("methods: at least one method is needed")


def metric_column(metric: str) -> str:
    return f"metric_{metric}"


def row_schema(metrics: Sequence[str] = ()) -> pa.Schema:
    """The output table's columns (one row per image x model x method)."""
    fields = [
        pa.field("image", pa.string()),
        pa.field("path", pa.string()),
        pa.field("model", pa.string()),
        pa.field("weights", pa.string()),
        pa.field("method", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("image_size", pa.list_(pa.int32())),
        pa.field("box", pa.list_(pa.float32())),
        pa.field("target", pa.int32()),
        pa.field("target_given", pa.bool_()),
        pa.field("target_prob", pa.float32()),
        pa.field("target_rank", pa.int32()),
        pa.field("top5_class", pa.list_(pa.int32())),
        pa.field("top5_prob", pa.list_(pa.float32())),
        pa.field("layer", pa.string()),
        pa.field("notes", pa.string()),
        pa.field("map", pa.binary()),
        pa.field("map_shape", pa.list_(pa.int32())),
        pa.field("map_offset", pa.float32()),
        *[pa.field(metric_column(m), pa.float64()) for m in metrics],
        pa.field("explain_s", pa.float32()),
        pa.field("metrics_s", pa.float32()),
    ]
    return pa.schema(fields)


TIMING_COLUMNS = ("explain_s", "metrics_s")


def decode_map(data: bytes | None, shape: Sequence[int] | None) -> np.ndarray | None:
    """A stored map back as a float16 array of its shape (None when none was stored)."""
    if data is None or shape is None:
        return None
    return np.frombuffer(data, dtype="<f2").reshape(tuple(shape))


class ExplainBatch:
    """Explain (and score) decoded batches with one model, loaded once.

    Ray Data builds one instance per actor (``fn_constructor_kwargs``); local mode builds one
    per model. Calling it on a batch returns a `pyarrow.Table` with `row_schema`.
    """

    def __init__(self, spec: JobSpec, model: str):
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.name = model
        self.model = zoo.load_model(model, weights=spec.weights, device=spec.device)
        self.num_classes = len(self.model.class_names)
        self._schema = row_schema(spec.metrics)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        n = len(batch["image"])
        rows: list[list[dict[str, Any]] | None] = [None] * n
        errors = [str(e) for e in batch["error"]]
        targets = np.asarray(batch["target"], dtype=np.int64)
        for i in range(n):
            if not errors[i] and targets[i] >= self.num_classes:
                errors[i] = f"target {targets[i]} is not a class of {self.name} ({self.num_classes} classes)"
            if errors[i]:
                rows[i] = [self._base(batch, i, m, "error", errors[i]) for m in self.spec.methods]
        good = [i for i in range(n) if not errors[i]]
        # explain() takes one target per sample or None for top-1: the two kinds go separately.
        for group in ([i for i in good if targets[i] >= 0], [i for i in good if targets[i] < 0]):
            if group:
                for i, image_rows in zip(group, self._explain(batch, group), strict=True):
                    rows[i] = image_rows
        flat = [r for image_rows in rows for r in (image_rows or [])]
        return pa.Table.from_pylist(flat, schema=self._schema)

    def _base(self, batch: Mapping[str, np.ndarray], i: int, method: str, status: str, error: str) -> dict:
        box = np.asarray(batch["box"][i], dtype=np.float64)
        return {
            "image": str(batch["image"][i]),
            "path": str(batch["path"][i]),
            "model": self.name,
            "weights": self.model.weights_source,
            "method": method,
            "status": status,
            "error": error,
            "image_size": [int(v) for v in batch["image_size"][i]],
            "box": [float(v) for v in box] if np.all(np.isfinite(box)) else None,
            "target": int(batch["target"][i]) if int(batch["target"][i]) >= 0 else None,
            "target_given": bool(int(batch["target"][i]) >= 0),
        }

    def _explain(self, batch: Mapping[str, np.ndarray], idx: list[int]) -> list[list[dict]]:
        spec = self.spec
        x = torch.as_tensor(np.array(batch["x"][idx], dtype=np.float32)).to(self.model.device)
        given = [int(batch["target"][i]) for i in idx]
        target = given if given[0] >= 0 else None
        t0 = time.perf_counter()
        ex = self.model.explain(x, methods=spec.methods, target=target, layer=spec.layer, strict=False)
        self._sync()
        explain_s = (time.perf_counter() - t0) / len(idx)
        t0 = time.perf_counter()
        scores = self._score(x, ex, batch, idx) if spec.metrics and ex.attributions else {}
        self._sync()
        metrics_s = (time.perf_counter() - t0) / len(idx) if spec.metrics else 0.0
        probs = ex.probabilities.detach().float().cpu()
        top = torch.topk(probs, k=min(5, probs.shape[1]))
        out = []
        for j, i in enumerate(idx):
            t = int(ex.targets[j])
            common = {
                "target": t,
                "target_prob": float(probs[j, t]),
                "target_rank": int((probs[j] > probs[j, t]).sum()),
                "top5_class": [int(c) for c in top.indices[j]],
                "top5_prob": [float(p) for p in top.values[j]],
                "explain_s": explain_s,
                "metrics_s": metrics_s,
            }
            image_rows = []
            for method in spec.methods:
                if method in ex.refused:
                    row = {**self._base(batch, i, method, "refused", ex.refused[method]), **common}
                else:
                    row = {**self._base(batch, i, method, "ok", ""), **common, **self._map(ex, method, j)}
                    for metric in spec.metrics:
                        value = scores.get(method, {}).get(metric)
                        row[metric_column(metric)] = None if value is None else _finite(value[j])
                image_rows.append(row)
            out.append(image_rows)
        return out

    def _sync(self) -> None:
        """Wait for the GPU, so that the seconds per image are the work's, not its launch's."""
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)

    def _map(self, ex: Explanation, method: str, j: int) -> dict[str, Any]:
        att = ex[method]
        raw = att.raw[j].detach().float()
        if self.spec.maps == "saliency" and raw.dim() == 3:
            raw = raw.abs().amax(dim=0)
        row: dict[str, Any] = {
            "layer": att.layer,
            "notes": "; ".join(att.notes),
            "map_offset": None if att.offset is None else float(att.offset[j]),
        }
        if self.spec.maps != "none":
            half = raw.cpu().numpy().astype("<f2")
            row["map"] = half.tobytes()
            row["map_shape"] = list(half.shape)
        return row

    def _score(
        self, x: torch.Tensor, ex: Explanation, batch: Mapping[str, np.ndarray], idx: list[int]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """`cnnviz.evaluate.score` on the batch: metrics that need a box only on the images that
        have one (NaN on the others), metrics a method's family does not define left out."""
        from .. import evaluate

        params = {**dict(self.spec.metric_params), "strict": False}
        chosen = evaluate.resolve_metrics(list(self.spec.metrics))
        plain = [m.id for m in chosen if not m.needs_box]
        boxed = [m.id for m in chosen if m.needs_box]
        scores: dict[str, dict[str, torch.Tensor]] = {m: {} for m in ex.attributions}
        if plain:
            for method, values in evaluate.score(self.model.module, x, ex, plain, **params).items():
                scores[method].update(values)
        boxes = torch.as_tensor(np.array(batch["input_box"][idx], dtype=np.float32))
        have = [j for j in range(len(idx)) if bool(torch.isfinite(boxes[j]).all())]
        if boxed and have:
            sub = subset(ex, have)
            found = evaluate.score(self.model.module, x[have], sub, boxed, boxes[have], **params)
            for method, values in found.items():
                for metric, value in values.items():
                    full = torch.full((len(idx),), float("nan"))
                    full[have] = value.float().cpu()
                    scores[method][metric] = full
        return scores


def subset(ex: Explanation, rows: Sequence[int]) -> Explanation:
    """The explanation of some of its images (same maps, logits and targets, those rows only)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[index.to(t.device)]

    attributions = {
        m: replace(a, raw=pick(a.raw), offset=None if a.offset is None else pick(a.offset))
        for m, a in ex.attributions.items()
    }
    return replace(ex, attributions=attributions, logits=pick(ex.logits), targets=pick(ex.targets))


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None
