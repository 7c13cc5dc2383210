"""What the REST gateway costs over calling Triton's gRPC directly, measured in one run.

For each repository the same requests go three ways: (a) raw tritonclient gRPC, one ``infer`` per
request (the least any client can do; several in a row only past the ensemble's row limit); (b) our client library over gRPC (``RerankClient``: the same
splitting and merging the gateway uses); (c) NIM's ``POST /v1/ranking`` on the gateway. Single-client
latency (p50/p95) for 1 x 16 and 1 x 200 passages, the three ways interleaved request by request;
pairs/s with 8 concurrent clients; and the CPU time the gateway process spent. Everything (load generator, gateway, Triton) shares this machine's
cores, as it would on one host.

    python -m loadtests.gateway_overhead --repository build/model_repository --label small
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import tritonclient.grpc as grpcclient

from rerank_serving.stack import ServingStack
from rerank_build.textgen import random_text
from rerank_client import RerankClient
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, build_inputs, build_outputs, parse_result


@dataclass
class Phase:
    latencies: list[float]
    pairs: int
    wall_s: float
    gateway_cpu_s: float
    triton_cpu_s: float


def texts(n: int, seed: int) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    return random_text(rng, 10, ("en",)), [random_text(rng, rng.randint(20, 60), ("en",)) for _ in range(n)]


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (Triton's python stubs are children)."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class Paths:
    """The three ways in, with one connection per thread."""

    def __init__(self, stack: ServingStack) -> None:
        self.stack = stack
        self.local = threading.local()
        self.opened: list = []  # every connection, closed by close()
        with RerankClient(stack.grpc_url, "grpc") as client:
            self.max_rows = client.limits.max_rows

    def _keep(self, name: str, make):
        conn = getattr(self.local, name, None)
        if conn is None:
            conn = make()
            setattr(self.local, name, conn)
            self.opened.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.opened:
            conn.close()

    def raw(self, query: str, passages: list[str]) -> None:
        client = self._keep("raw", lambda: grpcclient.InferenceServerClient(self.stack.grpc_url))
        for start in range(0, len(passages), self.max_rows):
            part = passages[start:start + self.max_rows]
            result = client.infer(DEFAULT_ENSEMBLE_NAME, build_inputs(grpcclient, query, part),
                                  outputs=build_outputs(grpcclient), parameters={"truncate": "END"})
            assert len(parse_result(result).index) == len(part)

    def direct(self, query: str, passages: list[str]) -> None:
        client = self._keep("client", lambda: RerankClient(self.stack.grpc_url, "grpc", timeout_s=600))
        assert len(client.rerank(query, passages, truncate="END")) == len(passages)

    def gateway(self, query: str, passages: list[str]) -> None:
        session = self._keep("session", requests.Session)
        body = {"query": {"text": query}, "passages": [{"text": p} for p in passages], "truncate": "END"}
        answer = session.post(self.stack.rest_url + "/v1/ranking", json=body, timeout=600)
        assert answer.status_code == 200 and len(answer.json()["rankings"]) == len(passages), answer.text[:200]


def run_phase(stack: ServingStack, fn, work: list[tuple[str, list[str]]], concurrency: int) -> Phase:
    gw0, tr0 = cpu_seconds(stack.gateway.process.pid), cpu_seconds(stack.triton.process.pid)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(item: tuple[str, list[str]]) -> None:
        started = time.perf_counter()
        fn(*item)
        with lock:
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, work))
    wall = time.perf_counter() - started
    return Phase(latencies, sum(len(p) for _, p in work), wall, cpu_seconds(stack.gateway.process.pid) - gw0,
                 cpu_seconds(stack.triton.process.pid) - tr0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000


def measure(repository: Path, label: str, single: dict[int, int], concurrent_requests: int, log_dir: Path) -> list[str]:
    rows = []
    # No admission budget: 8 clients x 200 passages exceed it by design, and this measures the gateway's
    # cost for the same work, not its answer to overload (loadtests/overload.py measures that).
    with ServingStack(repository, log_dir=log_dir, gateway_args=["--no-access-log", "--no-admission", "--no-cache"]) as stack, \
            contextlib.closing(Paths(stack)) as paths:
        ways = (paths.raw, paths.direct, paths.gateway)
        for n, requests_n in single.items():
            work = [texts(n, seed) for seed in range(requests_n + 2)]
            for item in work[:2]:  # warm-up: connections, limits, ONNX Runtime's first shapes
                for fn in ways:
                    fn(*item)
            latencies: list[list[float]] = [[] for _ in ways]
            gw_cpu = 0.0
            for item in work[2:]:  # interleaved, so that drift hits every way alike
                for i, fn in enumerate(ways):
                    phase = run_phase(stack, fn, [item], 1)
                    latencies[i] += phase.latencies
                gw_cpu += phase.gateway_cpu_s
            cells = [f"{statistics.median(x) * 1000:.1f} / {pct(x, .95):.1f}" for x in latencies]
            cost = (statistics.median(latencies[2]) - statistics.median(latencies[0])) * 1000
            rows.append(f"| {label} | 1 x {n}, 1 client | {' | '.join(cells)} | {cost:+.1f} ms | "
                        f"{gw_cpu / len(latencies[2]) * 1000:.1f} ms per request | {len(latencies[2])} |")
        for n in single:
            work = [texts(n, 1000 + seed) for seed in range(concurrent_requests)]
            phases = [run_phase(stack, fn, work, 8) for fn in ways]
            rates = [ph.pairs / ph.wall_s for ph in phases]
            g = phases[2]
            rows.append(f"| {label} | 1 x {n}, 8 clients | {' | '.join(f'{r:.1f} pairs/s' for r in rates)} | "
                        f"{rates[2] / rates[0] - 1:+.1%} | {g.gateway_cpu_s / g.wall_s:.0%} of a core "
                        f"({g.gateway_cpu_s / len(work) * 1000:.1f} ms per request; Triton "
                        f"{g.triton_cpu_s / g.wall_s:.0%}) | {len(work)} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", action="append", required=True, help="repository to serve (repeatable)")
    parser.add_argument("--label", action="append", help="a name per repository (e.g. its preset)")
    parser.add_argument("--requests-16", type=int, default=60, help="single-client requests of 16 passages")
    parser.add_argument("--requests-200", type=int, default=20, help="single-client requests of 200 passages")
    parser.add_argument("--concurrent-requests", type=int, default=32, help="requests per 8-client phase")
    parser.add_argument("--reports", default="build/reports")
    args = parser.parse_args(argv)
    labels = args.label or [Path(r).name for r in args.repository]
    out = Path(args.reports) / time.strftime("gateway-overhead-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| repository | workload | raw gRPC: p50 / p95 ms, or pairs/s | client library, gRPC | REST gateway | "
             "gateway vs raw gRPC | gateway CPU | requests |", "|---|---|---|---|---|---|---|---|"]
    for repository, label in zip(args.repository, labels):
        print(f"measuring {label} ({repository})", flush=True)
        lines += measure(Path(repository), label, {16: args.requests_16, 200: args.requests_200},
                         args.concurrent_requests, out / label)
    cores = psutil.cpu_count()
    report = "\n".join([f"# REST gateway overhead ({cores} cores shared by client, gateway and Triton)", "", *lines, ""])
    (out / "report.md").write_text(report)
    print(report)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
