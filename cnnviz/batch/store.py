"""A batch job's output folder: the Parquet rows, the job record, what is already done.

    OUT/rows/*.parquet   one row per image x model x method (a Parquet dataset: read the folder)
    OUT/job.json         the settings, the models, each run (mode, images, rows, seconds)
    OUT/summary.md, OUT/summary.csv, OUT/plots/*.png

Local mode writes each part to a temporary name and renames it, so a part is whole or absent;
Ray writes its parts itself. A part that cannot be read (a job killed while writing) is set
aside as ``*.broken`` when the folder is next opened, and its rows are computed again.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .work import KEY, JobSpec, row_schema

_log = logging.getLogger(__name__)

#: Settings that change the content of a row: a resumed job must use the same ones.
ROW_SETTINGS = ("metrics", "metric_params", "weights", "layer", "maps")


class JobMismatchError(ValueError):
    """OUT already holds a job with other settings; resuming into it would mix two tables."""


def rows_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "rows"


def settings(spec: JobSpec) -> dict[str, Any]:
    return {
        "methods": list(spec.methods),
        "metrics": list(spec.metrics),
        "metric_params": {k: v for k, v in spec.metric_params},
        "weights": spec.weights,
        "layer": spec.layer,
        "maps": spec.maps,
    }


def load_job(out: str | os.PathLike) -> dict[str, Any]:
    path = Path(out) / "job.json"
    return json.loads(path.read_text()) if path.exists() else {}


def check_resume(out: str | os.PathLike, spec: JobSpec) -> dict[str, Any]:
    """The job record of `out` (empty for a new folder).

    Raises:
        JobMismatchError: `out` holds rows made with other metrics, weights, layer or maps.
    """
    job = load_job(out)
    if not job:
        return {}
    mine = settings(spec)
    theirs = job.get("settings", {})
    diff = [k for k in ROW_SETTINGS if json.dumps(theirs.get(k)) != json.dumps(mine[k])]
    if diff:
        listed = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} now" for k in diff)
        raise JobMismatchError(
            f"--out {out}: holds a job made with other settings ({listed}); resume it with the same "
            "settings, or write to another folder"
        )
    return job


def write_job(out: str | os.PathLike, job: dict[str, Any]) -> None:
    path = Path(out) / "job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(job, indent=2) + "\n")
    os.replace(tmp, path)


def _parts(out: str | os.PathLike) -> list[Path]:
    """The parts, oldest first (a row written again, e.g. by ``retry_errors``, wins)."""
    folder = rows_dir(out)
    parts = folder.glob("*.parquet") if folder.is_dir() else ()
    return sorted(parts, key=lambda p: (p.stat().st_mtime_ns, p.name))


def set_aside_broken(out: str | os.PathLike) -> list[Path]:
    """Rename unreadable parts to ``*.broken`` (and drop local temporaries); returns them."""
    broken = []
    folder = rows_dir(out)
    for tmp in folder.glob(".part-*.tmp") if folder.is_dir() else ():
        tmp.unlink(missing_ok=True)
    for part in _parts(out):
        try:
            pq.read_metadata(part)
        except (OSError, pa.ArrowInvalid) as exc:
            _log.warning("%s: unreadable part (%s); its rows will be computed again", part, exc)
            part.rename(part.with_suffix(".parquet.broken"))
            broken.append(part)
    return broken


def done_keys(out: str | os.PathLike, skip_errors: bool = False) -> set[tuple[str, str, str]]:
    """(model, method, image) of every row already written (with `skip_errors`, of those
    without an error, so that error rows are computed again)."""
    status: dict[tuple[str, str, str], str] = {}
    for part in _parts(out):
        table = pq.read_table(part, columns=[*KEY, "status"])
        keys = zip(*(table.column(k).to_pylist() for k in KEY), strict=True)
        status.update(zip(keys, table.column("status").to_pylist(), strict=True))
    return {k for k, s in status.items() if not (skip_errors and s == "error")}


def write_part(out: str | os.PathLike, table: pa.Table) -> Path:
    """Write one part atomically (temporary name, then rename)."""
    folder = rows_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}"
    tmp, final = folder / f".{name}.tmp", folder / f"{name}.parquet"
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    return final


def read_results(
    out: str | os.PathLike, columns: Sequence[str] | None = None, metrics: Iterable[str] = ()
) -> pa.Table:
    """Every row of the job in `out`, one per (model, method, image), sorted by that key (the
    latest written where a key was written twice).

    Args:
        columns: the columns to read (default all); the key columns are always read.
        metrics: metric ids whose columns the table must have (filled with nulls where a part
            lacks them); by default those of the job record.
    """
    metrics = list(metrics) or load_job(out).get("settings", {}).get("metrics", [])
    schema = row_schema(metrics)
    names = list(columns) if columns else schema.names
    names = [*KEY, *(c for c in names if c not in KEY)]
    tables = []
    for part in _parts(out):
        table = pq.read_table(part)
        cols = [
            table.column(c).cast(schema.field(c).type)
            if c in table.column_names
            else pa.nulls(len(table), schema.field(c).type)
            for c in names
        ]
        tables.append(pa.table(cols, names=names))
    if not tables:
        return pa.table([pa.array([], schema.field(c).type) for c in names], names=names)
    table = pa.concat_tables(tables)
    keys = list(zip(*(table.column(k).to_pylist() for k in KEY), strict=True))
    last = {key: i for i, key in enumerate(keys)}
    order = sorted(last.values(), key=lambda i: keys[i])
    return table.take(pa.array(order, pa.int64()))
