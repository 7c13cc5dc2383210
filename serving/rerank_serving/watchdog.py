"""Keep the stack serving: notice a dead python-backend stub (or a dead part) and restart it.

What Triton 2.51 does when a python-backend stub dies (measured here with ``kill -9``): nothing.
Every later request to that model fails with INTERNAL ``Stub process 'engine_0_0' is not healthy.``,
server and model readiness stay 200, the log is silent, the stub's ``/dev/shm`` region is left behind,
and a later SIGTERM takes about 30 s. A stub cannot be restarted on its own from outside, and model
control is off (on purpose: no load/unload API), so the recovery is an orderly restart of
tritonserver on the same ports: stop it (SIGKILL after a short grace), remove the dead stubs'
shared-memory regions, start it again. While it restarts, Triton's ports refuse connections, so
readiness (Triton's and the gateway's) is false, and the client library and the gateway retry
(``Stub process ... is not healthy`` and UNAVAILABLE are retryable) until it is back.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from .stubs import alive

logger = logging.getLogger(__name__)

class CrashLoop(RuntimeError):
    """Too many restarts in too little time: restarting again would not help."""


@dataclass
class RestartBudget:
    """At most ``max_restarts`` within ``window_s`` seconds."""

    max_restarts: int = 5
    window_s: float = 600.0
    times: deque = field(default_factory=deque)

    def spend(self, what: str) -> None:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) >= self.max_restarts:
            raise CrashLoop(f"{what}: {self.max_restarts} restarts within {self.window_s:.0f}s; giving up")
        self.times.append(now)


class StackWatchdog:
    """Watches a running :class:`~rerank_serving.stack.ServingStack` and restarts what died.

    - a python stub of a tritonserver (replica) died -> restart that tritonserver (module docstring);
    - a tritonserver itself exited -> start it again (with replicas, the others serve meanwhile);
    - the gateway exited -> start it again.
    ``check()`` is called periodically by the foreground loop; it logs each recovery (the tests read
    those lines) and raises :class:`CrashLoop` past the budget.
    """

    def __init__(self, stack, budget: RestartBudget | None = None) -> None:
        self.stack = stack
        self.budget = budget or RestartBudget()

    def arm(self) -> None:
        """Log what is watched: the stubs each tritonserver recorded when it became ready."""
        for triton in self.stack.tritons:
            logger.info("watchdog: watching %d python stubs of tritonserver on gRPC %d (%s)", len(triton.stubs),
                        triton.ports.grpc, ", ".join(s.name for s in triton.stubs))

    def check(self) -> None:
        for triton in self.stack.tritons:
            process, where = triton.process, f"tritonserver on gRPC {triton.ports.grpc}"
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else "?"
                self._restart(f"{where} exited (code {code})", where, lambda t=triton: self._restart_triton(t))
            else:
                dead = [s for s in triton.stubs if not alive(s.pid)]
                if dead:
                    names = ", ".join(f"{s.name} (pid {s.pid})" for s in dead)
                    self._restart(f"python stub {names} died", where,
                                  lambda t=triton: self._restart_triton(t))
        gateway = self.stack.gateway.process
        if self.stack.with_gateway and (gateway is None or gateway.poll() is not None):
            code = gateway.returncode if gateway is not None else "?"
            self._restart(f"rerank-gateway exited (code {code})", "rerank-gateway", self._restart_gateway)

    def _restart(self, why: str, name: str, restart) -> None:
        self.budget.spend(why)
        started = time.monotonic()
        logger.error("watchdog: %s; restarting %s (readiness is false meanwhile)", why, name)
        restart()
        logger.warning("watchdog: %s; %s restarted and ready in %.1fs", why, name, time.monotonic() - started)

    def _restart_triton(self, triton) -> None:
        triton.stop()  # a short grace with a dead stub; removes the stubs' /dev/shm regions
        triton.start()
        logger.info("watchdog: watching %d python stubs of tritonserver on gRPC %d again", len(triton.stubs),
                    triton.ports.grpc)

    def _restart_gateway(self) -> None:
        self.stack.gateway.stop()
        self.stack.gateway.start()
        self.stack.gateway.wait_ready(120.0)
