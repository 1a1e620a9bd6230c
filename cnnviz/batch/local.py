"""Local mode: one process runs the models; a torch `DataLoader`'s workers decode the images.

Rows are buffered and written as a Parquet part every `flush_s` seconds (and at the end, and on
an interruption), so a stopped job loses at most that much work and resumes from the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import pyarrow as pa
import torch

from .decode import DecodeDataset, collate
from .store import write_part
from .work import ExplainBatch, JobSpec


def run_local(
    tasks: Sequence,
    spec: JobSpec,
    out: str,
    batch_size: int = 16,
    workers: int = 1,
    flush_s: float = 30.0,
    on_batch: Callable[[str, int], None] | None = None,
) -> int:
    """Run each task (a model, its missing methods, its items); returns the rows written.

    Args:
        workers: `DataLoader` worker processes that decode images (0: decode in this process).
        on_batch: called with (model, images) after each batch (the progress bar).
    """
    written = 0
    for task in tasks:
        work = ExplainBatch(replace(spec, methods=task.methods), task.model)
        loader = torch.utils.data.DataLoader(
            DecodeDataset(task.items, work.model.data_config),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            prefetch_factor=2 if workers else None,
        )
        pending: list[pa.Table] = []
        last = time.monotonic()

        def flush() -> None:
            nonlocal pending, last, written
            if pending:
                table = pa.concat_tables(pending)
                write_part(out, table)
                written += table.num_rows
            pending, last = [], time.monotonic()

        try:
            for batch in loader:
                pending.append(work(batch))
                if on_batch:
                    on_batch(task.model, len(batch["image"]))
                if time.monotonic() - last >= flush_s:
                    flush()
        finally:  # an interruption keeps what is done: the next run resumes after it
            flush()
    return written
