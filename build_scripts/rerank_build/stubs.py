"""tritonserver's python-backend stubs, seen from outside: which they are, whether they live, and the
``/dev/shm`` regions they leave behind when they (or the server) are killed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psutil

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
