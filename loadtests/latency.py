"""Per-request latency of the ensemble, one client in series, and where the time goes.

    python -m loadtests.latency --url localhost:8001 --protocol grpc --passages 16 --requests 200

Prints p50/p95/p99 of the request latency and the per-step share of time from Triton's statistics.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from rerank_build.textgen import random_text
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, build_inputs, build_outputs, parse_result, protocol_module

from .stepstats import delta, read_stats, share_table


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)} | {"mean": statistics.fmean(arr)}


def make_requests(n: int, passages: int, words: tuple[int, int], seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(random_text(rng, rng.randint(5, 30)), [random_text(rng, rng.randint(*words)) for _ in range(passages)])
            for _ in range(n)]


def measure(url: str, protocol: str, model: str, requests: list[tuple[str, list[str]]], warmup: int = 5) -> list[float]:
    module = protocol_module(protocol)
    client = module.InferenceServerClient(url)
    outputs = build_outputs(module)
    try:
        latencies = []
        for i, (query, passages) in enumerate(requests):
            inputs = build_inputs(module, query, passages)
            started = time.perf_counter()
            parse_result(client.infer(model, inputs, outputs=outputs, parameters={"truncate": "END"}))
            if i >= warmup:
                latencies.append((time.perf_counter() - started) * 1e3)
        return latencies
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--grpc-url", help="gRPC address for Triton's statistics (default: --url if grpc)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--model", default=DEFAULT_ENSEMBLE_NAME)
    parser.add_argument("--passages", type=int, default=16)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--words", default="40,80", help="passage length range in words (≈1.5-2 tokens each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.words.split(","))
    import tritonclient.grpc as grpcclient

    stats_client = grpcclient.InferenceServerClient(args.grpc_url or args.url)
    before = read_stats(stats_client)
    lat = measure(args.url, args.protocol, args.model, make_requests(args.requests, args.passages, (lo, hi), args.seed))
    steps = delta(read_stats(stats_client), before)
    stats_client.close()
    p = percentiles(lat)
    print(f"{args.protocol} 1x{args.passages}: n={len(lat)} p50 {p['p50']:.1f} ms, p95 {p['p95']:.1f} ms, "
          f"p99 {p['p99']:.1f} ms, mean {p['mean']:.1f} ms")
    print("\n".join(share_table(steps)))


if __name__ == "__main__":
    main()
