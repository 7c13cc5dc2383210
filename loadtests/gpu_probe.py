"""What a GPU without TensorRT can already tell the TensorRT plan (docs/gpu.md, "What a first GPU
session must check", steps 1-2). PyTorch only; one run of a few minutes on one H100.

Three tables, at the real (``full``) dimensions:
- attention: SDPA with an additive float mask, a bool mask and no mask, at 64 x 512 and 2 x 8,192
  (bf16, grouped-query K/V expanded as the export does), and which SDPA backend each could use. What
  fused attention is worth, and whether a mask keeps PyTorch off its flash kernel, as a guide for
  what TensorRT's fusion should reach;
- projections: FP8 ``torch._scaled_mm`` (e4m3, per-tensor scales) against bf16 ``mm`` for the seven
  linear layers of a decoder layer at M = 32,768 tokens (what FP8 engines can gain at most);
- memory: the peak of one bf16 forward of the reference at 16 x 8,192 and 64 x 2,048 tokens
  (``max_memory_allocated`` above the weights) beside ``engine_plan.activation_bytes``, the estimate
  ``rerank-build engine --plan-only`` plans with. PyTorch keeps more alive than TensorRT, so a
  measured peak below the estimate confirms it as a bound.

    python -m loadtests.gpu_probe --out build/gpu-check/gpu_probe.md
    python -m loadtests.gpu_probe --preset tiny --device cpu --quick   # CI smoke: attention only
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from loadtests.gpu_sweep import timed

logger = logging.getLogger(__name__)

ATTENTION_SHAPES = ((64, 512), (2, 8192))
MEMORY_SHAPES = ((16, 8192), (64, 2048))
FP8_TOKENS = 32768


def projections(config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of a decoder layer's seven linear layers."""
    d, i, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.head_dim
    return {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d), "gate": (d, i), "up": (d, i), "down": (i, d)}


def attention_table(torch: Any, config: Any, device: str, sync: Callable[[], None], quick: bool) -> list[str]:
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    heads, kv_heads, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    lines = ["| rows x tokens | mask | ms per layer | TFLOP/s |", "|---|---|---|---|"]
    for rows, width in ((2, 64), (1, 128)) if quick else ATTENTION_SHAPES:
        q = torch.randn(rows, heads, width, hd, device=device, dtype=dtype)
        k, v = (torch.randn(rows, kv_heads, width, hd, device=device, dtype=dtype).repeat_interleave(heads // kv_heads, 1)
                for _ in range(2))
        keep = torch.ones(rows, 1, 1, width, dtype=torch.bool, device=device)
        keep[0, ..., : width // 8] = False  # left padding on one row, as the tokenizer sends it
        masks = {"float (additive)": torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, float("-inf")),
                 "bool": keep, "none": None}
        flops = 4 * rows * heads * width * width * hd
        for name, mask in masks.items():
            seconds = timed(lambda m=mask: sdpa(q, k, v, attn_mask=m), 1, 1 if quick else 10, sync)
            lines.append(f"| {rows} x {width} | {name} | {seconds * 1e3:.2f} | {flops / seconds / 1e12:.1f} |")
    return lines


def fp8_table(torch: Any, config: Any, device: str, sync: Callable[[], None]) -> list[str]:
    lines = ["| layer | in x out | bf16 mm ms | fp8 _scaled_mm ms | speed-up |", "|---|---|---|---|---|"]
    a16 = torch.randn(FP8_TOKENS, config.intermediate_size, device=device, dtype=torch.bfloat16)
    one = torch.ones((), device=device, dtype=torch.float32)
    for name, (fan_in, fan_out) in projections(config).items():
        x = a16[:, :fan_in].contiguous()
        w = torch.randn(fan_out, fan_in, device=device, dtype=torch.bfloat16) / fan_in**0.5
        x8, w8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        bf16 = timed(lambda: x @ w.t(), 2, 10, sync)
        fp8 = timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16), 2, 10, sync)
        lines.append(f"| {name} | {fan_in} x {fan_out} | {bf16 * 1e3:.2f} | {fp8 * 1e3:.2f} | {bf16 / fp8:.2f}x |")
    return lines


def memory_table(torch: Any, model: Any, config: Any, device: str) -> list[str]:
    from rerank_build.engine_plan import activation_bytes

    gib = 2**30
    lines = ["| rows x tokens | peak above weights (GiB) | plan's estimate (GiB) | measured / estimate |", "|---|---|---|---|"]
    for rows, width in MEMORY_SHAPES:
        ids = torch.randint(1000, 120000, (rows, width), device=device, dtype=torch.int32)
        mask = torch.ones_like(ids)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            model(ids, mask)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        estimate = activation_bytes(config, rows, width)
        lines.append(f"| {rows} x {width} | {peak / gib:.2f} | {estimate / gib:.2f} | {peak / estimate:.2f} |")
        del ids, mask
        torch.cuda.empty_cache()
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch

    from rerank_build.checkpoint import load_reranker, write_random_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes, attention only (CI smoke on a CPU)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(args.preset, Path(tmp) / args.preset, seed=0)
        model = load_reranker(ckpt, dtype="bf16" if cuda else "fp32", device=args.device, attn_impl="sdpa")
        config = model.config
        lines = [f"## PyTorch probe on {name}: {args.preset} preset, torch {torch.__version__}", "",
                 "### Attention (SDPA, one layer)", "", *attention_table(torch, config, args.device, sync, args.quick)]
        if cuda and torch.cuda.get_device_capability() >= (8, 9):
            lines += ["", f"### Projections at M = {FP8_TOKENS:,} tokens", "", *fp8_table(torch, config, args.device, sync)]
        else:
            lines += ["", "### Projections: skipped (FP8 matmuls need a CUDA GPU of compute capability 8.9 or later)"]
        if cuda:
            lines += ["", "### Memory of one bf16 forward", "", *memory_table(torch, model, config, args.device)]
        else:
            lines += ["", "### Memory: skipped (needs CUDA's allocator statistics)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
