"""Batch jobs: explain (and score) a whole data set with several models and methods, into Parquet.

    >>> from cnnviz.batch import run_batch, read_results
    >>> run_batch(["val/"], ["resnet50.a1_in1k", "convnext_tiny"], ["grad_cam", "cam"], out="job")
    >>> table = read_results("job")            # one row per image x model x method

Local mode (the default) runs the models in this process while a `DataLoader`'s workers decode
the images; ``ray=True`` (or ``RAY_ADDRESS`` set) runs the same per-batch work
(`cnnviz.batch.work.ExplainBatch`) as a Ray Data job over an actor pool. Either way the job is
resumable: rows already in ``OUT/rows`` are not computed again.
"""

from __future__ import annotations

import datetime
import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch

try:
    import pyarrow  # noqa: F401
except ImportError as exc:  # an optional extra: the library, the app and the other commands need none
    raise ImportError(
        f"cnnviz batch writes Parquet and needs pyarrow: pip install 'cnnviz[batch]' ({exc})"
    ) from None

import cnnviz

from .. import evaluate, zoo
from .inputs import InputError, Item, list_items
from .store import (
    JobMismatchError,
    check_resume,
    done_keys,
    load_job,
    read_results,
    set_aside_broken,
    settings,
    write_job,
)
from .summary import summarize
from .work import MAP_MODES, ExplainBatch, JobSpec, decode_map, row_schema

__all__ = [
    "MAP_MODES",
    "BatchResult",
    "ExplainBatch",
    "InputError",
    "Item",
    "JobMismatchError",
    "JobSpec",
    "Task",
    "data_config",
    "decode_map",
    "list_items",
    "plan_tasks",
    "read_results",
    "row_schema",
    "run_batch",
    "summarize",
    "write_summary",
]


@dataclass(frozen=True)
class Task:
    """One model's share of the job: the images that still miss some of the methods."""

    model: str
    methods: tuple[str, ...]
    items: tuple[Item, ...]


def plan_tasks(
    items: Sequence[Item], models: Sequence[str], methods: Sequence[str], done: set[tuple[str, str, str]]
) -> list[Task]:
    """Per model, the images grouped by the methods they still miss (usually one group)."""
    tasks = []
    for model in models:
        groups: dict[tuple[str, ...], list[Item]] = {}
        for item in items:
            missing = tuple(m for m in methods if (model, m, item.image) not in done)
            if missing:
                groups.setdefault(missing, []).append(item)
        tasks += [Task(model, missing, tuple(group)) for missing, group in groups.items()]
    return tasks


def data_config(name: str) -> dict[str, Any]:
    """A model's timm data config without loading weights (built on the meta device)."""
    timm_name, _ = zoo.resolve_name(name)
    with torch.device("meta"):
        module = timm.create_model(timm_name, pretrained=False)
    return dict(timm.data.resolve_model_data_config(module))


#: `cnnviz.evaluate.evaluate`'s options that a batch job may set (the rest it sets itself).
METRIC_PARAMS = (
    "steps",
    "baseline",
    "insertion_start",
    "batch_size",
    "tolerance",
    "randomization_steps",
    "seed",
)


def check_metric_params(params: dict[str, Any]) -> None:
    """Raises ValueError for a parameter `cnnviz.evaluate` does not take, or a bad value."""
    unknown = sorted(set(params) - set(METRIC_PARAMS))
    if unknown:
        raise ValueError(f"metric parameters: unknown {unknown}; known: {', '.join(METRIC_PARAMS)}")
    signature = inspect.signature(evaluate.evaluate)
    for key, value in params.items():
        default = signature.parameters[key].default
        if isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"metric parameter {key}: expected an integer, got {value!r}")


@dataclass(frozen=True)
class BatchResult:
    """What a run did: the folder, rows in it, rows this run wrote, images/s, error rows."""

    out: Path
    mode: str
    rows: int
    written: int
    passes: int
    wall_s: float
    errors: int
    summary: Path | None

    @property
    def images_per_s(self) -> float:
        return self.passes / self.wall_s if self.wall_s > 0 else float("nan")


def run_batch(
    images: Sequence[str] | Sequence[Item],
    models: Sequence[str],
    methods: Sequence[str],
    out: str | os.PathLike,
    metrics: Sequence[str] = (),
    metric_params: dict[str, Any] | None = None,
    weights: str | None = None,
    device: str | None = None,
    layer: str | None = None,
    maps: str = "full",
    batch_size: int = 16,
    workers: int = 1,
    use_ray: bool = False,
    actors: int | None = None,
    threads: int | None = None,
    retry_errors: bool = False,
    summary: bool = True,
    progress: Callable[[str, int], None] | bool | None = None,
) -> BatchResult:
    """Explain every image with every model and method; rows into ``OUT/rows``, a summary beside.

    Args:
        images: folders, globs, image files, CSV/Parquet listings (`list_items`), or items.
        models: curated ids or timm names.
        methods: method ids (`cnnviz.list_methods()`).
        metrics: metric ids (`cnnviz.evaluate.list_metrics()`); `metric_params` go to its
            ``score``.
        maps: ``full``, ``saliency`` (gradient images reduced to (H, W)) or ``none``.
        batch_size: images per batch given to ``explain``.
        workers: local mode's decoding processes (0: decode in this process).
        use_ray: run as a Ray Data job (also when ``RAY_ADDRESS`` is set).
        actors, threads: Ray mode's actor pool size (default: one per GPU, else per CPU) and
            torch threads per actor (default 1); `threads` also sets local mode's torch threads.
        retry_errors: compute again the rows that recorded an error (unreadable images).
        progress: local mode's callback (model, images) per batch; True for a tqdm bar.

    Raises:
        InputError, ValueError: bad images, names or settings (before any work starts).
        JobMismatchError: `out` holds a job with other settings.
    """
    from ..raytools import ray_requested

    if images and all(isinstance(i, Item) for i in images):
        items = [i for i in images if isinstance(i, Item)]
    else:
        items = list_items([str(i) for i in images])
    methods = tuple(dict.fromkeys(cnnviz.get_method(m).id for m in methods))
    metrics = tuple(dict.fromkeys(metrics))
    if metrics:
        metrics = tuple(m.id for m in evaluate.resolve_metrics(list(metrics)))
    check_metric_params(metric_params or {})
    for name in models:
        zoo.resolve_name(name)
    if not models:
        raise ValueError("models: at least one model is needed")
    models = list(dict.fromkeys(models))
    spec = JobSpec(
        methods=methods,
        metrics=metrics,
        metric_params=tuple(sorted((metric_params or {}).items())),
        weights=weights,
        device=device,
        layer=layer,
        maps=maps,
        threads=threads,
    )
    out = Path(out)
    job = check_resume(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    set_aside_broken(out)
    done = done_keys(out, skip_errors=retry_errors)
    tasks = plan_tasks(items, models, methods, done)
    mode = "ray" if ray_requested(use_ray) else "local"
    job = {
        **job,
        "settings": {
            **settings(spec),
            "methods": _union(job.get("settings", {}).get("methods", []), methods),
        },
        "models": _union(job.get("models", []), models),
        "images": max(int(job.get("images", 0)), len(items)),
        "versions": {"cnnviz": cnnviz.__version__, "torch": torch.__version__, "timm": timm.__version__},
        "runs": job.get("runs", []),
    }
    write_job(out, job)
    passes = sum(len(t.items) for t in tasks)
    t0 = time.monotonic()
    if mode == "local":
        from .local import run_local

        bar = None
        if progress is True:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=passes, unit="image", desc="batch", file=sys.stderr, smoothing=0.1)

            def progress(model: str, n: int) -> None:
                bar.set_postfix_str(model, refresh=False)
                bar.update(n)

        if threads:
            torch.set_num_threads(threads)
        try:
            written = run_local(tasks, spec, str(out), batch_size, workers, on_batch=progress or None)
        finally:
            if bar is not None:
                bar.close()
            _record_run(out, job, mode, passes, t0)
    else:
        from .ray_job import run_ray

        configs = {t.model: data_config(t.model) for t in tasks}
        before = len(done_keys(out))
        try:
            run_ray(tasks, spec, str(out), configs, batch_size, actors, threads or 1, bool(progress))
        finally:
            _record_run(out, job, mode, passes, t0)
        written = len(done_keys(out)) - before
    wall = time.monotonic() - t0
    table = read_results(out, columns=["status", "error"])
    errors = sum(s == "error" for s in table.column("status").to_pylist())
    md = write_summary(out) if summary else None
    return BatchResult(out, mode, table.num_rows, written, passes, wall, errors, md)


def _union(before: Sequence[str], now: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*before, *now]))


def _record_run(out: Path, job: dict, mode: str, passes: int, t0: float) -> None:
    wall = time.monotonic() - t0
    job["runs"] = [
        *job["runs"],
        {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": mode,
            "images": passes,
            "wall_s": round(wall, 2),
            "images_per_s": round(passes / wall, 3) if wall > 0 else None,
        },
    ]
    write_job(out, job)


def write_summary(out: str | os.PathLike) -> Path:
    """``summary.csv``, ``summary.md`` and ``plots/<metric>.png`` from the rows in `out`."""
    from .summary import plot_metric, write_csv, write_markdown

    out = Path(out)
    job = load_job(out)
    metrics = job.get("settings", {}).get("metrics", [])
    table = read_results(out, columns=[c for c in row_schema(metrics).names if c not in ("map",)])
    entries = summarize(table, metrics)
    write_csv(entries, out / "summary.csv")
    labels = {m.id: m.label for m in evaluate.list_metrics()}
    notes = {
        m.id: f"{m.label} ({m.paper}): {m.direction} is better{'; needs a box' if m.needs_box else ''}."
        for m in evaluate.list_metrics()
    }
    plots = {}
    for m in metrics:
        path = out / "plots" / f"{m}.png"
        if plot_metric(entries, m, path, labels.get(m, m)):
            plots[m] = f"plots/{m}.png"
    errors: dict[str, str] = {}
    for row in table.to_pylist():
        if row["status"] == "error":
            errors.setdefault(row["image"], row["error"])
    md = out / "summary.md"
    write_markdown(entries, md, metrics, sorted(errors.items()), job, plots, notes)
    return md
