"""``rerank-build engine --plan-only``: the engine's profiles and the GPU memory of its deployment,
read without TensorRT, a GPU or the weights.

How Triton 25.06 spends a GPU's memory on this engine (tensorrt_backend r25.06, read from source):
- **Weights once per instance.** ``ModelState::CreateEngine`` shares a deserialized engine between
  the instances on one GPU only when no input has a dynamic shape; ours are dynamic, so every
  instance deserializes its own copy.
- **One execution context per listed profile, per instance** (``InitOptimizationProfiles``). With
  the backend's default ``STATIC`` allocation each context reserves the largest profile's memory; the
  repository sets ``execution_context_allocation_strategy: ON_PROFILE_CHANGE``, so each context holds
  only its own profile's (it is created on profile 0, the smallest, then switched to its own).
- Per GPU, once: the CUDA context, TensorRT's and cuBLAS's handles and Triton's CUDA memory pool.

So per instance = weights + sum over profiles of (activations + the tactics' scratch, at most the
builder's workspace), and per GPU = instances x that + the runtime. This module estimates those
numbers from the model's dimensions; a build records TensorRT's own (``engine_meta.json``), and
``rerank-build repository --target gpu`` checks the recorded ones against the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .config import RerankerConfig, preset
from .profiles import DEFAULT_MAX_TOKENS, Profile, plan_profiles, rows_by_width

GIB = 1 << 30
#: What each GPU needs besides the engines: CUDA context, TensorRT runtime, cuBLAS/cuDNN handles,
#: Triton's CUDA memory pool (64 MiB by default). An allowance, not a measurement (docs/gpu.md lists
#: it among what a first GPU session measures).
RUNTIME_OVERHEAD_BYTES = GIB
#: The share of a GPU's memory a deployment may plan for; the rest is headroom for fragmentation,
#: allocations outside TensorRT and the estimate's error. An 80 GB H100 (79.2 GiB) gives 71.3 GiB.
USABLE_FRACTION = 0.9
#: The builder's workspace (tactic scratch) limit; every context may use up to this much.
DEFAULT_WORKSPACE_GIB = 1.0
CONTEXT_ALLOCATION_STRATEGY = "ON_PROFILE_CHANGE"


def weight_bytes(config: RerankerConfig, precision: str) -> int:
    """Bytes of weights in the engine. fp8 stores the seven linear projections of each layer in one
    byte per weight (plus a scale); the embedding table, norms and head stay 16-bit."""
    h, q = config.hidden_size, config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    linear = config.num_hidden_layers * (2 * h * q + 2 * h * kv + 3 * h * config.intermediate_size)
    rest = config.num_parameters() - linear
    return linear * (1 if precision == "fp8" else 2) + rest * 2


def activation_bytes(config: RerankerConfig, rows: int, width: int) -> int:
    """Peak activation memory of one execution of ``rows x width`` tokens with fused attention.

    The peak of a decoder layer is its MLP: the residual stream, the normed input and the block's
    output ([tokens, hidden] each) live beside gate, up and their gated product ([tokens,
    intermediate] each), all 16-bit. fp8 counts the same: its one-byte GEMM inputs replace 16-bit
    ones where TensorRT fuses the quantization into the producing kernel. Fused attention
    keeps the [rows, heads, width, width] scores on chip; what it keeps in memory is per row and head
    (softmax statistics, fp32). An upper bound of what TensorRT's memory planner needs, not a
    measurement: the build records TensorRT's own number.
    """
    tokens = rows * width
    h, i = config.hidden_size, config.intermediate_size
    per_token = 2 * (3 * h + 3 * i)
    return tokens * per_token + rows * config.num_attention_heads * width * 4 * 2


def unfused_scores_bytes(config: RerankerConfig, rows: int, width: int) -> int:
    """What attention would add if TensorRT did NOT fuse it: 16-bit scores and probabilities of one
    layer, [rows, heads, width, width] each. Reported so the layer information of a build can be read
    against it; 16 x 8,192 needs over 128 GiB, so the long profiles only run fused."""
    return 2 * rows * config.num_attention_heads * width * width * 2


def model_config(onnx: str | Path | None = None, preset_name: str | None = None) -> tuple[RerankerConfig, str]:
    """The model's dimensions, from the ``config.json`` that ``export-onnx`` writes beside the ONNX
    (no weights are read), or from a preset."""
    if onnx is not None:
        path = Path(onnx)
        if not path.with_name("config.json").is_file():
            raise FileNotFoundError(f"{path.with_name('config.json')} is missing: plan from an ONNX written by "
                                    "`rerank-build export-onnx`, or use --preset")
        return RerankerConfig.from_file(path.with_name("config.json")), str(path)
    return preset(preset_name or "full"), f"preset {preset_name or 'full'}"


def memory_plan(config: RerankerConfig, precision: str, profiles: Sequence[Profile], instances_per_gpu: int = 1,
                workspace_gib: float = DEFAULT_WORKSPACE_GIB) -> dict[str, Any]:
    """Estimated device memory of the deployment, in GiB (see the module docstring for the model)."""
    weights = weight_bytes(config, precision)
    workspace = int(workspace_gib * GIB)
    contexts = [activation_bytes(config, p.max[0], p.max[1]) + workspace for p in profiles]
    per_instance = weights + sum(contexts)
    per_gpu = instances_per_gpu * per_instance + RUNTIME_OVERHEAD_BYTES

    def gib(n: float) -> float:
        return round(n / GIB, 2)

    return {
        "per_instance": gib(per_instance),
        "per_gpu": gib(per_gpu),
        "instances_per_gpu": instances_per_gpu,
        "weights": gib(weights),
        "contexts": [gib(c) for c in contexts],
        "workspace_per_context": gib(workspace),
        "runtime_per_gpu": gib(RUNTIME_OVERHEAD_BYTES),
        "unfused_attention_scores": [gib(unfused_scores_bytes(config, p.max[0], p.max[1])) for p in profiles],
    }


def engine_plan(config: RerankerConfig, source: str, precision: str, buckets: Sequence[int], max_batch: int,
                max_tokens: int = DEFAULT_MAX_TOKENS, opt_tokens: int = 16384, per_profile: int = 2,
                workspace_gib: float = DEFAULT_WORKSPACE_GIB, instances_per_gpu: int = 1) -> dict[str, Any]:
    """The ``--plan-only`` report: what ``rerank-build engine`` would build with these options."""
    profiles = plan_profiles(buckets, max_batch, max_tokens, opt_tokens, per_profile)
    return {
        "model": {"source": source, "parameters": config.num_parameters(), "precision": precision},
        "profiles": [p.to_dict() for p in profiles],
        "max_batch_size": max_batch,
        "max_tokens_per_execution": max_tokens,
        "rows_by_width": rows_by_width(profiles),
        "context_allocation_strategy": CONTEXT_ALLOCATION_STRATEGY,
        "device_memory_gib": memory_plan(config, precision, profiles, instances_per_gpu, workspace_gib),
        "assumes": "weights once per instance (dynamic shapes: tensorrt_backend shares no engine); one context "
                   "per profile per instance, each holding its own profile (ON_PROFILE_CHANGE); fused attention; "
                   "each context's scratch at most the workspace; per GPU 1 GiB for CUDA, TensorRT and Triton",
    }
