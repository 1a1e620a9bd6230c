"""The summary of a batch job: per model and method, counts and each metric's mean with its 95%
interval, as CSV and Markdown, and one plot per metric.

The interval is Student's t interval of the mean, ``mean ± t(0.975, n-1) · s / sqrt(n)``, over
the images where the metric is defined (a box metric needs a box; a refused method has none).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from .work import metric_column

# t(0.975, df) for df = 1..30; beyond that the Cornish-Fisher expansion below is within 1e-4.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t distribution with `df` degrees of freedom."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% t interval; the interval is NaN for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = statistics.fmean(values)
    if n < 2:
        return (mean, math.nan, math.nan)
    half = t975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return (mean, mean - half, mean + half)


def summarize(table: pa.Table, metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per (model, method), in the order they first appear."""
    rows = table.to_pylist()
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["method"]), []).append(row)
    out = []
    for (model, method), members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        judged = [r for r in members if r["status"] != "error" and r.get("target_given")]
        entry: dict[str, Any] = {
            "model": model,
            "method": method,
            "weights": members[0]["weights"],
            "images": len(members),
            "ok": len(ok),
            "refused": sum(r["status"] == "refused" for r in members),
            "errors": sum(r["status"] == "error" for r in members),
            "target_top1": _share([r["target_rank"] == 0 for r in judged]),
            "target_top5": _share([r["target_rank"] < 5 for r in judged]),
            "explain_ms": _mean_ms([r["explain_s"] for r in ok]),
        }
        for metric in metrics:
            values = [r[metric_column(metric)] for r in ok if r.get(metric_column(metric)) is not None]
            mean, lo, hi = mean_interval(values)
            entry[f"{metric}_n"] = len(values)
            entry[f"{metric}_mean"], entry[f"{metric}_lo"], entry[f"{metric}_hi"] = mean, lo, hi
        out.append(entry)
    return out


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else math.nan


def _mean_ms(values: list) -> float:
    values = [v for v in values if v is not None]
    return 1000 * statistics.fmean(values) if values else math.nan


def write_csv(entries: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(entries[0]) if entries else ["model", "method"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for e in entries:
            writer.writerow({k: _fmt(v) for k, v in e.items()})


def _fmt(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}"
    return value


def write_markdown(
    entries: list[dict[str, Any]],
    path: Path,
    metrics: Sequence[str],
    errors: list[tuple[str, str]],
    job: dict[str, Any],
    plots: dict[str, str],
    metric_notes: dict[str, str] | None = None,
) -> None:
    """The summary for people: the job, one table per model and method, errors, plots."""
    metric_notes = metric_notes or {}
    settings = job.get("settings", {})
    lines = ["# cnnviz batch: summary", ""]
    images, models, methods = job.get("images", 0), job.get("models", []), settings.get("methods", [])
    lines.append(
        f"{images} images x {len(models)} models x {len(methods)} methods; "
        f"weights policy `{settings.get('weights') or 'CNNVIZ_WEIGHTS or hub'}`; maps stored: "
        f"`{settings.get('maps')}`."
    )
    if any(e["weights"] == "random" for e in entries):
        random = sorted({e["model"] for e in entries if e["weights"] == "random"})
        lines += [
            "",
            f"**Random weights** for {', '.join(random)}: these models are untrained, so their maps "
            "and scores show how the architecture routes a random classifier's score, not evidence "
            "that it learned anything.",
        ]
    lines += [
        "",
        "| model | method | ok | refused | errors | target top-1 | target top-5 | explain ms/image |",
    ]
    lines[-1] += "".join(f" {m} (mean [95% CI], n) |" for m in metrics)
    lines.append("|" + " --- |" * (8 + len(metrics)))
    for e in entries:
        cells = [
            e["model"],
            f"`{e['method']}`",
            str(e["ok"]),
            str(e["refused"]),
            str(e["errors"]),
            _pct(e["target_top1"]),
            _pct(e["target_top5"]),
            _num(e["explain_ms"], 1),
        ]
        for m in metrics:
            mean, lo, hi, n = e[f"{m}_mean"], e[f"{m}_lo"], e[f"{m}_hi"], e[f"{m}_n"]
            cells.append("n/a" if not n else f"{_num(mean)} [{_num(lo)}, {_num(hi)}], {n}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Target top-1 / top-5: the share of images with a given target whose target is the model's "
        "top-1 class / among its top five (the accuracy when the targets are the labels).",
    ]
    for m in metrics:
        if m in metric_notes:
            lines.append(f"`{m}`: {metric_notes[m]}")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{m}]({p})" for m, p in plots.items()]
    if errors:
        lines += ["", f"## Errors ({len(errors)} images)", ""]
        lines += [f"- `{image}`: {message}" for image, message in errors[:50]]
        if len(errors) > 50:
            lines.append(f"- ... and {len(errors) - 50} more (the `error` column of the rows)")
    path.write_text("\n".join(lines) + "\n")


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.1f}%"


def _num(value: float, digits: int = 4) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}g}" if digits != 1 else f"{value:.1f}"


def plot_metric(entries: list[dict[str, Any]], metric: str, path: Path, label: str = "") -> bool:
    """Each model's mean with its 95% interval, one row per method; False when nothing to plot."""
    points = [e for e in entries if e[f"{metric}_n"]]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(e["method"] for e in points))
    models = list(dict.fromkeys(e["model"] for e in points))
    height = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(methods) * max(1, len(models)) ** 0.5))
    for k, model in enumerate(models):
        ys: list[float] = []
        xs: list[float] = []
        err: list[list[float]] = [[], []]
        for e in points:
            if e["model"] != model:
                continue
            y = methods.index(e["method"]) + (k - (len(models) - 1) / 2) * height
            mean, lo, hi = e[f"{metric}_mean"], e[f"{metric}_lo"], e[f"{metric}_hi"]
            ys.append(y)
            xs.append(mean)
            err[0].append(0 if math.isnan(lo) else mean - lo)
            err[1].append(0 if math.isnan(hi) else hi - mean)
        ax.errorbar(xs, ys, xerr=err, fmt="o", capsize=3, label=model)
    ax.set_yticks(range(len(methods)), methods)
    ax.invert_yaxis()
    ax.set_xlabel(f"{label or metric}: mean and 95% interval")
    ax.grid(axis="x", alpha=0.3)
    if len(models) > 1:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
