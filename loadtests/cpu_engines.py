"""CPU runtimes for the engine step, on the same ONNX and the same batches, in one run.

ONNX Runtime fp32 (today's default), OpenVINO f32, and OpenVINO bf16 (where the CPU has AVX512-BF16 or
AMX): pairs/s and tokens/s per batch shape (random ids, full masks), and the max abs logit
difference against ONNX Runtime fp32 on the same rows. Runtimes take turns batch by batch so that
drift hits all of them alike.

    python -m loadtests.cpu_engines --onnx build/model_repository/engine/1/model.onnx --label small
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rerank_build.cpu_runtime import cpu_model

SHAPES = ((100, 96), (32, 128), (16, 256), (4, 1024), (2, 2048), (1, 4096))
RUNTIMES = (("ONNX Runtime fp32", "onnxruntime", "f32"), ("OpenVINO f32", "openvino", "f32"),
            ("OpenVINO bf16", "openvino", "bf16"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True)
    p.add_argument("--label", default="small")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    models = {name: cpu_model(args.onnx, runtime, precision) for name, runtime, precision in RUNTIMES}
    lines = [f"## CPU engine runtimes, {args.label} ({args.onnx})", "",
             "| batch x length | runtime | ms per batch | pairs/s | tokens/s | max abs vs ONNX Runtime fp32 |",
             "|---|---|---|---|---|---|"]
    for rows, width in SHAPES:
        ids = rng.integers(1000, 120000, size=(rows, width), dtype=np.int32)
        ids[:, 0] = 128000
        mask = np.ones_like(ids)
        base = None
        seconds = dict.fromkeys(models, 0.0)
        outputs = {}
        for name, model in models.items():
            outputs[name] = model(ids, mask)  # warm-up, and the values compared
        for _ in range(args.iters):
            for name, model in models.items():
                started = time.perf_counter()
                model(ids, mask)
                seconds[name] += (time.perf_counter() - started) / args.iters
        base = outputs["ONNX Runtime fp32"]
        for name in models:
            diff = float(np.abs(outputs[name] - base).max())
            lines.append(f"| {rows} x {width} | {name} | {seconds[name] * 1e3:.0f} | {rows / seconds[name]:.1f} | "
                         f"{rows * width / seconds[name]:,.0f} | {diff:.2e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
