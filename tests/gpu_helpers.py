"""A stand-in for what `rerank-build engine` writes, for the GPU tests that need no GPU: the plan file
is a placeholder (nothing here loads it) and engine_meta.json is the real metadata of a build, with the
device memory TensorRT would report replaced by the plan's estimate for the model's size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rerank_build.config import RerankerConfig, preset
from rerank_build.engine_build import engine_metadata
from rerank_build.engine_plan import GIB, activation_bytes, weight_bytes
from rerank_build.profiles import DEFAULT_MAX_TOKENS, plan_profiles
from rerank_contract.prompt import DEFAULT_BUCKETS

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_total_mib": "81559"}
L40S = {"name": "NVIDIA L40S", "compute_capability": "8.9", "memory_total_mib": "46068"}


def estimated_record(config: RerankerConfig, precision: str, profiles, workspace_gib: float = 1.0) -> dict:
    """inspect_engine's record as the plan estimates it (a real build measures these)."""
    workspace = int(workspace_gib * GIB)
    weights = weight_bytes(config, precision)
    return {
        "device_memory": {
            "plan_bytes": weights,
            "weights_bytes": weights,
            "profile_bytes": [activation_bytes(config, p.max[0], p.max[1]) + workspace for p in profiles],
            "measured_context_bytes": [],
            "workspace_bytes": workspace,
            "allocation_strategy": "ON_PROFILE_CHANGE",
        },
        "layers": {"Layers": [{"Name": "stand-in", "LayerType": "Myelin"}]},
    }


def fake_engine(directory: Path, trt_version: str = "10.11.0.33", max_batch: int = 64,
                buckets: Sequence[int] = DEFAULT_BUCKETS, onnx: Path | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                preset_name: str = "full", precision: str = "fp16", gpu: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / "model.plan"
    plan.write_bytes(b"not a real engine: config tests only")
    profiles = plan_profiles(buckets, max_batch, max_tokens)
    onnx = onnx or directory / "model.onnx"
    if not onnx.exists():
        onnx.write_bytes(b"onnx")
        (directory / "export_meta.json").write_text(json.dumps({"dtype": "fp16"}))
    record = estimated_record(preset(preset_name), precision, profiles)
    meta = engine_metadata(trt_version, precision, profiles, buckets, max_batch, onnx, 1.0, directory / "timing.cache",
                           max_tokens=max_tokens, record=record)
    meta["gpu"] = dict(gpu or H100)
    (directory / "engine_meta.json").write_text(json.dumps(meta))
    return plan
