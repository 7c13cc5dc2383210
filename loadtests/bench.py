"""``make bench``: one run, one machine: speed at equal accuracy, three workloads, and what the host can feed a GPU.

Workloads (seeded, identical for every system; each concurrency level gets requests of its own, so
every timed request is one that system has never seen: fresh shapes, no cache to answer from):
- short: query + passage <= 128 tokens, 100 passages per request;
- mixed: 10, 50 or 100 passages per request, lengths mostly 50-500 tokens with a tail to 4,000;
- long: 10 passages of 1,000-4,000 tokens per request.

Systems: ours (the Triton ensemble through the client library over gRPC) as ``make serve`` builds it
(OpenVINO; bf16 linear layers where the CPU has AVX512-BF16 or AMX, else f32), OpenVINO f32 and ONNX
Runtime f32; vLLM's CPU build serving the model faithfully (``LlamaBidirectionalForSequenceClassification``,
its documented CPU setup) in fp32 and bf16; sentence-transformers' CrossEncoder (stock causal Llama
view) in fp32 and bf16. First, each system's accuracy at each precision against the fp32 reference on
the same pairs (``loadtests.accuracy``); then per workload and concurrency (1 and 8): pairs/s, latency,
padding efficiency, model GFLOP/s against this CPU's matmul peak measured in the same run; the table
"pairs/s at equal accuracy" (each peer at its fastest precision that meets vLLM bf16's error); the host
ceiling with an engine step that costs nothing (``loadtests.host_ceiling``); the overhead scenario.
Writes ``build/reports/bench-<time>/bench.md`` and, unless --no-docs, ``docs/benchmarks.md``.

    python -m loadtests.bench            # small preset, everything (about 25 minutes on 2 cores)
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

from . import host_ceiling
from .accuracy import FALLBACK_BOUND, SLACK, Accuracy, AccuracySet, accuracy_requests
from .gpu_reference import measured_peak, model_flops
from .peers import (CrossEncoderRunner, OursRunner, Runner, VllmRunner, bidirectional_view, ensure_vllm,
                    llama_seqcls_view)
from .stepstats import delta, read_stats
from .workload import Request, Workload, WorkloadSpec

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
SHORT_MAX_TOKENS = 128
#: name -> (spec for a seed, timed requests per concurrency level in a full run, in --quick)
WORKLOADS: dict[str, tuple[Callable[[int], WorkloadSpec], int, int]] = {
    "short": (lambda seed: WorkloadSpec(seed, (100,), ((1.0, 16, 80),), (3, 10)), 11, 2),
    "mixed": (lambda seed: WorkloadSpec(seed), 11, 2),
    "long": (lambda seed: WorkloadSpec(seed, (10,), ((1.0, 1000, 4000),)), 5, 1),
}
DEFAULT_SYSTEM = "ours, `make serve` default (OpenVINO)"
#: Our configurations, all measured in one run: (label, cpu_engine, precision setting). ``auto`` is
#: the default's: bf16 linear layers where the CPU has AVX512-BF16/AMX, else f32.
OURS = ((DEFAULT_SYSTEM, "openvino", "auto"), ("ours, OpenVINO", "openvino", "f32"),
        ("ours, ONNX Runtime", "onnxruntime", "f32"))
VLLM = "vLLM CPU, bidirectional (/classify)"
CROSS_ENCODER = "sentence-transformers CrossEncoder (causal view)"
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
    flops: float = 0.0  # useful model FLOPs of the timed requests
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
            precision: str | None = None) -> Iterator[Any]:
    """Our CPU repository for ``preset`` served by tritonserver (None: the default engine / precision)."""
    from rerank_build.repository import RepositorySettings, build_repository
    from rerank_serving.server import TritonServer

    settings = RepositorySettings(cpu_engine=engine or RepositorySettings.cpu_engine,
                                  cpu_precision=precision or RepositorySettings.cpu_precision)
    label = f"{preset}-{settings.cpu_engine}-{settings.cpu_precision}"
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


@dataclass
class Timed:
    """One workload: a warm-up request, then fresh timed requests per concurrency level."""

    warmup: Request
    levels: dict[int, list[Request]]
    counts: dict[int, list[list[int]]] = field(default_factory=dict)  # exact token counts per request
    flops: dict[int, float] = field(default_factory=dict)


class Bench:
    """The workloads, the accuracy set, and everything measured on them."""

    def __init__(self, encoder: rp.PairEncoder, config: Any, workloads: dict[str, Timed],
                 accuracy: AccuracySet | None) -> None:
        self.workloads = workloads
        self.levels = sorted(next(iter(workloads.values())).levels)
        for timed in workloads.values():
            for level, requests in timed.levels.items():
                timed.counts[level] = [[len(ids) for ids in encoder.encode(r.query, r.passages, "END")]
                                       for r in requests]
                timed.flops[level] = sum(model_flops(config, 1, n) for c in timed.counts[level] for n in c)
        self.accuracy_set = accuracy
        self.accuracy: dict[tuple[str, str], Accuracy | str] = {}
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def lengths(self, name: str) -> list[int]:
        return [n for counts in self.workloads[name].counts.values() for c in counts for n in c]

    def measure_accuracy(self, runner: Runner, label: str, precision: str) -> None:
        if self.accuracy_set is None:
            return
        try:
            self.accuracy[(label, precision)] = found = self.accuracy_set.measure(runner.logits)
            logger.info("accuracy, %s %s: %s", label, precision, found.cells())
        except Exception as exc:  # noqa: BLE001 - reported in the table
            self.accuracy[(label, precision)] = f"failed: {str(exc)[:120]}"

    def ours(self, server: Any, label: str, precision: str) -> None:
        import tritonclient.grpc as grpcclient

        stats = grpcclient.InferenceServerClient(server.grpc_url)
        runner = OursRunner(server.grpc_url, "grpc")
        metrics = f"http://{server.host}:{server.ports.metrics}/metrics"
        try:
            self.measure_accuracy(runner, label, precision)
            for name, timed in self.workloads.items():
                runner.score(timed.warmup)  # warm-up (not timed, outside the counters)
                for level in self.levels:
                    before, tokens = read_stats(stats), engine_tokens(metrics)
                    seconds, latencies = run(runner, timed.levels[level], level)
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
            self.skip(label, precision, str(exc)[:200])
            return
        try:
            if getattr(runner, "setup", None):
                self.notes.append(f"{label}, {precision}: {runner.setup}")  # type: ignore[attr-defined]
            self.measure_accuracy(runner, label, precision)
            for name, timed in self.workloads.items():
                runner.score(timed.warmup)  # warm-up (not timed)
                for level in levels or self.levels:
                    requests = timed.levels[level]
                    seconds, latencies = run(runner, requests, level)
                    useful, padded = map(sum, zip(*(runner.padding(r, c) for r, c in
                                                    zip(requests, timed.counts[level]))))
                    self.add(Row(name, label, precision, level, seconds=seconds, latencies_ms=latencies,
                                 useful=useful, padded=padded))
        finally:
            runner.close()

    def skip(self, label: str, precision: str, reason: str) -> None:
        self.accuracy[(label, precision)] = f"skipped: {reason}"
        for name in self.workloads:
            self.rows.append(Row(name, label, precision, self.levels[0], error=reason))

    def add(self, row: Row) -> None:
        timed = self.workloads[row.workload]
        row.pairs = sum(r.pairs for r in timed.levels[row.concurrency])
        row.flops = timed.flops[row.concurrency]
        self.rows.append(row)
        logger.info("%s, %s %s, concurrency %d: %.1f pairs/s", row.workload, row.system, row.precision,
                    row.concurrency, row.rate)

    def bound(self) -> tuple[Accuracy, str]:
        """The accuracy bound: vLLM bf16's error in this run, else the documented fallback."""
        found = self.accuracy.get((VLLM, "bf16"))
        if isinstance(found, Accuracy):
            return found, "vLLM bf16's, measured in this run"
        return FALLBACK_BOUND, "vLLM bf16's as measured on the small preset (vLLM did not run here)"

    def rate(self, workload: str, system: str, precision: str, level: int) -> float | None:
        return next((r.rate for r in self.rows if (r.workload, r.system, r.precision, r.concurrency)
                     == (workload, system, precision, level) and not r.error), None)

    def best_within(self, workload: str, system: str, level: int) -> tuple[float, str] | None:
        """``system``'s fastest precision that meets the bound here: (pairs/s, precision)."""
        bound, _ = self.bound()
        found = []
        for (label, precision), acc in self.accuracy.items():
            rate = self.rate(workload, system, precision, level) if label == system else None
            if rate and isinstance(acc, Accuracy) and acc.within(bound):
                found.append((rate, precision))
        return max(found, default=None)


def fresh_requests(name: str, seed: int, count: int, levels: list[int], encoder: rp.PairEncoder,
                   quick: bool) -> Timed:
    """One warm-up request and ``count`` fresh ones per level, from the workload's seeded stream."""
    make, _, _ = WORKLOADS[name]
    spec = make(seed)
    if quick and name == "long":
        spec = WorkloadSpec(spec.seed, spec.passage_mix, QUICK_LONG_MIX)
    requests = Workload(spec).take(1 + count * len(levels))
    if name == "short":
        requests = short_requests(requests, encoder)
    return Timed(requests[0], {level: requests[1 + k * count:1 + (k + 1) * count] for k, level in enumerate(levels)})


def short_requests(requests: list[Request], encoder: rp.PairEncoder) -> list[Request]:
    """The short workload: passages cut word by word until query + passage fit 128 tokens."""
    out = []
    for request in requests:
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


def report(bench: Bench, peak: dict[str, float], args: argparse.Namespace, preset: str,
           default_precision: str) -> list[str]:
    bound, bound_source = bench.bound()
    lines = [
        f"## Benchmark ({time.strftime('%Y-%m-%d')}, `python -m loadtests.bench{' --quick' if args.quick else ''}`)",
        "", f"- machine: {machine()}",
        f"- checkpoint: `{preset}` preset (random weights, seed {args.seed}); every system at the precision of its row",
        f"- this CPU's matmul peak, measured in this run ({os.cpu_count()} threads, the faster of torch and OpenVINO "
        f"on a 2048-cube matmul, 512 with --quick): fp32 "
        f"{peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s",
        "- the same requests for every system; each concurrency level gets fresh requests of its own (never "
        "seen before by any system: new shapes for ours, nothing for a cache to answer); each system's first "
        "request warms it up and is not timed",
        f"- `make serve`'s default here: OpenVINO {default_precision} "
        f"({'bf16 linear layers: this CPU has AVX512-BF16/AMX' if default_precision == 'bf16' else 'f32: no AVX512-BF16/AMX'})",
        *(f"- {note}" for note in dict.fromkeys(bench.notes)), ""]
    if bench.accuracy_set is not None:
        lines += [f"### Accuracy against the fp32 reference ({bench.accuracy_set.describe()})", "",
                  "| system | precision | max abs error | mean abs error / std of logits | top passage kept | "
                  "meets the bound |", "|---|---|---|---|---|---|"]
        for (label, precision), acc in bench.accuracy.items():
            if isinstance(acc, Accuracy):
                lines.append(f"| {label} | {precision} | {acc.cells()} | {'yes' if acc.within(bound) else '**no**'} |")
            else:
                lines.append(f"| {label} | {precision} | {acc} | | | |")
        lines += ["", f"The bound ({bound_source}): max abs error {bound.max_abs:.2g}, mean abs error / std "
                      f"{bound.mean_rel:.2g}, top passage kept {bound.top_kept}/{bound.queries}; a system meets it "
                      f"when it is no worse on all three (errors within {100 * SLACK:.0f} %).", ""]
    lines += equal_accuracy(bench)
    for name, timed in bench.workloads.items():
        lengths = bench.lengths(name)
        n = sum(len(r) for r in timed.levels.values())
        pairs = sum(r.pairs for reqs in timed.levels.values() for r in reqs)
        lines += [f"### {name}: {n} requests ({', '.join(f'{len(r)} at concurrency {k}' for k, r in timed.levels.items())}), "
                  f"{pairs} pairs, {sum(lengths):,} tokens (pair length p50 {np.percentile(lengths, 50):.0f}, "
                  f"max {max(lengths)})", "",
                  "| system | precision | concurrency | pairs/s | vs vLLM, same precision | p50 ms | p99 ms | "
                  "padding efficiency | model GFLOP/s, wall (of peak) | engine GFLOP/s (of peak) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in (r for r in bench.rows if r.workload == name):
            vllm = bench.rate(name, VLLM, row.precision, row.concurrency)
            lines.append(row.cells(vllm, peak[row.precision]))
        lines.append("")
    return lines


def equal_accuracy(bench: Bench) -> list[str]:
    """Ours as ``make serve`` runs it against each peer at its fastest precision within the bound."""
    default_rows = [r for r in bench.rows if r.system == DEFAULT_SYSTEM and not r.error]
    if not default_rows:
        return []
    lines = ["### Pairs/s at equal accuracy", "",
             "Each peer at its fastest precision whose error meets the bound above; ours as `make serve` runs it.", "",
             "| workload | clients | ours, `make serve` default | vLLM, bidirectional | ours / vLLM | "
             "sentence-transformers | ours / sentence-transformers |", "|---|---|---|---|---|---|---|"]
    for row in default_rows:
        cells = [f"{row.rate:.1f} ({row.precision})"]
        for peer in (VLLM, CROSS_ENCODER):
            best = bench.best_within(row.workload, peer, row.concurrency)
            ran = any(r.system == peer and r.workload == row.workload and r.concurrency == row.concurrency
                      and not r.error for r in bench.rows)
            if best:
                cells += [f"{best[0]:.1f} ({best[1]})", f"**{row.rate / best[0]:.2f}x**"]
            else:
                cells += ["none meets the bound" if ran else "not run", "-"]
        lines.append(f"| {row.workload} | {row.concurrency} | {' | '.join(cells)} |")
    return lines + [""]


NOTES = """
How to read it, and what limits each number:
- pairs/s: all timed requests of a workload over the wall time of the run, at that many concurrent
  clients. On 2 cores every system is compute-bound; more clients add queueing, not throughput.
- accuracy: every system scores the same pairs (fixed multilingual cases, random ones and long
  passages) and is compared with our PyTorch model in fp32, each pair alone (`loadtests/accuracy.py`).
  "Equal accuracy" holds a system to vLLM bf16's error on all three measures.
- vs vLLM, same precision: pairs/s over vLLM's at the same precision, workload and concurrency.
- sentence-transformers runs at concurrency 1 only: an in-process library scores one batch at a
  time; more threads only contend (measured before: 1.1 pairs/s at 1 and 1.0 at 8). It loads the
  weights as stock LlamaForSequenceClassification (causal, last-token pooling): not the model's
  scores, which its accuracy rows show; it stays as the library a user would reach for first.
- vLLM serves the model faithfully: `LlamaBidirectionalForSequenceClassification` (bidirectional
  attention, mean pooling from the config's `pooling`), `--runner pooling`, raw logits from
  `/classify` with `use_activation: false`, tcmalloc and Intel OpenMP preloaded as its CPU docs ask,
  prefix caching off (no request repeats here anyway).
- padding efficiency: useful tokens / tokens the model computed. Ours from the engine's own counters
  (`rerank_engine_tokens_total` on Triton's metrics port); vLLM batches variable lengths (none);
  sentence-transformers from its sort-then-batch (batch 32).
- model GFLOP/s: the model's FLOPs for the workload's useful tokens (every matmul weight twice per
  token, bidirectional attention's 4 x layers x width x length^2) over wall time, and for ours also
  over the time the engine model executed (Triton's per-batch statistics), against the matmul peak
  measured above (a practical bound, one large matmul, not a datasheet figure).
- host ceiling: the default repository with an engine step that returns at once
  (`loadtests/null_engine.py`), each workload repeated for 20 s at the highest concurrency; pairs/s
  per host core = pairs / CPU seconds (user + system) of tritonserver, all its python stubs and, on
  the REST path, the gateway with its workers; the client's CPU is not counted. One H100's ceiling is
  its bf16 compute ceiling for the real 1.24B model (about 3,900 pairs/s at 128 tokens and 960 at 512;
  FP8 twice that) scaled by this workload's FLOPs per pair. The tokenizer is the real model's, so the
  host's cost per pair carries over to it; the TensorRT backend would replace the null python step.
- docs/cpu_engine.md: how the CPU engine and its precision were chosen, first-seen shapes, the padding
  split, and the profiles behind these numbers.
- random-weight presets (`small`: 4 layers, hidden 512): per-request overheads weigh more than with the
  1.24B model, whose FLOPs per token are ~100x larger.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, few requests, no vLLM (CI)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--precisions", default=None, help="peers' precisions: fp32,bf16 (default: bf16 where "
                                                           "the CPU has it)")
    parser.add_argument("--concurrency", default=None, help="default 1,8 (1,2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ours", choices=["all", "default"], default="all",
                        help="default: only the `make serve` configuration of ours")
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--no-peers", action="store_true", help="ours only (engine experiments)")
    parser.add_argument("--no-host-ceiling", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--reports", default=str(ROOT / "build" / "reports"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from rerank_build.config import RerankerConfig
    from rerank_build.cpu_runtime import bf16_native

    preset = args.preset or ("tiny" if args.quick else "small")
    levels = [int(x) for x in (args.concurrency or ("1,2" if args.quick else "1,8")).split(",")]
    default_precision = "bf16" if bf16_native() else "fp32"
    precisions = args.precisions.split(",") if args.precisions else ["fp32"] + (["bf16"] if bf16_native() else [])
    out = Path(args.reports) / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ckpt, onnx = prepare(preset, args.seed)
    encoder = rp.PairEncoder(rp.load_tokenizer(str(ckpt)))
    workloads = {name: fresh_requests(name, args.seed, WORKLOADS[name][2 if args.quick else 1], levels, encoder,
                                      args.quick) for name in args.workloads.split(",")}
    accuracy = AccuracySet(ckpt, accuracy_requests(args.seed, args.quick))
    logger.info("accuracy set: %s; reference in %.0f s", accuracy.describe(), accuracy.seconds)
    bench = Bench(encoder, RerankerConfig.from_file(ckpt / "config.json"), workloads, accuracy)
    peak = peaks(args.quick)
    logger.info("matmul peak: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s", peak["fp32"] / 1e9, peak["bf16"] / 1e9)
    for label, engine, setting in OURS[:1] if args.ours == "default" else OURS:
        with serving(preset, ckpt, onnx, out, engine, setting) as server:
            bench.ours(server, label, default_precision if setting == "auto" else "fp32")
    if not args.no_peers:
        vllm_python, vllm_reason = (None, "QUICK mode (CI): vLLM needs minutes to install and start") if args.quick \
            else (None, "--no-vllm") if args.no_vllm else ensure_vllm(ROOT / "build" / "venv-vllm")
        view = bidirectional_view(ckpt, ROOT / "build" / "bench" / f"{preset}-bidirectional")
        for precision in precisions:
            if vllm_python is None:
                bench.skip(VLLM, precision, vllm_reason)
                continue
            from rerank_serving.server import free_ports

            bench.peer(lambda: VllmRunner(vllm_python, view, free_ports(1)[0], out / f"vllm-{precision}.log",
                                          precision=precision), VLLM, precision)
        causal = llama_seqcls_view(ckpt, ROOT / "build" / "bench" / f"{preset}-seqcls")
        for precision in precisions:
            # In-process, one batch at a time: more client threads only contend (measured: no gain at 8).
            bench.peer(lambda: CrossEncoderRunner(causal, precision=precision), CROSS_ENCODER, precision,
                       levels=levels[:1])
    lines = report(bench, peak, args, preset, default_precision)
    if not args.no_host_ceiling:
        lines += [f"### Host ceiling: an engine step that costs nothing, {levels[-1]} clients", "",
                  *host_ceiling.HEADER,
                  *host_ceiling.measure(ckpt, onnx, {name: [t.warmup, *t.levels[levels[-1]]]
                                                     for name, t in workloads.items()},
                                        {name: bench.lengths(name) for name in workloads},
                                        ROOT / "build" / "bench" / f"{preset}-null" / "repository", out,
                                        concurrency=levels[-1], min_seconds=3.0 if args.quick else 20.0), ""]
    if not args.no_peers:
        lines += overhead_scenario(out, 6 if args.quick else 30, args.seed)
    lines.append(f"\nThe whole run took {(time.perf_counter() - started) / 60:.0f} minutes.")
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
