"""What a never-seen input shape costs the CPU engine, on fresh random requests.

OpenVINO prepares kernels per input shape (rows, width) the first time it meets one and keeps them in
a bounded cache. Fresh requests bring shapes the engine has not seen. This replays the runs the
engine step would make for fresh workload requests (each request's rows regrouped by
``compact_runs``, exactly as model.py does) on a freshly compiled model: pass 1 meets every shape for
the first time, passes 2 and 3 repeat the same runs with every shape prepared (their difference is the
drift of a shared machine). Pass 1 minus the mean of passes 2 and 3 is what first-seen shapes cost.
Each shape grid (how ``compact_runs`` rounds widths and row counts; "prepared": its small shapes run
once at load) is measured the same way, with the padding it costs; grids take turns run by run so that
drift hits all alike.

    python -m loadtests.first_seen --onnx build/onnx/small-fp32/model.onnx --precision bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rerank_contract import prompt as rp

from .workload import Workload, WorkloadSpec

#: Shape grids: label -> ``compact_runs`` keyword arguments.
ROWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
GRIDS: dict[str, dict] = {
    "widths 8": {},
    "widths 8/32 above 256": {"coarse_above": 256, "coarse_granularity": 32},
    "widths 8/128 above 512": {"coarse_above": 512, "coarse_granularity": 128},
    "widths 8, rows on a grid": {"row_sizes": ROWS},
    "widths 8/32 above 256, rows on a grid": {"coarse_above": 256, "coarse_granularity": 32, "row_sizes": ROWS},
    "widths 8/32 above 256, rows on a grid, prepared": {"coarse_above": 256, "coarse_granularity": 32,
                                                        "row_sizes": ROWS, "prepare": True},
}


def grid_shapes(grid: dict, max_tokens: int, max_width: int = 8192) -> list[tuple[int, int]]:
    """Every (rows, width) the grid allows, smallest first."""
    widths = sorted({int(rp.run_width(n, 8, grid.get("coarse_above", 0), grid.get("coarse_granularity", 64)))
                     for n in range(1, max_width + 1)})
    rows = grid.get("row_sizes") or range(1, max_tokens + 1)
    return sorted(((r, w) for w in widths for r in rows if r * w <= max(max_tokens, w) and (r == 1 or r * w <= max_tokens)),
                  key=lambda s: s[0] * s[1])


def runs_for(lengths: np.ndarray, max_tokens: int, grid: dict) -> list[tuple[int, int]]:
    """(rows, width) of the engine's runs for one request's rows under ``grid``."""
    kwargs = {k: v for k, v in grid.items() if k != "prepare"}
    return [(len(rows), width) for rows, width in rp.compact_runs(lengths, max_tokens, **kwargs)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--workload", choices=["mixed", "short", "long"], default="mixed",
                   help="short: 100 passages of 16-80 words per request (many small runs); long: 10 of 1-4k tokens")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--grids", default=";".join(GRIDS), help="semicolon-separated labels of GRIDS")
    p.add_argument("--config", default="", help="extra OpenVINO properties, KEY=VALUE,...")
    p.add_argument("--prepare-tokens", type=int, default=1024, help="prepared grids: shapes up to this many tokens")
    args = p.parse_args(argv)
    from rerank_build.cpu_runtime import openvino_engine

    encoder = rp.PairEncoder(rp.load_tokenizer(str(args.onnx.parent)))
    spec = {"mixed": WorkloadSpec(args.seed), "short": WorkloadSpec(args.seed, (100,), ((1.0, 16, 80),)),
            "long": WorkloadSpec(args.seed, (10,), ((1.0, 1000, 4000),))}[args.workload]
    requests = Workload(spec).take(args.requests)
    lengths = [np.array([len(r) for r in encoder.encode(q.query, q.passages, "END")]) for q in requests]
    grids = {name: GRIDS[name] for name in args.grids.split(";")}
    extra = dict(item.split("=", 1) for item in args.config.split(",") if item)
    runs = {name: [run for n in lengths for run in runs_for(n, args.max_tokens, grid)] for name, grid in grids.items()}
    models = {name: openvino_engine().openvino_runner(str(args.onnx), 0, args.precision, 500, extra) for name in grids}
    rng = np.random.default_rng(0)
    seconds = {name: [0.0, 0.0, 0.0] for name in grids}
    prepared = {}
    for name, grid in grids.items():
        if grid.get("prepare"):
            shapes = [s for s in grid_shapes(grid, args.max_tokens) if s[0] * s[1] <= args.prepare_tokens]
            started = time.perf_counter()
            for rows, width in shapes:
                ids = np.full((rows, width), 1000, dtype=np.int32)
                models[name](ids, np.ones_like(ids))
            prepared[name] = (len(shapes), time.perf_counter() - started)
    for rep in range(3):
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
    print(f"## First-seen shapes: {args.requests} fresh {args.workload} requests, {args.onnx}, OpenVINO "
          f"{args.precision} {extra}\n")
    print("| shape grid | runs | distinct shapes | padding efficiency | pass 1 (new shapes) s | passes 2, 3 (seen) s | "
          "first-seen cost | per new shape ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in grids:
        first, again = seconds[name][0], (seconds[name][1] + seconds[name][2]) / 2
        shapes = len(set(runs[name]))
        padded = sum(r * w for r, w in runs[name])
        print(f"| {name} | {len(runs[name])} | {shapes} | {100 * useful / padded:.1f}% | {first:.2f} | "
              f"{seconds[name][1]:.2f}, {seconds[name][2]:.2f} | "
              f"{100 * (first / again - 1):+.0f}% | {1e3 * (first - again) / shapes:.1f} |"
              + (f" prepared {prepared[name][0]} shapes in {prepared[name][1]:.1f} s at load" if name in prepared else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
