"""What the host can feed a GPU: the serving path's pairs/s per host core with an engine that costs nothing.

The same CPU repository as served, but the engine step is :mod:`loadtests.null_engine` (a logit of 0 per
row, at once), so everything left is what the tokenizer, Triton's ensemble and python backend, the
postprocess and, on the REST path, the gateway cost: the ceiling they put on any engine, a GPU's
included. Two ways in, each at ``concurrency`` clients: our client library over gRPC, and NIM's
``POST /v1/ranking`` through the gateway (no admission budget: this measures cost, not overload).

pairs/s per host core = pairs / CPU seconds the server processes spent (tritonserver with its python
stubs, plus the gateway on the REST path), so the load generator sharing this machine does not count.
A GPU's ceiling for a workload scales one H100's bf16 compute ceiling for the real 1.24B model (about
3,900 pairs/s at 128 tokens and 960 at 512; FP8 twice that) by the workload's FLOPs; host cores one GPU
needs = that ceiling / pairs/s per core.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import numpy as np

from .gateway_overhead import Paths, run_phase
from .gpu_reference import model_flops
from .workload import Request

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


def measure(checkpoint: Path, onnx: Path, workloads: dict[str, list[Request]], lengths: dict[str, list[int]],
            out: Path, log_dir: Path, concurrency: int = 8) -> list[str]:
    """Markdown rows: per workload and way in, pairs/s (wall, shared machine), server CPU per pair,
    pairs/s per host core, and the host cores one H100 needs in bf16 and FP8."""
    from rerank_build.stack import ServingStack

    rows = []
    repo = null_repository(checkpoint, onnx, out)
    with ServingStack(repo, log_dir=log_dir / "host-ceiling", gateway_args=["--no-access-log", "--no-admission"]) \
            as stack, contextlib.closing(Paths(stack)) as paths:
        for name, requests in workloads.items():
            work = [(r.query, list(r.passages)) for r in requests]
            for label, way, with_gateway in (("gRPC, client library", paths.direct, False),
                                             ("REST gateway", paths.gateway, True)):
                run_phase(stack, way, work[:1], 1)  # warm-up: connections, first shapes
                phase = run_phase(stack, way, work[1:], concurrency)
                cpu = phase.triton_cpu_s + (phase.gateway_cpu_s if with_gateway else 0.0)
                gpu = gpu_pairs_per_s(lengths[name])
                logger.info("host ceiling, %s, %s: %.0f pairs/s, %.2f CPU s", name, label, phase.pairs / phase.wall_s,
                            cpu)
                if cpu <= 0:  # too little work to register (--quick)
                    rows.append(f"| {name} | {label} | {phase.pairs / phase.wall_s:,.0f} | - | - | {gpu:,.0f} / "
                                f"{2 * gpu:,.0f} | - |")
                    continue
                per_core = phase.pairs / cpu
                rows.append(f"| {name} | {label} | {phase.pairs / phase.wall_s:,.0f} | {1e3 * cpu / phase.pairs:.2f} | "
                            f"{per_core:,.0f} | {gpu:,.0f} / {2 * gpu:,.0f} | {gpu / per_core:.1f} / "
                            f"{2 * gpu / per_core:.1f} |")
    return rows


HEADER = ["| workload | way in | pairs/s (wall, 2 cores shared with the client) | server CPU ms per pair | "
          "pairs/s per host core | one H100, bf16 / FP8, pairs/s | host cores one H100 needs, bf16 / FP8 |",
          "|---|---|---|---|---|---|---|"]
