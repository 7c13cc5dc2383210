"""The client library's overhead over raw tritonclient, for the same requests, in one run.

For each request size (1 x 16 and 1 x 1,000 passages by default) and protocol, the same calls go
through raw tritonclient (the client's request plan, sent one after another on one connection) and
through ``RerankClient`` with ``max_concurrency=1`` (the same sequence); the difference of the p50s
is what planning, validation, retries bookkeeping, merging and sigmoid cost. ``max_concurrency=4``
(the default) is shown too.

    python -m loadtests.client_overhead --repository build/bench/tiny/repository
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rerank_client import RerankClient
from rerank_client.core import plan_requests
from rerank_client.tensors import build_inputs, build_outputs, parse_result, protocol_module, request_parameters

from .workload import Workload, WorkloadSpec


def raw_call(client, module, model: str, query: str, passages: list[str], chunks: list[list[int]]) -> None:
    for chunk in chunks:
        parse_result(client.infer(model, build_inputs(module, query, [passages[i] for i in chunk]),
                                  outputs=build_outputs(module), parameters=request_parameters("END")))


def p50(fn, requests, warmup: int = 2) -> float:
    for request in requests[:warmup]:
        fn(request)
    times = []
    for request in requests:
        started = time.perf_counter()
        fn(request)
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.percentile(times, 50))


def measure(url: str, protocol: str, sizes: dict[int, int], seed: int) -> list[str]:
    rows = []
    module = protocol_module(protocol)
    raw = module.InferenceServerClient(url)
    with RerankClient(url, protocol, truncate="END", max_concurrency=1) as serial, \
            RerankClient(url, protocol, truncate="END") as parallel:
        model = serial.settings.model
        for passages, n in sizes.items():
            requests = Workload(WorkloadSpec(seed=seed, passage_mix=(passages,), length_mix=((1.0, 30, 200),))).take(n)

            def via_raw(r):
                texts = list(r.passages)
                chunks = plan_requests(serial.estimator.estimate(r.query, texts), serial.limits,
                                       serial.max_rows_per_request, "END")
                raw_call(raw, module, model, r.query, texts, chunks)

            base = p50(via_raw, requests)
            one = p50(lambda r: serial.rerank(r.query, list(r.passages)), requests)
            four = p50(lambda r: parallel.rerank(r.query, list(r.passages)), requests)
            rows.append(f"| {protocol} | 1 x {passages} | {n} | {base:.1f} | {one:.1f} | {one - base:+.1f} "
                        f"({100 * (one - base) / base:+.1f}%) | {four:.1f} |")
    raw.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="build/bench/tiny/repository")
    parser.add_argument("--sizes", default="16:40,1000:6", help="passages:requests, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = {int(k): int(v) for k, v in (part.split(":") for part in args.sizes.split(","))}
    from rerank_serving.server import TritonServer

    lines = ["| protocol | request | n | raw tritonclient p50 ms | client (1 in flight) p50 ms | overhead | "
             "client (4 in flight) p50 ms |", "|---|---|---|---|---|---|---|"]
    with TritonServer(args.repository) as server:
        for protocol in ("grpc", "http"):
            lines += measure(server.url(protocol), protocol, sizes, args.seed)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
