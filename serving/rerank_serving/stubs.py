"""tritonserver's python-backend stubs, seen from outside: which they are, whether they live, and the
``/dev/shm`` regions they leave behind when they (or the server) are killed.

One module for every watcher: the local stack's watchdog (``watchdog.py``), the serving image's
supervisor (``supervise.py``, the container's main process) and the tests. It reads ``/proc`` with the
standard library only, because the supervisor runs in NVIDIA's Triton container, which has none of our
dependencies (Linux only, as Triton is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region"
SHM_DIR = Path("/dev/shm")
PROC = Path("/proc")


@dataclass(frozen=True)
class Stub:
    """One python-backend model instance's process."""

    pid: int
    name: str  # the model instance, e.g. engine_0_0
    shm_region: str | None  # its /dev/shm region, e.g. triton_python_backend_shm_region_<uuid>


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """(state letter, parent pid) from ``/proc/PID/stat``; None when the process is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by its parent, is dead)."""
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def children(pid: int) -> list[int]:
    """``pid``'s live direct children."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            info = _state_and_parent(entry.name)
            if info is not None and info[1] == pid and info[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from the kernel's per-thread children lists)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            kids = [int(k) for k in (PROC / str(parent) / "task" / str(parent) / "children").read_text().split()]
        except OSError:
            continue
        found += kids
        frontier += kids
    return found


def _argv(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def python_stubs(server_pid: int) -> list[Stub]:
    """The live python-backend stubs tritonserver ``server_pid`` started (its children running the stub)."""
    stubs = []
    for pid in children(server_pid):
        argv = _argv(pid)
        if not argv or not argv[0].endswith(STUB_BINARY):
            continue
        model = Path(argv[1]).parent.parent.name if len(argv) > 1 else "?"
        name = next((a for a in argv if re.fullmatch(rf"{re.escape(model)}_\d+_\d+", a)), model)
        region = next((a for a in argv if a.startswith(SHM_PREFIX)), None)
        stubs.append(Stub(pid, name, region))
    return stubs


def remove_shm_regions(regions: list[str]) -> list[str]:
    """Unlink the named ``/dev/shm`` regions that are still there; returns those removed."""
    removed = []
    for region in regions:
        try:
            (SHM_DIR / region).unlink()
            removed.append(region)
        except FileNotFoundError:
            pass
    return removed
