"""What the REST gateway costs over calling Triton's gRPC directly, measured in one run.

For each repository: the same requests go (a) straight to Triton over gRPC through our client
library (``RerankClient``: the same splitting and merging the gateway uses), and (b) as NIM's
``POST /v1/ranking`` to the gateway. Single-client latency (p50/p95) for 1 x 16 and 1 x 200 passages,
with the two paths interleaved request by request; pairs/s with 8 concurrent clients; and the CPU
time the gateway process spent. Everything (load generator, gateway, Triton) shares this machine's
cores, as it would on one host.

    python -m loadtests.gateway_overhead --repository build/model_repository --label small
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from rerank_build.stack import ServingStack
from rerank_build.textgen import random_text
from rerank_client import RerankClient


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
    """The two ways in, with one connection per thread."""

    def __init__(self, stack: ServingStack) -> None:
        self.stack = stack
        self.local = threading.local()

    def direct(self, query: str, passages: list[str]) -> None:
        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = RerankClient(self.stack.grpc_url, "grpc", timeout_s=600)
        assert len(client.rerank(query, passages, truncate="END")) == len(passages)

    def gateway(self, query: str, passages: list[str]) -> None:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
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
    with ServingStack(repository, log_dir=log_dir, gateway_args=["--no-access-log"]) as stack:
        paths = Paths(stack)
        for n, requests_n in single.items():
            work = [texts(n, seed) for seed in range(requests_n + 2)]
            for item in work[:2]:  # warm-up: connections, limits, ONNX Runtime's first shapes
                paths.direct(*item)
                paths.gateway(*item)
            direct: list[float] = []
            via: list[float] = []
            gw_cpu = 0.0
            for item in work[2:]:  # interleaved, so that drift hits both alike
                direct += run_phase(stack, paths.direct, [item], 1).latencies
                phase = run_phase(stack, paths.gateway, [item], 1)
                via += phase.latencies
                gw_cpu += phase.gateway_cpu_s
            rows.append(f"| {label} | 1 x {n}, 1 client | {statistics.median(direct) * 1000:.1f} / {pct(direct, .95):.1f} | "
                        f"{statistics.median(via) * 1000:.1f} / {pct(via, .95):.1f} | "
                        f"{(statistics.median(via) - statistics.median(direct)) * 1000:+.1f} | "
                        f"{gw_cpu / len(via) * 1000:.1f} ms per request | {len(via)} |")
        for n in single:
            work = [texts(n, 1000 + seed) for seed in range(concurrent_requests)]
            d = run_phase(stack, paths.direct, work, 8)
            g = run_phase(stack, paths.gateway, work, 8)
            rows.append(f"| {label} | 1 x {n}, 8 clients | {d.pairs / d.wall_s:.1f} pairs/s | {g.pairs / g.wall_s:.1f} "
                        f"pairs/s | {(g.pairs / g.wall_s) / (d.pairs / d.wall_s) - 1:+.1%} | "
                        f"{g.gateway_cpu_s / g.wall_s:.0%} of a core ({g.gateway_cpu_s / len(work) * 1000:.1f} ms "
                        f"per request; Triton {g.triton_cpu_s / g.wall_s:.0%}) | {len(work)} |")
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
    lines = ["| repository | workload | direct gRPC (client library): p50 / p95 ms, or pairs/s | via gateway | "
             "gateway cost | gateway CPU | requests |", "|---|---|---|---|---|---|---|"]
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
