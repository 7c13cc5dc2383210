"""The number a TensorRT engine will be held to: our PyTorch reference in bf16 on one GPU.

One table (scripts/gpu_check.sh appends it to its report):
- pairs/s for one request of 64 passages of 512 tokens;
- tokens/s at 128, 512, 2,048 and 8,192 tokens per pair (batches of about 16k tokens);
- the model FLOPs utilisation each implies: model FLOPs (2 per weight per token for every matmul,
  plus attention's 4 x layers x width x length^2 per row) per second, against the GPU's bf16 dense
  peak from its datasheet where the name is known, and against a bf16 matmul measured in the same run;
- parity of bf16 on the device against the fp32 reference on the CPU, same random weights (the
  fixed multilingual cases; max abs logit difference and rankings, parity's rules).

    python -m loadtests.gpu_reference --preset full --device cuda --out build/gpu-check/gpu_check.md
    python -m loadtests.gpu_reference --preset tiny --device cpu --quick     # CI smoke (no GPU)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loadtests.gpu_sweep import timed

#: Dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets (no sparsity).
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
SEQS = (128, 512, 2048, 8192)
TOKENS_PER_BATCH = 16384


def datasheet_peak(device_name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


def model_flops(config: Any, rows: int, seq: int) -> float:
    """Forward FLOPs: every matmul weight twice per token, and attention's two seq x seq products."""
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size  # q, o, k, v, gate, up, down
    linear = 2 * (layers * per_layer + d) * rows * seq
    attention = 4 * layers * config.num_attention_heads * config.head_dim * seq * seq * rows
    return float(linear + attention)


def measured_peak(torch: Any, device: str, dtype: Any, sync: Callable[[], None], n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, 1, 10, sync)


def main(argv: list[str] | None = None) -> int:
    import torch

    from rerank_build.checkpoint import DTYPES, load_reranker, write_random_checkpoint
    from rerank_build.parity import TOLERANCES, default_cases, reference_scorer, run_parity
    from rerank_contract.prompt import left_pad

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--quick", action="store_true", help="short sequences, one iteration (CI smoke on CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device, quick = args.device, args.quick
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    iters = 1 if quick else 5
    seqs = (128, 512) if quick else SEQS

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ckpt = write_random_checkpoint(args.preset, Path(tmp) / args.preset, seed=0)
        setup_s = time.perf_counter() - started
        model = load_reranker(ckpt, dtype=args.dtype, device=device, attn_impl="sdpa")
        config = model.config
        rng = np.random.default_rng(0)

        @torch.no_grad()
        def forward(rows: int, seq: int) -> Callable[[], Any]:
            ids = torch.from_numpy(rng.integers(1000, 120000, size=(rows, seq), dtype=np.int32)).to(device)
            ids[:, 0] = 128000
            mask = torch.ones_like(ids)
            return lambda: model(ids, mask)

        peak_dtype = DTYPES[args.dtype]
        measured = measured_peak(torch, device, peak_dtype, sync, 1024 if quick else 8192)
        sheet = datasheet_peak(name)
        lines = [f"## PyTorch reference on {name}: {args.preset} preset ({config.num_parameters() / 1e9:.2f}B "
                 f"parameters, random weights), {args.dtype}, SDPA attention", "",
                 f"{args.dtype} matmul measured in this run: {measured / 1e12:.2f} TFLOP/s; datasheet bf16 dense "
                 "peak: " + (f"{sheet / 1e12:.0f} TFLOP/s" if sheet else "unknown for this device"), "",
                 "| workload | batch | latency ms | pairs/s | tokens/s | TFLOP/s | MFU (datasheet) | MFU (measured matmul) |",
                 "|---|---|---|---|---|---|---|---|"]

        def row(label: str, rows: int, seq: int) -> None:
            seconds = timed(forward(rows, seq), 1, iters, sync)
            flops = model_flops(config, rows, seq) / seconds
            mfu = f"{flops / sheet:.1%}" if sheet else "-"
            lines.append(f"| {label} | {rows} | {seconds * 1e3:.1f} | {rows / seconds:,.1f} | "
                         f"{rows * seq / seconds:,.0f} | {flops / 1e12:.2f} | {mfu} | {flops / measured:.1%} |")

        request_seq = 128 if quick else 512
        row(f"1 request x 64 passages x {request_seq} tokens", 64, request_seq)
        for seq in seqs:
            row(f"{seq} tokens per pair", max(1, TOKENS_PER_BATCH // seq) if not quick else 2, seq)

        # Parity: the same weights in fp32 on the CPU (the reference) against this device and dtype.
        device_model = model

        def device_scorer(query: str, passages: list[str], rows: list[list[int]]):
            with torch.no_grad():
                batch = left_pad(rows)
                out = device_model(torch.from_numpy(batch.input_ids).to(device),
                                   torch.from_numpy(batch.attention_mask).to(device))
            return out[:, 0].float().cpu().numpy().astype(np.float32), None

        cases = default_cases(0, 0)[: 4 if quick else 13]
        parity_started = time.perf_counter()
        report = run_parity(ckpt, reference_scorer(ckpt), device_scorer, TOLERANCES[args.dtype], cases)
        lines += ["", f"Parity, {args.dtype} on {device} (batched, left-padded) against fp32 on the CPU (each pair "
                  f"alone), {len(cases)} fixed multilingual queries: {report.lines()[-1].removeprefix('overall: ')}",
                  f"(setup {setup_s:.0f} s, parity {time.perf_counter() - parity_started:.0f} s)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
