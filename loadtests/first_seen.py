"""What a never-seen input shape costs the CPU engine, on fresh random requests.

OpenVINO prepares kernels per input shape (rows, width) the first time it meets one and keeps them in
a bounded cache. Fresh requests bring shapes the engine has not seen. This replays the runs the
engine step makes for fresh workload requests (each request's rows regrouped by ``compact_runs``,
exactly as model.py does) on a freshly compiled model: pass 1 meets every shape for the first time,
passes 2 and 3 repeat the same runs with every shape prepared (their difference is the drift of a
shared machine). Pass 1 minus the mean of passes 2 and 3 is what first-seen shapes cost. Each
precision asked for is compiled once and the precisions take turns run by run, so drift hits all alike.

    python -m loadtests.first_seen --onnx build/onnx/small-fp32/model.onnx --workload long
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rerank_contract import engine_input
from rerank_contract import prompt as rp

from .workload import Workload, WorkloadSpec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--precisions", default="f32,bf16", help="comma-separated: f32, bf16")
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--workload", choices=["mixed", "short", "long"], default="mixed",
                   help="short: 100 passages of 16-80 words per request (many small runs); long: 10 of 1-4k tokens")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=4096)
    args = p.parse_args(argv)
    from rerank_build.cpu_runtime import openvino_engine

    encoder = rp.PairEncoder(rp.load_tokenizer(str(args.onnx.parent)))
    spec = {"mixed": WorkloadSpec(args.seed), "short": WorkloadSpec(args.seed, (100,), ((1.0, 16, 80),)),
            "long": WorkloadSpec(args.seed, (10,), ((1.0, 1000, 4000),))}[args.workload]
    requests = Workload(spec).take(args.requests)
    lengths = [np.array([len(r) for r in encoder.encode(q.query, q.passages, "END")]) for q in requests]
    runs = [(len(rows), width) for n in lengths for rows, width in engine_input.compact_runs(n, args.max_tokens)]
    precisions = args.precisions.split(",")
    engine = openvino_engine()
    models = {name: engine.openvino_runner(str(args.onnx), 0, name, engine.DEFAULT_SHAPE_CACHE) for name in precisions}
    rng = np.random.default_rng(0)
    seconds = {name: [0.0, 0.0, 0.0] for name in precisions}
    for rep in range(3):
        for rows, width in runs:
            ids = rng.integers(1000, 120000, size=(rows, width), dtype=np.int32)
            for name, model in models.items():
                started = time.perf_counter()
                model(ids, np.ones_like(ids))
                seconds[name][rep] += time.perf_counter() - started
    useful = sum(int(n.sum()) for n in lengths)
    shapes = len(set(runs))
    padded = sum(r * w for r, w in runs)
    print(f"## First-seen shapes: {args.requests} fresh {args.workload} requests, {args.onnx}: {len(runs)} runs, "
          f"{shapes} distinct shapes, padding efficiency {100 * useful / padded:.1f}%\n")
    print("| OpenVINO precision | pass 1 (new shapes) s | passes 2, 3 (seen) s | first-seen cost | per new shape ms |")
    print("|---|---|---|---|---|")
    for name in precisions:
        first, again = seconds[name][0], (seconds[name][1] + seconds[name][2]) / 2
        print(f"| {name} | {first:.2f} | {seconds[name][1]:.2f}, {seconds[name][2]:.2f} | "
              f"{100 * (first / again - 1):+.0f}% | {1e3 * (first - again) / shapes:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
