"""Per-model time from Triton's statistics: where a request's time goes (tokenizer/engine/postprocess)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STEPS = ("tokenizer", "engine", "postprocess")


@dataclass(frozen=True)
class StepStats:
    """Cumulative counters of one model (durations in ns, as Triton reports them)."""

    inferences: int
    executions: int
    requests: int
    queue_ns: int
    compute_ns: int  # compute_input + compute_infer + compute_output, per request
    execution_ns: int = 0  # the same per execution: the time the model's instances were busy

    def __sub__(self, other: "StepStats") -> "StepStats":
        return StepStats(*(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__))


def read_stats(grpc_client: Any, models: tuple[str, ...] = STEPS) -> dict[str, StepStats]:
    """Current counters of ``models`` through a ``tritonclient.grpc`` client."""
    out = {}
    for name in models:
        s = grpc_client.get_inference_statistics(name).model_stats[0]
        st = s.inference_stats
        out[name] = StepStats(
            inferences=s.inference_count, executions=s.execution_count, requests=st.success.count,
            queue_ns=st.queue.ns,
            compute_ns=st.compute_input.ns + st.compute_infer.ns + st.compute_output.ns,
            execution_ns=sum(b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns for b in s.batch_stats),
        )
    return out


def delta(after: dict[str, StepStats], before: dict[str, StepStats]) -> dict[str, StepStats]:
    return {k: after[k] - before[k] for k in after}


def share_table(stats: dict[str, StepStats]) -> list[str]:
    """Markdown rows: per step, queue and compute time per request and share of the total."""
    total = sum(s.queue_ns + s.compute_ns for s in stats.values()) or 1
    rows = ["| step | requests | executions | rows/execution | queue ms/req | compute ms/req | share |",
            "|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        per = max(s.requests, 1)
        rows.append(
            f"| {name} | {s.requests} | {s.executions} | {s.inferences / max(s.executions, 1):.1f} | "
            f"{s.queue_ns / per / 1e6:.2f} | {s.compute_ns / per / 1e6:.2f} | "
            f"{100 * (s.queue_ns + s.compute_ns) / total:.0f}% |"
        )
    return rows
