"""``make bench``: one run, one checkpoint, one workload, one machine, systems side by side.

For every system (our ensemble over gRPC and HTTP, the in-process PyTorch reference, sentence-
transformers' CrossEncoder, vLLM's CPU build where it installs) and concurrency 1 and 8: pairs/s and
p50/p95/p99 per request, padding efficiency (useful / padded tokens fed to the model) and, for ours,
the tokenizer's share of the server's time. Then the overhead scenario: tiny preset, 64 passages of
~110 tokens per request, one client in series, p50 per request, ours vs CrossEncoder in-process.
Writes ``build/reports/bench-<time>/bench.md`` and, unless --no-docs, ``docs/benchmarks.md``.

    python -m loadtests.bench            # small preset (minutes)
    python -m loadtests.bench --quick    # tiny preset, few requests, no vLLM (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rerank_contract import prompt as rp

from .peers import (
    CrossEncoderRunner, OursRunner, Runner, TorchRunner, VllmRunner, ensure_vllm, llama_seqcls_view,
)
from .stepstats import delta, read_stats
from .workload import Request, Workload, WorkloadSpec

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    system: str
    concurrency: int
    requests: int = 0
    pairs: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    useful: int = 0
    padded: int = 0
    tokenizer_share: str = "n/a"
    error: str = ""

    def cells(self) -> str:
        if self.error:
            return f"| {self.system} | {self.concurrency} | skipped: {self.error} | | | | | |"
        p = np.percentile(self.latencies_ms, [50, 95, 99]) if self.latencies_ms else [0, 0, 0]
        eff = self.useful / self.padded if self.padded else 0.0
        return (f"| {self.system} | {self.concurrency} | {self.pairs / self.seconds:.1f} | {p[0]:.0f} | {p[1]:.0f} | "
                f"{p[2]:.0f} | {100 * eff:.0f}% | {self.tokenizer_share} |")


def run(runner: Runner, requests: list[Request], concurrency: int, counts: list[list[int]] | None = None) -> Row:
    row = Row(runner.name, concurrency, requests=len(requests), pairs=sum(r.pairs for r in requests))
    runner.score(requests[0])  # warm-up (not timed)

    def one(request: Request) -> float:
        started = time.perf_counter()
        runner.score(request)
        return (time.perf_counter() - started) * 1e3

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        row.latencies_ms = list(pool.map(one, requests))
    row.seconds = time.perf_counter() - started
    for request, c in zip(requests, counts or []):
        useful, padded = runner.padding(request, c)
        row.useful += useful
        row.padded += padded
    logger.info("%s, concurrency %d: %.1f pairs/s, p50 %.0f ms", runner.name, concurrency,
                row.pairs / row.seconds, float(np.percentile(row.latencies_ms, 50)))
    return row


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
def serving(preset: str, ckpt: Path, onnx: Path, log_dir: Path):
    from rerank_build.repository import RepositorySettings, build_repository
    from rerank_build.server import TritonServer

    repo = build_repository(ckpt, ROOT / "build" / "bench" / preset / "repository", RepositorySettings(),
                            onnx=onnx, reuse=True, force=True)
    with TritonServer(repo, log_path=log_dir / f"tritonserver-{preset}.log") as server:
        yield server


def ours_rows(server, requests, counts, levels) -> list[Row]:
    import tritonclient.grpc as grpcclient

    rows = []
    stats = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for protocol in ("grpc", "http"):
            runner = OursRunner(server.url(protocol), protocol)
            try:
                for level in levels:
                    before = read_stats(stats)
                    row = run(runner, requests, level, counts)
                    steps = delta(read_stats(stats), before)
                    total = sum(s.queue_ns + s.compute_ns for s in steps.values()) or 1
                    tok = steps["tokenizer"]
                    row.tokenizer_share = f"{100 * (tok.queue_ns + tok.compute_ns) / total:.1f}%"
                    rows.append(row)
            finally:
                runner.close()
    finally:
        stats.close()
    return rows


def peer_rows(make, requests, counts, levels, name: str) -> list[Row]:
    try:
        runner = make()
    except Exception as exc:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
        logger.warning("%s skipped: %s", name, exc)
        return [Row(name, levels[0], error=str(exc)[:200])]
    try:
        rows = [run(runner, requests, level, counts) for level in levels]
        if isinstance(runner, TorchRunner):
            share = runner.tokenize_s / max(runner.tokenize_s + runner.model_s, 1e-9)
            for row in rows:
                row.tokenizer_share = f"{100 * share:.1f}%"
        return rows
    finally:
        runner.close()


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
                row = run(runner, requests, 1)
            finally:
                runner.close()
            p = np.percentile(row.latencies_ms, [50, 95])
            lines.append(f"| {runner.name} | {p[0]:.1f} | {p[1]:.1f} |")
    return lines


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) / 1024**2
    import onnxruntime
    import torch

    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, few requests, no vLLM (CI)")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--passages", default=None, help="passages per request mix (default 10,50,100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--reports", default=str(ROOT / "build" / "reports"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    preset = args.preset or ("tiny" if args.quick else "small")
    n = args.requests or (3 if args.quick else 8)
    levels = [int(x) for x in args.concurrency.split(",")]
    if args.quick and args.concurrency == "1,8":
        levels = [1, 2]
    mix = args.passages or ("4,8" if args.quick else "10,50,100")
    spec = WorkloadSpec.parse(args.seed, mix, "1.0:30-300" if args.quick else None)

    out = Path(args.reports) / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    ckpt, onnx = prepare(preset, args.seed)
    requests = Workload(spec).take(n)
    encoder = rp.PairEncoder(rp.load_tokenizer(str(ckpt)))
    counts = [[len(ids) for ids in encoder.encode(r.query, r.passages, "END")] for r in requests]
    useful = sum(sum(c) for c in counts)
    logger.info("%d requests, %d pairs, %d tokens", n, sum(r.pairs for r in requests), useful)

    rows: list[Row] = []
    with serving(preset, ckpt, onnx, out) as server:
        rows += ours_rows(server, requests, counts, levels)
    rows += peer_rows(lambda: TorchRunner(ckpt), requests, counts, levels, "PyTorch reference in-process")
    view = llama_seqcls_view(ckpt, ROOT / "build" / "bench" / f"{preset}-seqcls")
    rows += peer_rows(lambda: CrossEncoderRunner(view), requests, counts, levels, "sentence-transformers CrossEncoder")
    if args.quick or args.no_vllm:
        rows.append(Row("vLLM CPU", levels[0], error="QUICK mode (CI): vLLM needs minutes to install and start"
                        if args.quick else "--no-vllm"))
    else:
        python, reason = ensure_vllm(ROOT / "build" / "venv-vllm")
        if python is None:
            rows.append(Row("vLLM CPU", levels[0], error=reason))
        else:
            from rerank_build.server import free_ports

            rows += peer_rows(lambda: VllmRunner(python, view, free_ports(1)[0], out / "vllm.log"), requests,
                              counts, levels, "vLLM CPU")

    lengths = [x for c in counts for x in c]
    lines = [
        f"## Benchmark ({time.strftime('%Y-%m-%d')}, `python -m loadtests.bench{' --quick' if args.quick else ''}`)",
        "", f"- machine: {machine()}",
        f"- checkpoint: `{preset}` preset (random weights, seed {args.seed}), fp32 everywhere",
        f"- workload: {n} requests, seed {args.seed}, passages per request from {{{mix}}}, {sum(r.pairs for r in requests)}"
        f" pairs, {useful} tokens (pair length p50 {np.percentile(lengths, 50):.0f}, p95 "
        f"{np.percentile(lengths, 95):.0f}, max {max(lengths)}), truncate END",
        "- the same requests for every system and concurrency; the first request warms up and is not timed", "",
        "| system | concurrency | pairs/s | p50 ms | p95 ms | p99 ms | padding efficiency | tokenizer share |",
        "|---|---|---|---|---|---|---|---|",
        *[row.cells() for row in rows],
    ]
    lines += overhead_scenario(out, 6 if args.quick else 30, args.seed)
    lines += ["", "Padding efficiency: useful tokens / padded tokens the system feeds its model. Tokenizer share: "
              "ours from Triton's per-model statistics (tokenizer / all steps), PyTorch from in-process timers.",
              "sentence-transformers and vLLM run the weights as stock LlamaForSequenceClassification (causal, "
              "last-token pooling): same work per token, not the model's scores. vLLM runs with prefix caching "
              "off: every pass repeats the same requests, and its cache would serve them from the first pass."]
    text = "\n".join(lines) + "\n"
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
