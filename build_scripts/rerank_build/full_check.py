"""Full-size check: the ``full`` preset through checkpoint -> ONNX (external data) -> ORT parity.

Each stage runs as its own process so that its wall time and peak resident memory are measured
separately (``os.wait4``); the numbers go to ``<workdir>/report.md``. Too slow for CI (minutes,
~15 GB peak), so it is one documented command: ``make full-check``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .export_onnx import EXTERNAL_DATA_FILE

logger = logging.getLogger(__name__)


def _run_stage(args: list[str]) -> tuple[int, float, float]:
    """Run ``rerank-build ARGS``; returns (exit code, seconds, peak RSS in GiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rerank_build.cli", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024**2


def _size_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e9 if path.exists() else 0.0


def run_full_check(workdir: Path, seed: int = 0, dtype: str = "fp32") -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt, onnx_dir = workdir / "checkpoint", workdir / f"onnx-{dtype}"
    stages = [
        ("checkpoint (full preset, bf16)", ["checkpoint", "--preset", "full", "--seed", str(seed), "--out", str(ckpt)]),
        (f"export-onnx ({dtype}, external data)", ["export-onnx", "--checkpoint", str(ckpt), "--dtype", dtype, "--out", str(onnx_dir)]),
        ("parity (reference fp32 vs ONNX Runtime)", ["parity", "--checkpoint", str(ckpt), "--onnx", str(onnx_dir / "model.onnx"), "--random-queries", "2"]),
    ]
    rows, code = [], 0
    for label, args in stages:
        logger.info("full-check stage: %s", label)
        code, seconds, peak = _run_stage(args)
        rows.append(f"| {label} | {seconds:.0f} s | {peak:.1f} GiB | {'ok' if code == 0 else f'exit {code}'} |")
        if code:
            break
    external = onnx_dir / EXTERNAL_DATA_FILE
    report = [
        "# Full-size check", "",
        "| stage | wall time | peak RSS | result |", "|---|---|---|---|", *rows, "",
        f"- checkpoint directory: {_size_gb(ckpt):.2f} GB",
        f"- ONNX directory: {_size_gb(onnx_dir):.2f} GB (external data file present: {external.exists()})",
        f"- machine: {os.cpu_count()} CPUs",
    ]
    (workdir / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return code
