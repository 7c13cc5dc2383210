"""What the host can feed a GPU: the serving path's pairs/s per host core with an engine that costs nothing.

The same CPU repository as served, but the engine step is :mod:`loadtests.null_engine` (a logit of 0 per
row, at once), so everything left is what the tokenizer, Triton's ensemble and python backend, the
postprocess and, on the REST path, the gateway cost: the ceiling they put on any engine, a GPU's
included. Two ways in, each at ``concurrency`` clients: our client library over gRPC, and NIM's
``POST /v1/ranking`` through the gateway (no admission budget: this measures cost, not overload).

pairs/s per host core = pairs / CPU seconds (user + system) the server's processes spent: tritonserver
with every python stub it started, plus on the REST path the gateway with all its workers; the load
generator sharing this machine does not count. Each phase repeats its requests for at least
``min_seconds`` (20 s in ``make bench``) so that the kernel's CPU counters (10 ms ticks) hold
thousands of ticks; the table also splits that CPU time by part, which says what to change first.
A GPU's ceiling for a workload scales one H100's bf16 compute ceiling for the real 1.24B model (about
3,900 pairs/s at 128 tokens and 960 at 512; FP8 twice that) by the workload's FLOPs; host cores one GPU
needs = that ceiling / pairs/s per core.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .gateway_overhead import Paths, run_phase
from .gpu_reference import model_flops
from .workload import Request

if TYPE_CHECKING:
    from rerank_serving.stack import ServingStack

logger = logging.getLogger(__name__)
NULL_ENGINE = Path(__file__).with_name("null_engine.py")
#: One H100, bf16, the real model: (tokens per pair, pairs/s), compute-bound; FP8 doubles it.
H100_BF16 = ((128, 3900.0), (512, 960.0))


def gpu_pairs_per_s(lengths: list[int]) -> float:
    """One H100's bf16 pairs/s on pairs of these lengths: its FLOP/s at the two anchors (averaged)
    over the real model's FLOPs per pair."""
    from rerank_build.config import preset

    full = preset("full")
    rate = float(np.mean([pairs * model_flops(full, 1, tokens) for tokens, pairs in H100_BF16]))
    return rate * len(lengths) / sum(model_flops(full, 1, n) for n in lengths)


def null_repository(checkpoint: Path, onnx: Path, out: Path) -> Path:
    """The default CPU repository with the null engine in place of the real one."""
    from rerank_build.repository import RepositorySettings, build_repository

    repo = build_repository(checkpoint, out, RepositorySettings(), onnx=onnx, force=True)
    shutil.copy2(NULL_ENGINE, repo / "engine" / "1" / "model.py")
    return repo


def cpu_by_part(stack: "ServingStack", with_gateway: bool) -> dict[str, float]:
    """CPU seconds (user + system) each part of the serving path has spent so far: tritonserver itself,
    each python model's stubs (by model: tokenizer, engine, postprocess), and with ``with_gateway`` the
    gateway with all its workers. Processes are read whole (every thread); a process gone between two
    readings is not expected here (nothing restarts during a phase)."""
    import psutil

    from rerank_serving.stubs import python_stubs

    parts: dict[str, float] = {}

    def add(part: str, proc: "psutil.Process") -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            parts[part] = parts.get(part, 0.0) + times.user + times.system

    server = psutil.Process(stack.triton.process.pid)
    stubs = {stub.pid: stub.name.rsplit("_", 2)[0] for stub in python_stubs(server.pid)}
    add("tritonserver", server)
    for child in server.children(recursive=True):
        add(stubs.get(child.pid, "tritonserver"), child)
    if with_gateway:
        gateway = psutil.Process(stack.gateway.process.pid)
        for proc in (gateway, *gateway.children(recursive=True)):
            add("gateway", proc)
    return parts


@dataclass
class Ceiling:
    """One workload through one way in, repeated for at least the phase's minimum time."""

    pairs: int
    wall_s: float
    cpu_s: dict[str, float]  # by part of the serving path

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_s.values())

    def shares(self) -> str:
        total = self.cpu_total
        return ", ".join(f"{part} {100 * s / total:.0f}%" for part, s in
                         sorted(self.cpu_s.items(), key=lambda kv: -kv[1]) if s / total >= 0.01)


def ceiling(stack: "ServingStack", way, work: list[tuple[str, list[str]]], concurrency: int, with_gateway: bool,
            min_seconds: float) -> Ceiling:
    """``work`` at ``concurrency`` clients, repeated until ``min_seconds`` have passed (so that the CPU
    counters, in clock ticks of 10 ms, see thousands of ticks), with the server's CPU time by part."""
    before = cpu_by_part(stack, with_gateway)
    started = time.perf_counter()
    pairs = 0
    while True:
        pairs += run_phase(stack, way, work, concurrency).pairs
        if time.perf_counter() - started >= min_seconds:
            break
    wall = time.perf_counter() - started
    after = cpu_by_part(stack, with_gateway)
    return Ceiling(pairs, wall, {part: after[part] - before.get(part, 0.0) for part in after})


def measure(checkpoint: Path, onnx: Path, workloads: dict[str, list[Request]], lengths: dict[str, list[int]],
            out: Path, log_dir: Path, concurrency: int = 8, min_seconds: float = 20.0) -> list[str]:
    """Markdown rows: per workload and way in, pairs/s (wall, shared machine), server CPU per pair,
    pairs/s per host core, where that CPU goes, and the host cores one H100 needs in bf16 and FP8."""
    from rerank_serving.stack import ServingStack

    rows, needs, shares = [], [], {}
    repo = null_repository(checkpoint, onnx, out)
    with ServingStack(repo, log_dir=log_dir / "host-ceiling", gateway_args=["--no-access-log", "--no-admission", "--no-cache"]) \
            as stack, contextlib.closing(Paths(stack)) as paths:
        for name, requests in workloads.items():
            work = [(r.query, list(r.passages)) for r in requests]
            gpu = gpu_pairs_per_s(lengths[name])
            for label, way, with_gateway in (("gRPC, client library", paths.direct, False),
                                             ("REST gateway", paths.gateway, True)):
                run_phase(stack, way, work[:1], 1)  # warm-up: connections, first shapes
                found = ceiling(stack, way, work[1:], concurrency, with_gateway, min_seconds)
                per_core = found.pairs / found.cpu_total
                logger.info("host ceiling, %s, %s: %d pairs in %.1f s, %.1f CPU s (%s)", name, label, found.pairs,
                            found.wall_s, found.cpu_total, found.shares())
                needs.append((gpu / per_core, name, label))
                for part, seconds in found.cpu_s.items():
                    shares[part] = shares.get(part, 0.0) + seconds / found.cpu_total
                rows.append(f"| {name} | {label} | {found.pairs / found.wall_s:,.0f} | "
                            f"{1e3 * found.cpu_total / found.pairs:.2f} | {per_core:,.0f} | {found.shares()} | "
                            f"{gpu:,.0f} / {2 * gpu:,.0f} | {gpu / per_core:.1f} / {2 * gpu / per_core:.1f} |")
    return rows + ["", verdict(needs, shares)]


def verdict(needs: list[tuple[float, str, str]], shares: dict[str, float]) -> str:
    """One paragraph: how many host cores one H100 needs at most, and what to change first (the part of
    the serving path that spends most of the server's CPU, averaged over the rows)."""
    most, name, label = max(needs)
    first, share = max(shares.items(), key=lambda kv: kv[1])
    share /= len(needs)
    return (f"One H100 needs at most {most:.1f} host cores in bf16 and {2 * most:.1f} in FP8 for this serving path "
            f"({name}, {label}); a host with fewer cores per GPU caps the GPU. What to change first: the "
            f"{first}, {100 * share:.0f} % of the server's CPU on average over these rows"
            + (": it already encodes each request's passages in one batch call of the Rust tokenizer, so give it "
               "the host's cores (`tokenizer_instances`, 2 by default) before touching Triton or the gateway"
               if first == "tokenizer" else "") + ".")


HEADER = ["| workload | way in | pairs/s (wall, 2 cores shared with the client) | server CPU ms per pair | "
          "pairs/s per host core | where the server's CPU goes | one H100, bf16 / FP8, pairs/s | "
          "host cores one H100 needs, bf16 / FP8 |",
          "|---|---|---|---|---|---|---|---|"]
