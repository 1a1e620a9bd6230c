"""`cnnviz sweep --ray`: each model of the sweep as a Ray task, its memory estimate its resource.

A task runs `runner.run_one`: the model in its own process under the same memory cap and timeout
as the local pool, so a crash or a hang costs that model's row only. Ray places each task where a
node has the CPUs (``plan.threads``) and the memory (``plan.need_gb``: parameters x
`runner.PARAM_FACTOR` + `runner.OVERHEAD_GB`) free, so a cluster runs as many models at once as
its memory holds. Rows come back to the driver, which writes the CSV as they arrive. A model
that runs out of its cap is submitted once more as the local pool reruns it (`runner.escalate`):
under ``--big-mem-gb``, with that much of Ray's memory resource reserved.
"""

from __future__ import annotations

from collections.abc import Callable

from ..raytools import connect
from .runner import (
    GIB,
    Limits,
    Plan,
    ProbeFn,
    escalate,
    failed_row,
    run_one,
    with_escalation_note,
)


def largest_node_memory(ray) -> float:
    """The ``memory`` resource of the largest live node, in bytes."""
    return max((n["Resources"].get("memory", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)


def run_on_ray(
    plans: list[Plan],
    small: int,
    probe_fn: ProbeFn,
    method_ids: list[str],
    emit: Callable[[dict[str, object]], None],
    limits: Limits | None = None,
) -> None:
    """Submit every plan as a task, emit each row as its task finishes. With `limits`, a model
    that ran out of memory is submitted again with `runner.escalate`'s plan."""
    ray = connect()
    node_memory = largest_node_memory(ray)
    task = ray.remote(run_one)
    pending = {}

    def submit(plan: Plan) -> bool:
        """Whether `plan` went to Ray (False: its row is emitted here, as not run)."""
        if plan.refusal:
            emit(failed_row(plan.name, f"not run: {plan.refusal}", method_ids))
            return False
        need = int(plan.need_gb * GIB)
        if need > node_memory:  # Ray would keep such a task pending forever
            reason = (
                f"not run: needs about {plan.need_gb:.1f} GiB, more than any Ray node offers "
                f"({node_memory / GIB:.1f} GiB of its 'memory' resource)"
            )
            emit(failed_row(plan.name, reason, method_ids))
            return False
        options = {"num_cpus": plan.threads, "memory": need, "max_retries": 0, "name": f"sweep:{plan.name}"}
        pending[task.options(**options).remote(plan, small, probe_fn, method_ids)] = plan
        return True

    for plan in plans:
        submit(plan)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            plan = pending.pop(ref)
            try:
                row = ray.get(ref)
            except Exception as exc:  # the task's worker died (node lost, killed): that model's row
                lines = str(exc).strip().splitlines()
                row = failed_row(
                    plan.name,
                    f"ray task failed: {type(exc).__name__}: {lines[0] if lines else ''}"[:300],
                    method_ids,
                )
            again = escalate(plan, row, method_ids, limits) if limits else None
            if again is not None and int(again.need_gb * GIB) <= node_memory:
                submit(again)
            else:
                emit(with_escalation_note(plan, row))
