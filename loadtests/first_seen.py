"""What a never-seen input shape costs the CPU engine, on fresh random requests.

OpenVINO prepares kernels per input shape (rows, width) the first time it meets one and keeps them in
a bounded cache. Fresh requests bring shapes the engine has not seen. This replays the runs the
engine step would make for fresh workload requests (each request's rows regrouped by
``compact_runs``, exactly as model.py does) on a freshly compiled model: pass 1 meets every shape for
the first time, pass 2 repeats the same runs with every shape prepared. Pass 1 minus pass 2 is what
first-seen shapes cost. Each width grid (how ``compact_runs`` rounds widths) is measured the same way,
with the padding it costs; grids take turns run by run so that drift on a shared machine hits all alike.

    python -m loadtests.first_seen --onnx build/onnx/small-fp32/model.onnx --precision bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rerank_contract import prompt as rp

from .workload import Workload, WorkloadSpec

#: Width grids: (label, granularity below the knee, knee, granularity above it).
GRIDS = {"8": (8, 0, 8), "8/64 above 256": (8, 256, 64), "8/128 above 512": (8, 512, 128)}


def grid_width(length: int, grid: tuple[int, int, int]) -> int:
    fine, knee, coarse = grid
    step = coarse if knee and length > knee else fine
    return max(fine, -(-length // step) * step)


def runs_for(lengths: np.ndarray, max_tokens: int, grid: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(rows, width) of the engine's runs for one request's rows under ``grid``."""
    rounded = np.array([grid_width(int(n), grid) for n in lengths])
    return [(len(rows), int(rounded[rows].max())) for rows, _ in rp.compact_runs(lengths, max_tokens)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--grids", default=",".join(GRIDS))
    args = p.parse_args(argv)
    from rerank_build.cpu_runtime import cpu_model

    encoder = rp.PairEncoder(rp.load_tokenizer(str(args.onnx.parent)))
    requests = Workload(WorkloadSpec(args.seed)).take(args.requests)
    lengths = [np.array([len(r) for r in encoder.encode(q.query, q.passages, "END")]) for q in requests]
    grids = {name: GRIDS[name] for name in args.grids.split(",")}
    runs = {name: [run for n in lengths for run in runs_for(n, args.max_tokens, grid)] for name, grid in grids.items()}
    models = {name: cpu_model(args.onnx, "openvino", args.precision) for name in grids}
    rng = np.random.default_rng(0)
    seconds = {name: [0.0, 0.0] for name in grids}
    for rep in range(2):
        for k in range(max(len(r) for r in runs.values())):
            for name, model in models.items():
                if k >= len(runs[name]):
                    continue
                rows, width = runs[name][k]
                ids = rng.integers(1000, 120000, size=(rows, width), dtype=np.int32)
                started = time.perf_counter()
                model(ids, np.ones_like(ids))
                seconds[name][rep] += time.perf_counter() - started
    useful = sum(int(n.sum()) for n in lengths)
    print(f"## First-seen shapes: {args.requests} fresh mixed requests, {args.onnx}, OpenVINO {args.precision}\n")
    print("| width grid | runs | distinct shapes | padding efficiency | pass 1 (new shapes) s | pass 2 (seen) s | "
          "first-seen cost | per new shape ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in grids:
        first, again = seconds[name]
        shapes = len(set(runs[name]))
        padded = sum(r * w for r, w in runs[name])
        print(f"| {name} | {len(runs[name])} | {shapes} | {100 * useful / padded:.1f}% | {first:.2f} | {again:.2f} | "
              f"{100 * (first / again - 1):+.0f}% | {1e3 * (first - again) / shapes:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
