"""Per-request latency of the ensemble, one client in series, and where the time goes.

    python -m loadtests.latency --repository build/model_repository --passages 16,64 --requests 100

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
from rerank_contract.ports import DEFAULT as DEFAULT_PORTS

from .stepstats import delta, read_stats, share_table


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)} | {"mean": statistics.fmean(arr)}


def make_requests(n: int, passages: int, words: tuple[int, int], seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(random_text(rng, rng.randint(5, 30)), [random_text(rng, rng.randint(*words)) for _ in range(passages)])
            for _ in range(n)]


def measure(url: str, protocol: str, model: str, requests: list[tuple[str, list[str]]], warmup: int = 2) -> list[float]:
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


def run(url_for, grpc_url: str, protocols: list[str], passage_counts: list[int], model: str, n: int,
        words: tuple[int, int], seed: int) -> list[str]:
    """Markdown lines: a latency row per (protocol, passages) and the per-step shares of each run."""
    import tritonclient.grpc as grpcclient

    stats_client = grpcclient.InferenceServerClient(grpc_url)
    rows = ["| protocol | request | n | p50 ms | p95 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|---|"]
    shares = []
    try:
        for passages in passage_counts:
            for protocol in protocols:
                before = read_stats(stats_client)
                lat = measure(url_for(protocol), protocol, model, make_requests(n, passages, words, seed))
                steps = delta(read_stats(stats_client), before)
                p = percentiles(lat)
                rows.append(f"| {protocol} | 1x{passages} | {len(lat)} | {p['p50']:.1f} | {p['p95']:.1f} | "
                            f"{p['p99']:.1f} | {p['mean']:.1f} |")
                shares += ["", f"{protocol} 1x{passages}:", *share_table(steps)]
    finally:
        stats_client.close()
    return rows + shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", help="start a tritonserver on this repository (else use --grpc/--http)")
    parser.add_argument("--grpc", default=f"localhost:{DEFAULT_PORTS.grpc}", help="gRPC address of a running server")
    parser.add_argument("--http", default=f"localhost:{DEFAULT_PORTS.triton_http}", help="KServe HTTP address of a running server")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--model", default=DEFAULT_ENSEMBLE_NAME)
    parser.add_argument("--passages", default="16,64", help="passages per request, comma-separated")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--words", default="40,80", help="passage length range in words")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    words = tuple(int(x) for x in args.words.split(","))
    counts = [int(x) for x in args.passages.split(",")]
    protocols = args.protocols.split(",")
    if args.repository:
        from rerank_serving.server import TritonServer

        with TritonServer(args.repository) as server:
            lines = run(server.url, server.grpc_url, protocols, counts, args.model, args.requests, words, args.seed)
    else:
        lines = run(lambda p: args.grpc if p == "grpc" else args.http, args.grpc, protocols, counts, args.model,
                    args.requests, words, args.seed)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
