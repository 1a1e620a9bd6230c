"""Ray mode: the same job as a Ray Data pipeline (``pip install cnnviz[ray]``).

Per model: ``from_items`` (the listed images) -> ``map_batches(decode_batch)`` as Ray tasks ->
``map_batches(ExplainBatch)`` over an ``ActorPoolStrategy`` pool, each actor loading the model
once (one GPU per actor where the cluster has GPUs) -> ``write_parquet`` into ``OUT/rows``. The
per-batch work is `cnnviz.batch.work.ExplainBatch`, the very class local mode calls.

Ray fuses a task step into the following actor step when both ask for the same resources
(Ray Data's operator fusion): on CPU-only machines with one CPU per actor, each actor then
decodes its own batches; with GPU actors, decoding stays in separate CPU tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..raytools import connect
from .decode import decode_batch, item_rows
from .store import rows_dir
from .work import ExplainBatch, JobSpec


@dataclass(frozen=True)
class Pool:
    """How the actors are laid out: how many, and what each one reserves."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int


def plan_pool(resources: dict[str, float], actors: int | None = None, threads: int = 1) -> Pool:
    """One actor per GPU where there are GPUs, else one per `threads` CPUs.

    Without GPUs, an actor asking for one CPU absorbs the decode step (Ray fuses the two), so
    every CPU can hold an actor; with more threads per actor, one CPU is kept for decoding.
    """
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus:
        return Pool(actors or gpus, 1, 1, threads)
    spare = cpus if threads == 1 else max(1, cpus - 1)
    return Pool(actors or max(1, spare // threads), threads, 0, threads)


def run_ray(
    tasks: Sequence,
    spec: JobSpec,
    out: str,
    data_configs: dict[str, dict],
    batch_size: int = 16,
    actors: int | None = None,
    threads: int = 1,
    progress: bool = True,
) -> Pool:
    """Run each task as a Ray Data job writing Parquet parts into ``OUT/rows``."""
    ray = connect()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    pool = plan_pool(ray.cluster_resources(), actors, threads)
    for task in tasks:
        task_spec = replace(spec, methods=task.methods, threads=pool.threads)
        blocks = -(-len(task.items) // batch_size)  # one block per batch: a small job still spreads
        ds = ray.data.from_items(item_rows(task.items), override_num_blocks=blocks)
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={"data_config": data_configs[task.model]},
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=1,
        )
        ds = ds.map_batches(
            ExplainBatch,
            fn_constructor_kwargs={"spec": task_spec, "model": task.model},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(pool.actors, blocks)),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
        )
        ds.write_parquet(str(rows_dir(out).resolve()))
    return pool
