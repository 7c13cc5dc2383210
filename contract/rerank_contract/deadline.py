"""A request's deadline, as every step of the ensemble can read it.

Triton's own per-request ``timeout`` is relative, and each dynamically batched step counts it from
its *own* enqueue: time spent in the gateway, the tokenizer and their queues is never subtracted, and
a step without a queue policy ignores it. So the client also sends the deadline as an instant, the
request parameter :data:`DEADLINE_PARAMETER` (nanoseconds since the Unix epoch, wall clock), which
Triton's ensemble hands to every step unchanged. The tokenizer drops a request already past it; the
CPU engine drops, before computing, every request that cannot finish by it at the engine's measured
speed (:func:`late`). Answered requests are untouched: dropping changes which requests are scored,
never a score.

The instant is only as good as the clocks: the client's (the gateway's) and Triton's must agree, as
NTP keeps machines within milliseconds; a client clock behind Triton's by *s* makes its requests
expire *s* early.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

#: Request parameter: the wall-clock instant (ns since the Unix epoch) after which nobody waits for
#: the answer. Optional; a request without it is never dropped for time.
DEADLINE_PARAMETER = "deadline_ns"
#: The message of a request dropped at its deadline. Triton's queue policy says the same
#: ("Request timeout expired") when it drops one; clients treat both alike (never retried).
EXPIRED = "Request timeout expired"


def deadline_ns(timeout_s: float, now_ns: int | None = None) -> int:
    """The instant ``timeout_s`` from now (wall clock), as the parameter carries it."""
    return (time.time_ns() if now_ns is None else now_ns) + int(timeout_s * 1e9)


def deadline_of(parameters_json: str | None) -> int | None:
    """A request's deadline from ``request.parameters()``; None when it has none or it is not an integer."""
    value = json.loads(parameters_json or "{}").get(DEADLINE_PARAMETER)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def expired_message(step: str, deadline: int, now_ns: int, predicted_ns: int = 0) -> str:
    """What a dropped request is told: where it was dropped and by how much it missed."""
    if predicted_ns and deadline > now_ns:
        return (f"{EXPIRED}: the deadline is {(deadline - now_ns) / 1e6:.0f} ms away and the {step}'s batch would "
                f"take about {predicted_ns / 1e6:.0f} ms; dropped by the {step} before computing")
    return f"{EXPIRED}: the deadline passed {(now_ns - deadline) / 1e6:.0f} ms ago; dropped by the {step}"


def late(deadlines: Sequence[int | None], tokens: Sequence[int], now_ns: int,
         ns_per_token: float) -> tuple[dict[int, int], int]:
    """The requests of one batch that cannot be answered by their deadline, each with the batch time
    predicted when it was dropped, and the predicted time of the batch that is left.

    A batch answers all its requests when its last run ends, so a request is late when its deadline
    falls before ``now + ns_per_token x tokens of the batch``. Requests already past their deadline
    go first; then the late request with the earliest deadline, and look again: dropping one
    shortens the batch, which may save others. Requests without a deadline are never late. When every
    request left is late, the one that comes closest to its deadline alone is kept: the engine then
    still runs, and so keeps measuring its speed (an estimate that no run updates could otherwise drop
    every request from then on)."""
    alive = set(range(len(tokens)))
    dropped: dict[int, int] = {}
    while True:
        predicted = int(ns_per_token * sum(tokens[k] for k in alive))
        now_late = [k for k in alive if deadlines[k] is not None and deadlines[k] < now_ns + predicted]  # type: ignore[operator]
        if not now_late:
            return dropped, predicted
        expired = [k for k in now_late if deadlines[k] < now_ns]  # type: ignore[operator]
        if not expired and len(now_late) == len(alive):
            keep = min(alive, key=lambda k: now_ns + ns_per_token * tokens[k] - deadlines[k])  # type: ignore[operator]
            dropped.update((k, predicted) for k in alive - {keep})
            return dropped, int(ns_per_token * tokens[keep])
        first = min(expired or now_late, key=lambda k: deadlines[k])  # type: ignore[arg-type, return-value]
        dropped[first] = predicted
        alive.remove(first)


class ServiceRate:
    """The engine's speed in nanoseconds per token, a moving average of its own executions.

    Zero until the first execution: then only requests already past their deadline are late."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.ns_per_token = 0.0

    def observe(self, tokens: int, elapsed_ns: int) -> None:
        if tokens <= 0 or elapsed_ns <= 0:
            return
        sample = elapsed_ns / tokens
        self.ns_per_token = sample if not self.ns_per_token else (
            (1 - self.weight) * self.ns_per_token + self.weight * sample)
