"""``--target gpu-onnx``: a GPU repository that needs no engine build (NIM's fallback on GPUs without a
prebuilt engine): the fp16 ONNX export in Triton's ONNX Runtime backend with the CUDA execution
provider (``model_repository/engine_onnxruntime``).

ONNX Runtime does not fuse this graph's attention (only its RMSNorms; docs/cpu_engine.md), so each
execution materialises [rows, heads, width, width] scores (estimated at eight bytes per score, an
upper bound for the fp16 export's three fp16 copies): 16 GiB for one row of 8,192 tokens on the
full model. The batching strategy therefore caps each execution by rows,
by tokens and by that attention memory (``attention_gib``), and one request must fit one execution,
which sets the published tokens per request (8,192 on the full model: clients and the gateway split
larger requests, and the batcher merges short ones back up to 64 rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .config import RerankerConfig
from .profiles import DEFAULT_MAX_TOKENS, Profile, rows_by_width

#: Attention scores one execution may materialise (scores and probabilities of one layer, counted at
#: 4 bytes each: an upper bound, the fp16 export keeps them in fp16).
DEFAULT_ATTENTION_GIB = 16.0
ONNX_DTYPE = "fp16"


def attention_bytes_per_row(config: RerankerConfig, width: int) -> int:
    return 2 * config.num_attention_heads * width * width * 4


def plan_batches(config: RerankerConfig, buckets: Sequence[int], max_batch: int,
                 max_tokens: int = DEFAULT_MAX_TOKENS, attention_gib: float = DEFAULT_ATTENTION_GIB) -> list[Profile]:
    """The largest batch at each bucket (as profiles: ONNX Runtime has none, the strategy reads them):
    rows capped by the batch size, the token budget and the attention memory; at least one row."""
    batches, low = [], 1
    for bucket in sorted(set(buckets)):
        rows = min(max_batch, max_tokens // bucket, int(attention_gib * (1 << 30)) // attention_bytes_per_row(config, bucket))
        rows = max(1, rows)
        batches.append(Profile(min=(1, low), opt=(rows, bucket), max=(rows, bucket)))
        low = bucket + 1
    return batches


def request_tokens(batches: Sequence[Profile], max_rows: int) -> int:
    """Padded tokens per request such that any request fits one execution at any bucket: the smallest
    execution among the buckets where fewer than ``max_rows`` rows fit."""
    capped = [p.max[0] * p.max[1] for p in batches if p.max[0] < max_rows]
    return min(capped) if capped else max_rows * max(p.max[1] for p in batches)


def onnx_gpu_defaults(max_batch: int = 64) -> dict[str, Any]:
    return {"engine_max_batch_size": max_batch, "max_rows": max_batch}


def onnx_gpu_values(config: RerankerConfig, settings: Any, attention_gib: float = DEFAULT_ATTENTION_GIB) -> tuple[
        dict[str, str], list[str]]:
    """Template values and the problems that would make an accepted request fail (as for TensorRT)."""
    from .profiles import check_profiles

    batches = plan_batches(config, settings.served_buckets, settings.engine_max_batch_size,
                           attention_gib=attention_gib)
    problems = check_profiles(batches, settings.served_buckets, settings.max_rows, settings.max_tokens_per_request)
    if problems:
        problems.append(f"with --target gpu-onnx pass --max-tokens-per-request "
                        f"{request_tokens(batches, settings.max_rows)} (one request must "
                        "fit one execution; clients and the gateway split larger ones)")
    return {
        "engine_batch_sizes": ", ".join(str(n) for n in range(1, settings.engine_max_batch_size + 1)),
        "max_tokens_per_execution": str(DEFAULT_MAX_TOKENS),
        "rows_by_width": rows_by_width(batches),
    }, problems


def check_onnx(onnx: Path) -> None:
    """The CUDA EP runs the fp16 export (as TensorRT does): refuse another dtype early."""
    import json

    meta = onnx.with_name("export_meta.json")
    dtype = json.loads(meta.read_text())["dtype"] if meta.is_file() else "unknown"
    if dtype != ONNX_DTYPE:
        raise ValueError(f"--target gpu-onnx serves the fp16 export; {onnx} is {dtype}: run "
                         "`rerank-build export-onnx --dtype fp16` first")
