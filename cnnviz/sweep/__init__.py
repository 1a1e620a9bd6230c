"""The support matrix: every timm model, every registered method, checked; a CSV and a summary.

    >>> from cnnviz.sweep import run_sweep, Limits
    >>> run_sweep("resnet1*", out="out/sweep.csv", limits=Limits(jobs=1))

``python -m cnnviz.sweep --one NAME`` probes one model in the current process and prints its
row as JSON (for debugging); ``python -m cnnviz.sweep --write-catalog`` regenerates
``support/model_params.csv`` and ``support/smoke_models.txt``. The full sweep is `cnnviz sweep`.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm

from ..common import close_matches, did_you_mean
from .names import SUPPORT, smoke_models, write_catalog
from .runner import Limits, finish, run
from .summary import load_meta, summarize, write_summary
from .table import read_rows

DEFAULT_CSV = SUPPORT / "sweep.csv"

__all__ = [
    "DEFAULT_CSV",
    "Limits",
    "SweepResult",
    "load_meta",
    "run_sweep",
    "select_names",
    "smoke_models",
    "summarize",
    "write_catalog",
    "write_summary",
]


def select_names(pattern: str | None = None, families_smoke: bool = False) -> list[str]:
    """timm names matching `pattern` (fnmatch globs, comma-separated), or all of them.

    With `families_smoke`, only the one-per-family list (``support/smoke_models.txt``), filtered
    by `pattern` when given.

    Raises:
        ValueError: the pattern matches no model (with close matches).
    """
    patterns = [p.strip() for p in (pattern or "").split(",") if p.strip()]
    names = timm.list_models(patterns) if patterns else timm.list_models()
    if families_smoke:
        smoke = smoke_models()
        names = [n for n in smoke if n in set(names)] if patterns else smoke
    if not names:
        hint = did_you_mean(close_matches(pattern or "", timm.list_models(), cutoff=0.5))
        raise ValueError(
            f"PATTERN: {pattern!r} matches no timm model (globs like 'resnet*', comma-separated){hint}"
        )
    return sorted(names)


@dataclass(frozen=True)
class SweepResult:
    csv: Path
    summary: Path | None
    selected: int
    written: int
    rows: int
    wall_s: float


def run_sweep(
    pattern: str | None = None,
    out: str | Path = DEFAULT_CSV,
    limits: Limits | None = None,
    families_smoke: bool = False,
    summary: str | Path | None = "auto",
    on_row: Callable[[dict[str, object]], None] | None = None,
    names: list[str] | None = None,
    probe_fn: Callable[[str, int, object], dict] | None = None,
    retry_failed: bool = False,
    use_ray: bool = False,
) -> SweepResult:
    """Sweep the models matching `pattern` into `out` (resuming it), then sort it and summarize.

    Args:
        summary: Markdown path; ``"auto"`` puts ``summary.md`` next to the default CSV and
            ``<out>.md`` next to any other; None writes none.
        names: an explicit list instead of `pattern`.
        probe_fn: what runs in each model's process (see `runner.run`; tests pass fakes).
        retry_failed: run again the names whose row has a failed method.
        use_ray: each model as a Ray task (`cnnviz.sweep.ray_pool`; ``RAY_ADDRESS`` or a local
            Ray) instead of a process of this machine's pool.
    """
    from .probe import SWEEP_PARAMS, columns, machine, versions

    limits = limits or Limits()
    explicit = names is not None
    names = names if names is not None else select_names(pattern, families_smoke)
    out = Path(out)
    cols = columns()
    t0 = time.monotonic()
    written = run(names, out, limits, cols, on_row, probe_fn, retry_failed, use_ray)
    wall = time.monotonic() - t0
    total = finish(out, cols)
    meta_path = out.with_suffix(".meta.json")
    this_pattern = pattern or (None if explicit else "*")
    before = load_meta(meta_path) if written < total else {}
    meta = {
        **versions(),
        # What the CSV covers: a resumed run keeps the first run's pattern (None: an explicit
        # list of names); each run records its own.
        "pattern": before.get("pattern", this_pattern),
        "families_smoke": before.get("families_smoke", families_smoke),
        "jobs": before.get("jobs") or limits.jobs,
        "method_params": before.get("method_params", SWEEP_PARAMS),
        # Wall time over every run that filled this CSV (a resumed sweep adds its runs up).
        "wall_s": round(float(before.get("wall_s") or 0.0) + wall, 1),
        "runs": [
            *before.get("runs", []),
            {
                "date": datetime.date.today().isoformat(),
                "models": written,
                "pattern": this_pattern,
                "jobs": limits.jobs,
                "wall_s": round(wall, 1),
                "machine": machine(),
            },
        ],
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    md = None
    if summary is not None:
        if summary != "auto":
            md = Path(summary)
        else:
            default = out.resolve() == DEFAULT_CSV.resolve()
            md = out.parent / "summary.md" if default else out.with_suffix(".md")
        # Partial against what the CSV covers (its first run's selection), not just this run's.
        scope = set(names)
        if meta["pattern"]:
            scope |= set(select_names(meta["pattern"], meta["families_smoke"]))
        missing = scope - {r["name"] for r in read_rows(out)}
        write_summary(out, md, expected=total + len(missing) if missing else None, meta=meta)
    return SweepResult(out, md, len(names), written, total, wall)
