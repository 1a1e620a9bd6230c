"""One model of the sweep: build it, inspect it, run every registered method, check each result.

A method's status is ``ok`` (it ran and its result passed the checks), ``refused`` (the method
said it does not apply, with its reason; or `cnnviz.inspect` declined the whole model with an
`AnatomyError`, e.g. an encoder that cannot classify) or ``failed`` (it raised, or a check
failed; the note says which). Checks on every ok result: finite, the right shape, not constant. Extra
checks:

each method's own `verify` from the registry (``cam``: Zhou et al.'s identity to a relative
`CAM_TOL`; ``guided_backprop`` / ``deconvnet``: the result differs from the plain gradient exactly
where a rectifier is present), whose measurements (``Method.measures``) are columns of their own.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from dataclasses import dataclass, field

import timm
import torch

import cnnviz
from cnnviz.methods.cam import BLANK
from cnnviz.methods.registry import Evidence

from ..common import first_line, name_seed
from .build import Built, build
from .table import family_of, method_columns
from .upcast import FLOAT32_COMPUTE, Float32Compute, fast_bfloat16, freeze

CAM_TOL = 1e-4
CAM_TOL_BF16 = 2e-2
"""bfloat16 has 8 bits of mantissa: the identity holds to about 1e-2 there."""


def probe(
    name: str, small: int = 160, dtype: torch.dtype = torch.float32, methods: list[str] | None = None
) -> dict[str, object]:
    """The sweep's row for one timm model name (never raises for a model's own failure).

    `methods`: only these registered methods (None: all), for a row that lacks them.

    With a `dtype` other than float32 (models too large for the memory cap), it is also the
    default dtype while the model is inspected and explained: `cnnviz.inspect` builds its probe
    inputs in the default dtype.
    """
    t0 = time.perf_counter()
    row: dict[str, object] = {
        "name": name,
        "family": family_of(name),
        "dtype": str(dtype).removeprefix("torch."),
    }
    # bfloat16 weights, float32 arithmetic where this CPU has no bfloat16 matmul of its own
    upcast = dtype == torch.bfloat16 and not fast_bfloat16()
    with Float32Compute() if upcast else contextlib.nullcontext():
        try:
            built = build(name, small, dtype)
        except Exception as exc:
            return _all_methods(row, "failed", f"build: {first_line(exc)}", t0, methods)
        row.update(_build_columns(built))
        if upcast:
            freeze(built.module)
            row["dtype"] = f"{row['dtype']} {FLOAT32_COMPUTE}"
        row["t_build"] = round(time.perf_counter() - t0, 2)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return _inspect_and_explain(row, built, dtype, t0, methods, UPCAST_BATCH if upcast else None)
        finally:
            torch.set_default_dtype(previous)


def _inspect_and_explain(
    row: dict[str, object],
    built: Built,
    dtype: torch.dtype,
    t0: float,
    methods: list[str] | None = None,
    batch_size: int | None = None,
) -> dict[str, object]:
    t1 = time.perf_counter()
    try:
        anatomy = cnnviz.inspect(built.module)
    except cnnviz.AnatomyError as exc:  # the library declines the model, with its reason
        row["num_classes"] = getattr(built.module, "num_classes", "")
        return _all_methods(row, "refused", f"anatomy: {exc}", t0, methods)
    except Exception as exc:
        return _all_methods(row, "failed", f"inspect: {first_line(exc)}", t0, methods)
    row.update(anatomy_columns(anatomy))
    row["t_inspect"] = round(time.perf_counter() - t1, 2)
    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(name_seed(str(row["name"])) + 2)
    x = torch.randn(1, *built.input_size, generator=gen, dtype=torch.float32).to(dtype)
    row.update(run_methods(built.module, x, anatomy, dtype, methods, batch_size))
    row["t_explain"] = round(time.perf_counter() - t2, 2)
    row["t_total"] = round(time.perf_counter() - t0, 2)
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _all_methods(
    row: dict[str, object], status: str, reason: str, t0: float, methods: list[str] | None = None
) -> dict[str, object]:
    """Every method (or `methods`) `status` ("failed", or "refused" when the anatomy declines)."""
    if status == "failed":
        row["error"] = reason
    for mid in methods or [m.id for m in cnnviz.list_methods()]:
        row[mid] = status
        row[f"{mid}_note"] = reason
    row["t_total"] = round(time.perf_counter() - t0, 2)
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def _build_columns(built: Built) -> dict[str, object]:
    params = sum(p.numel() for p in built.module.parameters())
    return {
        "params_m": round(params / 1e6, 3),
        "head_added": built.head_added,
        "native_size": "x".join(str(v) for v in built.native_size[1:]),
        "input_size": "x".join(str(v) for v in built.input_size[1:]),
        "size_note": built.size_note,
        "dtype": built.dtype,
        "init_note": built.init_note,
    }


def anatomy_columns(anatomy: cnnviz.Anatomy) -> dict[str, object]:
    return {
        "layout": anatomy.layout,
        "map_shape": "x".join(str(v) for v in anatomy.shape),
        "prefix_tokens": anatomy.num_prefix_tokens,
        "source": anatomy.source,
        "head_kind": anatomy.head_kind,
        "head": anatomy.head,
        "num_classes": anatomy.num_classes,
        "cam_exact": anatomy.cam_exact,
        "cam_reason": anatomy.cam_reason,
        "activations": " ".join(anatomy.activations),
    }


# The sweep asks whether each method works on each architecture, not how good its map is, so
# the methods whose cost is a multiple of one explain run with a light setting (recorded in the
# sweep's meta and summary). At their defaults they cost ~30 times the seed methods: Score-CAM
# alone is one forward per channel (1,280 on efficientnet_b0, 90 s on two CPU cores), and the
# families smoke went from 2.5 to over 30 minutes. Light, every code path still runs.
SWEEP_PARAMS: dict[str, dict[str, object]] = {
    "integrated_gradients": {"steps": 4, "batch_size": 4},
    "smoothgrad": {"n_samples": 2, "batch_size": 2},
    "smoothgrad_cam": {"n_samples": 2, "batch_size": 2},
    "score_cam": {"max_channels": 8, "batch_size": 9},
}


# Under float32 compute (`upcast`) activations and the tensors saved for backward take twice
# the memory of a bfloat16 run's, beside weights that already fill most of the cap: the batched
# methods then push one sample at a time, which gives the same result (their noise, path and
# masks do not depend on the batch size: tests/methods/test_sampling_manners.py). Measured:
# vit_5b_patch16_sapiens2's top-up with the batches above passed 21 GB and ran out of its 20 GiB
# cap; with batches of one it ran in 21 min.
UPCAST_BATCH = 1


def sweep_params(ids: list[str], batch_size: int | None = None) -> dict[str, dict[str, object]]:
    """`SWEEP_PARAMS` of the methods in `ids` (explain refuses parameters of methods not run),
    with every ``batch_size`` set to `batch_size` when one is given."""
    size = {} if batch_size is None else {"batch_size": batch_size}
    return {m: {**p, **size} for m, p in SWEEP_PARAMS.items() if m in ids}


def run_methods(
    model: torch.nn.Module,
    x: torch.Tensor,
    anatomy: cnnviz.Anatomy,
    dtype: torch.dtype = torch.float32,
    methods: list[str] | None = None,
    batch_size: int | None = None,
) -> dict[str, object]:
    """Registered methods (all, or `methods`) on `x`: all at once (shared passes), one by one if
    that raises. Each result passes the generic checks and its method's own `verify`. The
    batched methods run with `SWEEP_PARAMS`, their batches of `batch_size` when it is given."""
    ids = [m.id for m in cnnviz.list_methods()] if methods is None else list(methods)
    run = list(ids)
    for m in ids:  # what a method's check compares with runs too (its columns are not written)
        run += [w for w in cnnviz.get_method(m).verify_with if w not in run]
    out: dict[str, object] = {}
    results: dict[str, cnnviz.Explanation | Exception]
    try:
        ex = cnnviz.explain(model, x, methods=run, strict=False, params=sweep_params(run, batch_size))
        results = {i: ex for i in run}
    except Exception as exc:
        out["error"] = f"all methods together: {first_line(exc)}; methods run one by one"
        results = {}
        for i in run:
            try:
                results[i] = cnnviz.explain(
                    model, x, methods=[i], strict=False, params=sweep_params([i], batch_size)
                )
            except Exception as one:
                results[i] = one
    tol = CAM_TOL if dtype == torch.float32 else CAM_TOL_BF16
    others = {
        i: res[i]
        for i, res in results.items()
        if isinstance(res, cnnviz.Explanation) and i in res.attributions
    }
    for i in ids:
        res = results[i]
        if isinstance(res, Exception):
            status, note = "failed", first_line(res)
        elif i in res.refused:
            status, note = "refused", res.refused[i]
        else:
            note = check(i, res, Context(x, anatomy, tol, others, out))
            status = "failed" if note else "ok"
            note = note or blank_reason(res[i])
        out[i], out[f"{i}_note"] = status, note
    return out


@dataclass(frozen=True)
class Context:
    """What the checks compare against: the input, the anatomy, the tolerance, the other results."""

    x: torch.Tensor
    anatomy: cnnviz.Anatomy
    tol: float
    others: dict = field(repr=False)
    out: dict = field(repr=False)


def check(method: str, ex: cnnviz.Explanation, ctx: Context) -> str:
    """Why the result of `method` is wrong ('' when it passes); measurements go to `ctx.out`."""
    raw = ex[method].raw
    spec = cnnviz.get_method(method)
    if spec.family == "cam":
        at_source = ex[method].layer == ctx.anatomy.source
        expected: tuple[int, ...] | None = (ctx.x.shape[0], *ctx.anatomy.shape[1:]) if at_source else None
    else:
        expected = tuple(ctx.x.shape)
    if expected is not None and tuple(raw.shape) != expected:
        return f"check: shape {tuple(raw.shape)}, expected {expected}"
    if not bool(torch.isfinite(raw).all()):
        return "check: not finite"
    if not bool(raw.amax() > raw.amin()) and not blank_reason(ex[method]):
        return f"check: constant map (every value {float(raw.flatten()[0]):.3g})"
    if spec.verify is None:
        return ""
    verdict = spec.verify(Evidence(ex, ex[method], ctx.anatomy, ctx.tol, ctx.others))
    ctx.out.update(verdict.measures)
    return verdict.problem


def blank_reason(att: cnnviz.Attribution) -> str:
    """The engine's own account of a blank rectified map (ReLU of a map negative everywhere), or ''.

    That is the method working as defined, not a failure: the row stays 'ok' and says so.
    """
    why = [n for n in att.notes if BLANK in n]
    return f"blank map: {why[0]}" if why and not bool(att.raw.any()) else ""


def columns() -> list[str]:
    """CSV columns of a row, in order (method columns from the registry)."""
    return method_columns([m.id for m in cnnviz.list_methods()])


def versions() -> dict[str, str]:
    return {"cnnviz": cnnviz.__version__, "torch": torch.__version__, "timm": timm.__version__}


def machine() -> str:
    """The CPU a run was timed on: its model name, the vector instructions torch's kernels use
    and the cores. Times only compare within a machine, and bfloat16 models depend on it most:
    without AVX-512 torch's bfloat16 matmul falls back to a slow reference kernel (measured on an
    AVX2 machine: 5x float32's time for ``a @ b.T``, 95x for ``a @ b``)."""
    name = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        name = platform.processor() or name
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores"
