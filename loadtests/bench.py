"""``make bench``: one run, one machine, three workloads, systems side by side at the same precision.

Workloads (seeded, generated fresh, identical for every system and concurrency):
- short: query + passage <= 128 tokens, 100 passages per request;
- mixed: 10, 50 or 100 passages per request, lengths mostly 50-500 tokens with a tail to 4,000;
- long: 10 passages of 1,000-4,000 tokens per request.

Systems, per precision (fp32; bf16 where the CPU has AVX512-BF16 or AMX): ours (the Triton ensemble
through the client library over gRPC; fp32 on the default CPU engine, bf16 on OpenVINO), vLLM's CPU
build (``--dtype float32`` / ``bfloat16``) and sentence-transformers' CrossEncoder (torch fp32 / bf16).
For each workload and concurrency (1 and 8): pairs/s, ratio to vLLM at the same precision, latency
percentiles, padding efficiency (ours: the engine's own counters), model GFLOP/s (useful FLOPs over
wall time and, for ours, over the engine's compute time) against this CPU's matmul peak, measured in
the same run for fp32 and bf16. Then the overhead scenario (tiny preset, 64 short passages, one
client in series). Writes ``build/reports/bench-<time>/bench.md`` and, unless --no-docs,
``docs/benchmarks.md``.

    python -m loadtests.bench            # small preset, everything (about 30 minutes on 2 cores)
    python -m loadtests.bench --quick    # tiny preset, few requests, no vLLM (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from rerank_contract import prompt as rp

from .gpu_reference import measured_peak, model_flops
from .peers import CrossEncoderRunner, OursRunner, Runner, VllmRunner, ensure_vllm, llama_seqcls_view
from .stepstats import delta, read_stats
from .workload import Request, Workload, WorkloadSpec

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
SHORT_MAX_TOKENS = 128
#: name -> (spec for a seed, requests in a full run, requests in --quick)
WORKLOADS: dict[str, tuple[Callable[[int], WorkloadSpec], int, int]] = {
    "short": (lambda seed: WorkloadSpec(seed, (100,), ((1.0, 16, 80),), (3, 10)), 12, 2),
    "mixed": (lambda seed: WorkloadSpec(seed), 12, 2),
    "long": (lambda seed: WorkloadSpec(seed, (10,), ((1.0, 1000, 4000),)), 6, 1),
}
#: Our CPU engines per precision, all measured in one run: (runtime, its precision hint).
OUR_ENGINES = {"fp32": (("onnxruntime", "f32"), ("openvino", "f32")), "bf16": (("openvino", "bf16"),)}
ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
QUICK_LONG_MIX = ((1.0, 200, 400),)  # the tiny preset in CI: "long" is only long for it


@dataclass
class Row:
    workload: str
    system: str
    precision: str
    concurrency: int
    pairs: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    useful: int = 0
    padded: int = 0
    flops: float = 0.0  # useful model FLOPs of the workload
    engine_s: float = 0.0  # ours: the engine model's compute time
    error: str = ""

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0

    def cells(self, vllm_rate: float | None, peak: float) -> str:
        if self.error:
            return f"| {self.system} | {self.precision} | {self.concurrency} | skipped: {self.error} | | | | | | |"
        p = np.percentile(self.latencies_ms, [50, 99])
        ratio = f"{self.rate / vllm_rate:.2f}x" if vllm_rate else "-"
        eff = f"{100 * self.useful / self.padded:.1f}%" if self.padded else "-"
        wall = self.flops / self.seconds / 1e9
        engine = f"{self.flops / self.engine_s / 1e9:.0f} ({100 * self.flops / self.engine_s / peak:.0f}%)" \
            if self.engine_s else "-"
        return (f"| {self.system} | {self.precision} | {self.concurrency} | {self.rate:.1f} | {ratio} | {p[0]:.0f} | "
                f"{p[1]:.0f} | {eff} | {wall:.0f} ({100 * wall * 1e9 / peak:.0f}%) | {engine} |")


def run(runner: Runner, requests: list[Request], concurrency: int) -> tuple[float, list[float]]:
    """Seconds for all requests with ``concurrency`` clients, and each request's latency (ms)."""

    def one(request: Request) -> float:
        started = time.perf_counter()
        runner.score(request)
        return (time.perf_counter() - started) * 1e3

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, requests))
    return time.perf_counter() - started, latencies


def prepare(preset: str, seed: int) -> tuple[Path, Path]:
    """The preset's checkpoint and fp32 ONNX under build/ (made when missing)."""
    from rerank_build.checkpoint import write_random_checkpoint
    from rerank_build.export_onnx import export_onnx

    ckpt = ROOT / "build" / "checkpoints" / preset
    if not (ckpt / "model.safetensors").is_file():
        write_random_checkpoint(preset, ckpt, seed=seed)
    onnx = ROOT / "build" / "onnx" / f"{preset}-fp32" / "model.onnx"
    if not onnx.is_file():
        export_onnx(ckpt, onnx.parent, "fp32")
    return ckpt, onnx


@contextlib.contextmanager
def serving(preset: str, ckpt: Path, onnx: Path, log_dir: Path, engine: str | None = None,
            precision: str = "f32") -> Iterator[Any]:
    """Our CPU repository for ``preset`` served by tritonserver (``engine`` None: the default one)."""
    from rerank_build.repository import RepositorySettings, build_repository
    from rerank_serving.server import TritonServer

    settings = RepositorySettings(cpu_engine=engine or RepositorySettings.cpu_engine, cpu_precision=precision)
    label = f"{preset}-{settings.cpu_engine}-{precision}"
    repo = build_repository(ckpt, ROOT / "build" / "bench" / label / "repository", settings, onnx=onnx, reuse=True,
                            force=True)
    with TritonServer(repo, log_path=log_dir / f"tritonserver-{label}.log") as server:
        yield server


def engine_tokens(metrics_url: str) -> tuple[int, int]:
    """The engine's (useful, padded) token counters from Triton's metrics endpoint."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = dict(re.findall(r'rerank_engine_tokens_total\{kind="(\w+)"\} ([0-9.e+]+)', text))
    return int(float(found.get("useful", 0))), int(float(found.get("padded", 0)))


class Bench:
    """The workloads (requests, exact token counts, FLOPs) and the rows measured on them."""

    def __init__(self, encoder: rp.PairEncoder, config: Any, workloads: dict[str, list[Request]],
                 levels: list[int]) -> None:
        self.workloads = workloads
        self.levels = levels
        self.counts = {name: [[len(ids) for ids in encoder.encode(r.query, r.passages, "END")] for r in reqs]
                       for name, reqs in workloads.items()}
        # The timed requests' model FLOPs (the first request of each workload only warms up).
        self.flops = {name: sum(model_flops(config, 1, n) for c in counts[1:] for n in c)
                      for name, counts in self.counts.items()}
        self.rows: list[Row] = []

    def ours(self, server: Any, label: str, precision: str) -> None:
        import tritonclient.grpc as grpcclient

        stats = grpcclient.InferenceServerClient(server.grpc_url)
        runner = OursRunner(server.grpc_url, "grpc")
        metrics = f"http://{server.host}:{server.ports.metrics}/metrics"
        try:
            for name, requests in self.workloads.items():
                runner.score(requests[0])  # warm-up (not timed, outside the counters)
                for level in self.levels:
                    before, tokens = read_stats(stats), engine_tokens(metrics)
                    seconds, latencies = run(runner, requests[1:], level)
                    engine = delta(read_stats(stats), before)["engine"]
                    useful, padded = (a - b for a, b in zip(engine_tokens(metrics), tokens))
                    self.add(Row(name, label, precision, level, seconds=seconds,
                                 latencies_ms=latencies, useful=useful, padded=padded,
                                 engine_s=engine.execution_ns / 1e9))
        finally:
            runner.close()
            stats.close()

    def peer(self, make: Callable[[], Runner], label: str, precision: str, levels: list[int] | None = None) -> None:
        try:
            runner = make()
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            logger.warning("%s %s skipped: %s", label, precision, exc)
            for name in self.workloads:
                self.rows.append(Row(name, label, precision, self.levels[0], error=str(exc)[:200]))
            return
        try:
            for name, requests in self.workloads.items():
                runner.score(requests[0])  # warm-up (not timed)
                for level in levels or self.levels:
                    seconds, latencies = run(runner, requests[1:], level)
                    useful, padded = map(sum, zip(*(runner.padding(r, c) for r, c in
                                                    zip(requests[1:], self.counts[name][1:]))))
                    self.add(Row(name, label, precision, level, seconds=seconds, latencies_ms=latencies,
                                 useful=useful, padded=padded))
        finally:
            runner.close()

    def add(self, row: Row) -> None:
        row.pairs = sum(r.pairs for r in self.workloads[row.workload][1:])
        row.flops = self.flops[row.workload]
        self.rows.append(row)
        logger.info("%s, %s %s, concurrency %d: %.1f pairs/s", row.workload, row.system, row.precision,
                    row.concurrency, row.rate)


def short_requests(spec: WorkloadSpec, n: int, encoder: rp.PairEncoder) -> list[Request]:
    """The short workload: passages cut word by word until query + passage fit 128 tokens."""
    out = []
    for request in Workload(spec).take(n):
        passages = []
        for text in request.passages:
            words = text.split(" ")
            while len(words) > 1 and len(encoder.encode(request.query, [" ".join(words)], "END")[0]) > SHORT_MAX_TOKENS:
                words.pop()
            passages.append(" ".join(words))
        out.append(Request(request.query, tuple(passages)))
    return out


def openvino_matmul(n: int, precision: str) -> float:
    """FLOP/s of one n x n x n matmul compiled by OpenVINO with its precision hint (best of ~1 s)."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32)
    weight = ops.constant(rng.standard_normal((n, n)).astype(np.float32))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(x, weight, False, True)], [x]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": precision})
    data = rng.standard_normal((n, n)).astype(np.float32)
    compiled(data)
    best = np.inf
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        compiled(data)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def peaks(quick: bool) -> dict[str, float]:
    """This CPU's matmul peak, FLOP/s, measured now on all cores: the faster of torch and OpenVINO
    (here torch's fp32 matmul reaches half of OpenVINO's, so torch alone would flatter everyone)."""
    import torch

    n = 512 if quick else 2048
    return {precision: max(measured_peak(torch, "cpu", dtype, lambda: None, n), openvino_matmul(n, hint))
            for precision, dtype, hint in (("fp32", torch.float32, "f32"), ("bf16", torch.bfloat16, "bf16"))}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) / 1024**2
    import onnxruntime
    import openvino
    import torch

    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"openvino {openvino.__version__.split('-')[0]}")


def overhead_scenario(log_dir: Path, n: int, seed: int) -> list[str]:
    """tiny preset, 64 passages of ~110 tokens, one client in series: p50 per request."""
    ckpt, onnx = prepare("tiny", seed)
    workload = Workload(WorkloadSpec(seed=seed, passage_mix=(64,), length_mix=((1.0, 75, 100),)))
    requests = workload.take(n)
    encoder = rp.PairEncoder(rp.load_tokenizer(str(ckpt)))
    mean_tokens = np.mean([len(r) for q in requests[:4] for r in encoder.encode(q.query, q.passages, "END")])
    lines = ["", f"### Overhead: tiny preset, 64 passages of ~{mean_tokens:.0f} tokens per request, "
             f"one client in series ({n} requests)", "", "| system | p50 ms per request | p95 ms |", "|---|---|---|"]
    with serving("tiny", ckpt, onnx, log_dir) as server:
        systems = [lambda: OursRunner(server.grpc_url, "grpc"), lambda: OursRunner(server.http_url, "http"),
                   lambda: CrossEncoderRunner(llama_seqcls_view(ckpt, ROOT / "build" / "bench" / "tiny-seqcls"))]
        for make in systems:
            runner = make()
            try:
                runner.score(requests[0])  # warm-up (not timed)
                _, latencies = run(runner, requests, 1)
            finally:
                runner.close()
            p = np.percentile(latencies, [50, 95])
            lines.append(f"| {runner.name} | {p[0]:.1f} | {p[1]:.1f} |")
    return lines


def report(bench: Bench, peak: dict[str, float], args: argparse.Namespace, preset: str) -> list[str]:
    lines = [
        f"## Benchmark ({time.strftime('%Y-%m-%d')}, `python -m loadtests.bench{' --quick' if args.quick else ''}`)",
        "", f"- machine: {machine()}",
        f"- checkpoint: `{preset}` preset (random weights, seed {args.seed}); every system at the precision of its row",
        f"- this CPU's matmul peak, measured in this run ({os.cpu_count()} threads, the faster of torch and OpenVINO "
        f"on a 2048-cube matmul, 512 with --quick): fp32 "
        f"{peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s",
        "- the same requests for every system and concurrency; each system's first request warms it up and is "
        "not timed", ""]
    for name, requests in bench.workloads.items():
        lengths = [x for c in bench.counts[name][1:] for x in c]
        timed_requests = requests[1:]
        lines += [f"### {name}: {len(timed_requests)} requests, {sum(r.pairs for r in timed_requests)} pairs, "
                  f"{sum(lengths):,} tokens (pair length p50 {np.percentile(lengths, 50):.0f}, max {max(lengths)})", "",
                  "| system | precision | concurrency | pairs/s | vs vLLM | p50 ms | p99 ms | padding efficiency | "
                  "model GFLOP/s, wall (of peak) | engine GFLOP/s (of peak) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in (r for r in bench.rows if r.workload == name):
            vllm = next((r.rate for r in bench.rows if r.workload == name and r.system.startswith("vLLM")
                         and r.precision == row.precision and r.concurrency == row.concurrency and not r.error), None)
            lines.append(row.cells(vllm, peak[row.precision]))
        lines.append("")
    return lines


NOTES = """
How to read it, and what limits each number:
- pairs/s: all timed requests of a workload over the wall time of the run, at that many concurrent
  clients. On 2 cores every system is compute-bound; more clients add queueing, not throughput.
- vs vLLM: pairs/s over vLLM's at the same precision, workload and concurrency, in this run.
- sentence-transformers runs at concurrency 1 only: an in-process library scores one batch at a
  time; more threads only contend (the previous run measured 1.1 pairs/s at 1 and 1.0 at 8).
- padding efficiency: useful tokens / tokens the model computed. Ours from the engine's own counters
  (`rerank_engine_tokens_total` on Triton's metrics port); vLLM batches variable lengths (none);
  sentence-transformers from its sort-then-batch (batch 32).
- model GFLOP/s: the model's FLOPs for the workload's useful tokens (every matmul weight twice per
  token, bidirectional attention's 4 x layers x width x length^2) over wall time, and for ours also
  over the time the engine model executed (Triton's per-batch statistics), against the matmul peak measured above.
  The peak is a practical bound (one large matmul), not a datasheet figure; peers are credited with
  the bidirectional FLOPs even where their causal attention skips half of them.
- sentence-transformers and vLLM run the weights as stock LlamaForSequenceClassification (causal,
  last-token pooling): the same linear layers, half of the attention work, not the model's scores.
  They are speed peers; our scores are the model's (parity tests). vLLM runs with prefix caching off:
  every pass repeats the same requests, and its cache would answer them from the first pass.
- docs/cpu_engine.md: how the CPU engine was chosen, the padding split, why 8 clients were once slower
  than 1, and the profile behind the one ratio under 1.5x (long passages in fp32).
- random-weight presets (`small`: 4 layers, hidden 512): per-request overheads weigh more than with the
  1.24B model, whose FLOPs per token are ~100x larger.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, few requests, no vLLM (CI)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--precisions", default=None, help="fp32,bf16 (default: bf16 where the CPU has it)")
    parser.add_argument("--concurrency", default=None, help="default 1,8 (1,2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--no-peers", action="store_true", help="ours only (engine experiments)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--reports", default=str(ROOT / "build" / "reports"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from rerank_build.config import RerankerConfig
    from rerank_build.cpu_runtime import bf16_native

    preset = args.preset or ("tiny" if args.quick else "small")
    levels = [int(x) for x in (args.concurrency or ("1,2" if args.quick else "1,8")).split(",")]
    precisions = args.precisions.split(",") if args.precisions else ["fp32"] + (["bf16"] if bf16_native() else [])
    out = Path(args.reports) / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    ckpt, onnx = prepare(preset, args.seed)
    encoder = rp.PairEncoder(rp.load_tokenizer(str(ckpt)))
    workloads = {}
    for name in args.workloads.split(","):
        make, n, n_quick = WORKLOADS[name]
        spec = make(args.seed)
        if args.quick and name == "long":
            spec = WorkloadSpec(spec.seed, spec.passage_mix, QUICK_LONG_MIX)
        count = 1 + (n_quick if args.quick else n)  # one more: the warm-up request
        workloads[name] = short_requests(spec, count, encoder) if name == "short" else Workload(spec).take(count)
    bench = Bench(encoder, RerankerConfig.from_file(ckpt / "config.json"), workloads, levels)
    peak = peaks(args.quick)
    logger.info("matmul peak: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s", peak["fp32"] / 1e9, peak["bf16"] / 1e9)
    view = llama_seqcls_view(ckpt, ROOT / "build" / "bench" / f"{preset}-seqcls")
    vllm_python, vllm_reason = (None, "QUICK mode (CI): vLLM needs minutes to install and start") if args.quick \
        else (None, "--no-vllm") if args.no_vllm or args.no_peers else ensure_vllm(ROOT / "build" / "venv-vllm")
    for precision in precisions:
        for engine, hint in OUR_ENGINES[precision]:
            with serving(preset, ckpt, onnx, out, engine, hint) as server:
                bench.ours(server, f"ours (Triton, gRPC), {ENGINE_NAMES[engine]}", precision)
        if args.no_peers:
            continue
        if vllm_python is None:
            for name in workloads:
                bench.rows.append(Row(name, "vLLM CPU", precision, levels[0], error=vllm_reason))
        else:
            from rerank_serving.server import free_ports

            bench.peer(lambda: VllmRunner(vllm_python, view, free_ports(1)[0], out / f"vllm-{precision}.log",
                                          precision=precision), "vLLM CPU (/classify)", precision)
        # An in-process library scores one batch at a time: more client threads only contend (measured:
        # no gain at 8), and at its speed a second pass would double the run's time.
        bench.peer(lambda: CrossEncoderRunner(view, precision=precision), "sentence-transformers CrossEncoder",
                   precision, levels=levels[:1])

    lines = report(bench, peak, args, preset)
    if not args.no_peers:
        lines += overhead_scenario(out, 6 if args.quick else 30, args.seed)
    text = "\n".join(lines) + "\n" + NOTES
    (out / "bench.md").write_text(text)
    print(text)
    if not args.no_docs:
        docs = ROOT / "docs" / "benchmarks.md"
        header = "# Benchmarks\n\nLatest `make bench` run (regenerate with `make bench`; numbers are machine-specific).\n\n"
        docs.write_text(header + text)
    print(f"report: {out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
