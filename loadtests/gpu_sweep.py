"""Throughput sweep by sequence length and batch size, for scripts/gpu_check.sh.

Modes (each writes the same markdown table):
- ``reference``: our PyTorch model with random weights at a preset's dimensions (``full`` = the real
  1.24B shape), bf16 on CUDA: what a GPU does without TensorRT;
- ``engine``: a TensorRT plan run directly (no Triton);
- ``endpoint``: a served ensemble over gRPC, one client, passages sized to each length.

    python -m loadtests.gpu_sweep reference --preset full --dtype bf16 --out build/gpu-check/sweep.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
from rerank_contract.ports import DEFAULT as DEFAULT_PORTS

SEQS = (128, 512, 2048)
BATCHES = (1, 8, 32, 128)
MAX_TOKENS = 131072  # skip shapes above this many tokens per batch: the engine's default token budget


def timed(fn: Callable[[], None], warmup: int, iters: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    started = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - started) / iters


def _random_batch(batch: int, seq: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(1000, 120000, size=(batch, seq), dtype=np.int32)
    ids[:, 0] = 128000
    return ids, np.ones_like(ids)


def reference_runner(preset_name: str, dtype: str, device: str) -> tuple[Callable, Callable[[], None]]:
    import torch

    from rerank_build.checkpoint import DTYPES, init_weights
    from rerank_build.config import preset
    from rerank_build.reference import Reranker

    with torch.device(device):
        model = Reranker(preset(preset_name), attn_impl="sdpa")
    init_weights(model, torch.Generator(device=device).manual_seed(0))
    model.eval()
    if dtype != "fp32":
        model.cast(DTYPES[dtype])

    @torch.no_grad()
    def run(ids: np.ndarray, mask: np.ndarray) -> None:
        model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return run, sync


def endpoint_runner(url: str, model: str) -> tuple[Callable, Callable[[], None]]:
    from rerank_client.tensors import build_inputs, build_outputs, protocol_module

    module = protocol_module("grpc")
    client = module.InferenceServerClient(url)
    outputs = build_outputs(module)

    def run(ids: np.ndarray, mask: np.ndarray) -> None:
        # " x" is one token: BOS + template (7 tokens) + passage land just under the length bucket.
        words = max(1, ids.shape[1] - 10)
        passages = ["x" + " x" * (words - 1)] * ids.shape[0]
        client.infer(model, build_inputs(module, "q", passages), outputs=outputs, parameters={"truncate": "END"})

    return run, lambda: None


def sweep(run: Callable, sync: Callable[[], None], seqs=SEQS, batches=BATCHES, warmup: int = 2,
          iters: int = 5) -> list[tuple[int, int, float, float]]:
    """(seq, batch, ms per batch, pairs/s) for every shape up to MAX_TOKENS tokens."""
    rng = np.random.default_rng(0)
    rows = []
    for seq in seqs:
        for batch in batches:
            if batch * seq > MAX_TOKENS:
                continue
            ids, mask = _random_batch(batch, seq, rng)
            seconds = timed(lambda: run(ids, mask), warmup, iters, sync)
            rows.append((seq, batch, seconds * 1e3, batch / seconds))
    return rows


def table(title: str, rows: list[tuple[int, int, float, float]]) -> str:
    lines = [f"### {title}", "", "| seq len | batch | latency ms | pairs/s | tokens/s |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {b} | {ms:.2f} | {pps:,.0f} | {pps * s:,.0f} |" for s, b, ms, pps in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["reference", "engine", "endpoint"])
    parser.add_argument("--preset", default="full")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--engine", help="engine mode: model.plan")
    parser.add_argument("--url", default=f"localhost:{DEFAULT_PORTS.grpc}", help="endpoint mode: gRPC address")
    parser.add_argument("--model", default="nvidia_llama_3_2_nv_rerankqa_1b_v2")
    parser.add_argument("--seqs", default=",".join(map(str, SEQS)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seqs = tuple(int(x) for x in args.seqs.split(","))
    batches = tuple(int(x) for x in args.batches.split(","))
    if args.mode == "reference":
        run, sync = reference_runner(args.preset, args.dtype, args.device)
        title = f"PyTorch reference, {args.preset} dimensions, {args.dtype}, {args.device} (no TensorRT)"
    elif args.mode == "engine":
        from rerank_build.engine_runner import TrtRunner

        runner = TrtRunner(args.engine)
        run, sync = (lambda ids, mask: runner(ids, mask)), (lambda: None)
        title = f"TensorRT engine {args.engine}"
    else:
        run, sync = endpoint_runner(args.url, args.model)
        title = f"Triton ensemble at {args.url} (gRPC, one client)"
    text = table(title, sweep(run, sync, seqs, batches, iters=args.iters))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
