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
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

STUB_BINARY = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class Stub:
    """One python-backend model instance's process."""

    pid: int
    name: str  # the model instance, e.g. engine_0_0
    shm_region: str | None  # its /dev/shm region, e.g. triton_python_backend_shm_region_<uuid>


def python_stubs(server_pid: int) -> list[Stub]:
    """The python-backend stubs tritonserver ``server_pid`` started (its children running the stub)."""
    stubs = []
    try:
        children = psutil.Process(server_pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            argv = child.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if not argv or not argv[0].endswith(STUB_BINARY):
            continue
        model = Path(argv[1]).parent.parent.name if len(argv) > 1 else "?"
        name = next((a for a in argv if re.fullmatch(rf"{re.escape(model)}_\d+_\d+", a)), model)
        region = next((a for a in argv if a.startswith(SHM_PREFIX)), None)
        stubs.append(Stub(child.pid, name, region))
    return stubs


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by tritonserver, is dead)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def remove_shm_regions(regions: list[str]) -> list[str]:
    """Unlink the named ``/dev/shm`` regions that are still there; returns those removed."""
    removed = []
    for region in regions:
        path = SHM_DIR / region
        try:
            path.unlink()
            removed.append(region)
        except FileNotFoundError:
            pass
    return removed


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
    """Watches a running :class:`~rerank_build.stack.ServingStack` and restarts what died.

    - a python stub of tritonserver died -> restart tritonserver (see the module docstring);
    - tritonserver itself exited -> start it again;
    - the gateway exited -> start it again.
    ``check()`` is called periodically by the foreground loop; it returns a description of each
    recovery it made (for the log and the tests) and raises :class:`CrashLoop` past the budget.
    """

    def __init__(self, stack, gateway: bool = True, budget: RestartBudget | None = None,
                 stop_grace_s: float = 3.0) -> None:
        self.stack = stack
        self.gateway = gateway
        self.budget = budget or RestartBudget()
        self.stop_grace_s = stop_grace_s
        self.stubs: list[Stub] = []

    def arm(self) -> None:
        """Record tritonserver's stubs (call once it is ready)."""
        self.stubs = python_stubs(self.stack.triton.process.pid)
        logger.info("watchdog: watching %d python stubs (%s)", len(self.stubs),
                    ", ".join(s.name for s in self.stubs))

    def check(self) -> list[str]:
        events = []
        triton = self.stack.triton.process
        if triton is None or triton.poll() is not None:
            code = triton.returncode if triton is not None else "?"
            events.append(self._restart_triton(f"tritonserver exited (code {code})"))
        else:
            dead = [s for s in self.stubs if not alive(s.pid)]
            if dead:
                names = ", ".join(f"{s.name} (pid {s.pid})" for s in dead)
                events.append(self._restart_triton(f"python stub {names} died"))
        if self.gateway:
            gw = self.stack.gateway.process
            if gw is None or gw.poll() is not None:
                events.append(self._restart_gateway(f"rerank-gateway exited (code {gw.returncode if gw else '?'})"))
        return events

    def _restart_triton(self, why: str) -> str:
        self.budget.spend(why)
        started = time.monotonic()
        logger.error("watchdog: %s; restarting tritonserver (readiness is false meanwhile)", why)
        regions = [s.shm_region for s in self.stubs if s.shm_region]
        self.stack.triton.stop(timeout_s=self.stop_grace_s)
        removed = remove_shm_regions(regions)
        if removed:
            logger.info("watchdog: removed %d stale /dev/shm regions", len(removed))
        self.stack.triton.start()
        self.arm()
        message = f"{why}; tritonserver restarted and ready in {time.monotonic() - started:.1f}s"
        logger.warning("watchdog: %s", message)
        return message

    def _restart_gateway(self, why: str) -> str:
        self.budget.spend(why)
        started = time.monotonic()
        logger.error("watchdog: %s; restarting it", why)
        self.stack.gateway.stop()
        self.stack.gateway.start()
        self.stack.gateway.wait_ready(120.0)
        message = f"{why}; rerank-gateway restarted and ready in {time.monotonic() - started:.1f}s"
        logger.warning("watchdog: %s", message)
        return message
