"""Run the sweep: one process per model, a timeout and a memory cap each, rows written as they finish.

Processes come from a ``forkserver`` that has already imported torch, timm and cnnviz, so a
model starts in well under a second instead of the ~4 s an interpreter needs to import torch,
and still runs in its own address space: a crash, a hang or a memory blow-up costs that model
only (its row says ``failed`` with the cause). The memory cap is ``RLIMIT_AS`` set in the child
to its address space at start plus the model's budget.

Models too large for ``--mem-gb`` in float32 (from their parameter count) run alone, with
``--big-mem-gb`` and 4x the timeout; when even that cannot hold them in float32 they run in
bfloat16 (the CSV's ``dtype`` column says so; on a CPU without a bfloat16 matmul of its own, with
float32 arithmetic over the bfloat16 weights, `upcast`), and when it cannot hold them at all the
row says how much memory they would need.

The estimate from the parameter count misses models whose activations dominate (a wide final
map, many tokens). A model that runs out of ``--mem-gb`` is therefore not written as failed: it
goes to the end of the queue once more, alone, under ``--big-mem-gb`` and 4x the timeout, and
its row's ``error`` says so (`escalate`).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import resource
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import cast

import torch

from .names import param_count
from .table import RowWriter, family_of, method_cells, read_rows, sort_file, widen

GIB = 2**30
PARAM_FACTOR = 1.4
OVERHEAD_GB = 1.0
"""Memory a model needs: ``PARAM_FACTOR`` x its parameters' bytes + ``OVERHEAD_GB`` (activations at
the small input, autograd, allocator slack). Measured: ViT-g/14 (1.0B parameters, 3.8 GiB) peaks
at 5.4 GiB above the imported libraries."""


@dataclass(frozen=True)
class Limits:
    """Per-model resources. Times in seconds, memory in GiB of address space above the imports."""

    timeout: float = 600.0
    mem_gb: float = 8.0
    big_mem_gb: float = 16.0
    jobs: int = 1
    small: int = 160

    def __post_init__(self) -> None:
        for name in ("timeout", "mem_gb", "big_mem_gb", "jobs", "small"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")


@dataclass(frozen=True)
class Plan:
    """How one model runs: dtype, memory cap, timeout, whether it needs the machine alone."""

    name: str
    dtype: str
    mem_gb: float
    timeout: float
    exclusive: bool
    threads: int
    refusal: str = ""
    need_gb: float = 0.0
    methods: tuple[str, ...] | None = None
    """Only these methods (a row that lacks them: methods added since it was written); None: all."""
    escalated_from: float = 0.0
    """The cap (GiB) of the run that ran out of memory, when this is its rerun (`escalate`)."""
    first_error: str = ""
    """What that run said (its out-of-memory sign), for the rerun's row."""


def plan_for(name: str, params: int, limits: Limits) -> Plan:
    """Pick float32 within ``mem_gb``, else alone with ``big_mem_gb`` (float32, then bfloat16)."""
    need32 = PARAM_FACTOR * params * 4 / GIB + OVERHEAD_GB
    need16 = PARAM_FACTOR * params * 2 / GIB + OVERHEAD_GB
    if need32 <= limits.mem_gb:
        return Plan(name, "float32", limits.mem_gb, limits.timeout, False, 1, need_gb=need32)
    big = (limits.big_mem_gb, 4 * limits.timeout, True, limits.jobs)
    if need32 <= limits.big_mem_gb:
        return Plan(name, "float32", *big, need_gb=need32)
    if need16 <= limits.big_mem_gb:
        return Plan(name, "bfloat16", *big, need_gb=need16)
    return Plan(
        name,
        "bfloat16",
        *big,
        refusal=f"needs about {need16:.1f} GiB even in bfloat16 ({params / 1e9:.1f}B parameters), "
        f"above --big-mem-gb {limits.big_mem_gb:g}; rerun it with a larger --big-mem-gb",
        need_gb=need16,
    )


OUT_OF_MEMORY = (
    "MemoryError",  # Python and numpy
    "can't allocate memory",  # torch's CPU allocator
    "Cannot allocate memory",  # errno 12 (ENOMEM) under the address-space cap
    "out of memory",  # CUDA, and `_exit_reason`'s hint for a process killed by SIGKILL/SIGABRT
)


def out_of_memory(row: dict[str, object], method_ids: list[str]) -> str:
    """The first sign in `row` that a failed method of its model ran out of memory ('' when there
    is none: a row whose methods all passed, one by one after running out together, is kept)."""
    failed = [str(row.get(f"{m}_note") or "") for m in method_ids if row.get(m) == "failed"]
    if not failed:
        return ""
    texts = [str(row.get("error") or ""), *failed]
    for text in texts:
        if any(sign in text for sign in OUT_OF_MEMORY):
            return text
    return ""


def escalate(plan: Plan, row: dict[str, object], method_ids: list[str], limits: Limits) -> Plan | None:
    """The plan to run a model again with when `row` says it ran out of memory: alone, under
    ``--big-mem-gb``, 4x the timeout, all threads. None when it did not, or already had that much."""
    if plan.exclusive or plan.refusal or limits.big_mem_gb <= plan.mem_gb:
        return None
    oom = out_of_memory(row, method_ids)
    if not oom:
        return None
    return replace(
        plan,
        mem_gb=limits.big_mem_gb,
        timeout=4 * limits.timeout,
        exclusive=True,
        threads=limits.jobs,
        need_gb=max(plan.need_gb, limits.big_mem_gb),
        escalated_from=plan.mem_gb,
        first_error=oom,
    )


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


ProbeFn = Callable[..., dict]  # (name, small side, dtype[, method ids]) -> the model's row


def _child(plan: Plan, small: int, conn: mpc.Connection, probe_fn: ProbeFn) -> None:
    """Entry point of a model's process: cap memory, run the probe, send the row (or the error) back."""
    cap = _vm_size_bytes() + int(plan.mem_gb * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    torch.set_num_threads(plan.threads)
    try:
        dtype = getattr(torch, plan.dtype)
        if plan.methods is None:
            row = probe_fn(plan.name, small, dtype)
        else:
            row = probe_fn(plan.name, small, dtype, list(plan.methods))
        message: tuple[str, object] = ("row", row)
    except BaseException as exc:  # sent to the parent, which writes it into the model's row
        lines = str(exc).strip().splitlines()
        message = ("error", f"probe raised {type(exc).__name__}: {lines[0] if lines else ''}"[:300])
    conn.send(message)
    conn.close()


def failed_row(name: str, reason: str, method_ids: list[str]) -> dict[str, object]:
    row: dict[str, object] = {"name": name, "family": family_of(name), "error": reason}
    for m in method_ids:
        row[m], row[f"{m}_note"] = "failed", reason
    return row


@dataclass
class _Running:
    plan: Plan
    proc: mp.process.BaseProcess
    conn: mpc.Connection
    start: float


def _context() -> mp.context.ForkServerContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "timm", "cnnviz", "cnnviz.sweep.probe"])
    return ctx


def _exit_reason(proc: mp.process.BaseProcess, plan: Plan) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        hint = " (likely out of memory)" if -code in (signal.SIGKILL, signal.SIGABRT) else ""
        return f"crashed: killed by {sig}{hint}; memory cap {plan.mem_gb:g} GiB"
    return f"crashed: exit code {code} without a result; memory cap {plan.mem_gb:g} GiB"


def run(
    names: list[str],
    out: str | os.PathLike,
    limits: Limits,
    columns: list[str],
    on_row: Callable[[dict[str, object]], None] | None = None,
    probe_fn: ProbeFn | None = None,
    retry_failed: bool = False,
    use_ray: bool = False,
) -> int:
    """Probe `names` into the CSV `out` (skipping names already there); returns rows written.

    With `retry_failed`, names whose row has a failed method run again (their new row
    replaces the old one when the file is sorted). With `use_ray`, each model is a Ray task
    (`cnnviz.sweep.ray_pool`) instead of a process of this machine's pool.

    `probe_fn(name, small, dtype) -> row` runs in the child (default `cnnviz.sweep.probe.probe`);
    it must be a module-level function so that it can be sent to the child process.
    """
    if probe_fn is None:
        from .probe import probe as probe_fn
    method_ids = [c for c in columns if f"{c}_note" in columns]
    widen(out, columns)  # a CSV written before a method was added gets its columns, empty
    rows = {r["name"]: r for r in read_rows(out)}  # the last row of a name counts
    missing = {n: [m for m in method_ids if not r.get(m)] for n, r in rows.items()}
    retry = {n for n, r in rows.items() if retry_failed and any(r.get(m) == "failed" for m in method_ids)}
    todo = [n for n in names if n not in rows or n in retry or missing[n]]
    # A row that has every method but the new ones runs only those (resumable per method).
    top_up = {n: tuple(missing[n]) for n in todo if n in rows and n not in retry and missing[n]}
    sizes = {n: param_count(n) for n in todo}
    plans = [replace(plan_for(n, sizes[n], limits), methods=top_up.get(n)) for n in todo]
    # Smallest first and the ones that need the machine alone last: the many small models are not
    # held up behind the big ones, and a run that is stopped early (it resumes) covers the most.
    queue = deque(sorted(plans, key=lambda p: (p.exclusive, sizes[p.name], p.name)))
    running: list[_Running] = []
    written = 0
    ctx = _context()
    with RowWriter(out, columns) as writer:

        def emit(row: dict[str, object]) -> None:
            nonlocal written
            name = str(row.get("name", ""))
            if name in top_up:  # keep the old row, fill in the new methods' cells
                cells = [c for m in top_up[name] for c in method_cells(m)]
                new = {c: row[c] for c in cells if c in row}
                error = " ".join(str(v) for v in (rows[name].get("error"), row.get("error")) if v)
                row = {
                    **rows[name],
                    **new,
                    "error": error,
                    "dtype": topped_up_dtype(rows[name], row, top_up[name]),
                }
            extra = sorted(set(row) - set(columns))
            if extra:  # a probe bug must not stop the run: keep the row, say what was dropped
                row = {k: v for k, v in row.items() if k in columns}
                row["error"] = f"{row.get('error') or ''} (dropped unknown columns {extra})".strip()
            writer.write(row)
            written += 1
            if on_row:
                on_row(row)

        if use_ray:
            from .ray_pool import run_on_ray

            run_on_ray(list(queue), limits.small, cast(ProbeFn, probe_fn), method_ids, emit, limits)
            return written
        while queue or running:
            while queue and _can_start(queue[0], running, limits.jobs):
                plan = queue.popleft()
                if plan.refusal:
                    emit(failed_row(plan.name, f"not run: {plan.refusal}", method_ids))
                    continue
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_child, args=(plan, limits.small, send, probe_fn), name=plan.name, daemon=True
                )
                proc.start()
                send.close()
                running.append(_Running(plan, proc, receive, time.monotonic()))
            if running:
                for plan, row in _collect(running, method_ids):
                    again = escalate(plan, row, method_ids, limits)
                    if again is not None:  # its row waits for the rerun (a stopped run resumes it)
                        queue.append(again)  # behind the rest, as the exclusive plans are
                    else:
                        emit(with_escalation_note(plan, row))
    return written


def topped_up_dtype(old: Mapping[str, object], new: Mapping[str, object], methods: tuple[str, ...]) -> object:
    """The ``dtype`` cell of a row topped up with `methods`: the old one, and how those methods ran
    when that differs (bfloat16 with float32 arithmetic on a machine without a bfloat16 matmul)."""
    before, now = old.get("dtype"), new.get("dtype")
    if not now or now == before:
        return before
    n = len(methods)
    return f"{before}, then {now} for {n} method{'s' if n != 1 else ''}"


def with_escalation_note(plan: Plan, row: dict[str, object]) -> dict[str, object]:
    """`row`, its ``error`` led by what the first run hit when `plan` is a rerun after running out
    of memory (`escalate`)."""
    if not plan.escalated_from:
        return row
    note = (
        f"ran out of the {plan.escalated_from:g} GiB cap ({plan.first_error[:120]}); "
        f"rerun alone under --big-mem-gb {plan.mem_gb:g}"
    )
    error = "; ".join(str(e) for e in (note, row.get("error")) if e)
    return {**row, "error": error}


def run_one(plan: Plan, small: int, probe_fn: ProbeFn, method_ids: list[str]) -> dict[str, object]:
    """One model in its own process under the plan's cap and timeout, as the pool runs it: its
    row, or a failed row with the cause (what each Ray task of `cnnviz sweep --ray` runs)."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(plan, small, send, probe_fn), name=plan.name, daemon=True)
    proc.start()
    send.close()
    running = [_Running(plan, proc, receive, time.monotonic())]
    while True:
        rows = _collect(running, method_ids)
        if rows:
            return rows[0][1]


def _can_start(plan: Plan, running: list[_Running], jobs: int) -> bool:
    if plan.refusal:
        return True
    if any(r.plan.exclusive for r in running):
        return False
    return not running if plan.exclusive else len(running) < jobs


def _collect(running: list[_Running], method_ids: list[str]) -> list[tuple[Plan, dict[str, object]]]:
    """Wait until a model finishes or times out; its plan and row (and remove it from `running`)."""
    now = time.monotonic()
    wait_s = max(0.0, min(r.start + r.plan.timeout - now for r in running))
    ready = set(mpc.wait([r.conn for r in running] + [r.proc.sentinel for r in running], timeout=wait_s))
    rows = []
    for r in list(running):
        row = None
        if r.conn in ready or r.proc.sentinel in ready:
            try:
                kind, payload = r.conn.recv() if r.conn.poll() else (None, None)
            except EOFError:
                kind, payload = None, None
            row = payload if kind == "row" else None
            if kind == "error":
                row = failed_row(r.plan.name, str(payload), method_ids)
            r.proc.join(timeout=30)
            if row is not None and r.proc.exitcode is None:
                r.proc.kill()  # sent its row but did not exit: nothing more to wait for
                r.proc.join()
            if row is None and r.proc.exitcode is None:  # the pipe closed but the process lingers
                if time.monotonic() - r.start < r.plan.timeout:
                    continue
                r.proc.kill()
                r.proc.join()
                row = failed_row(r.plan.name, f"timeout after {r.plan.timeout:g} s", method_ids)
            if row is None:
                row = failed_row(r.plan.name, _exit_reason(r.proc, r.plan), method_ids)
        elif time.monotonic() - r.start >= r.plan.timeout:
            r.proc.kill()
            r.proc.join()
            row = failed_row(r.plan.name, f"timeout after {r.plan.timeout:g} s", method_ids)
        if row is not None:
            r.conn.close()
            running.remove(r)
            row.setdefault("t_total", round(time.monotonic() - r.start, 2))
            rows.append((r.plan, row))
    return rows


def finish(out: str | os.PathLike, columns: list[str]) -> int:
    """Sort the CSV by name (after a run, or to tidy a partial one); returns the row count."""
    return sort_file(out, columns)
