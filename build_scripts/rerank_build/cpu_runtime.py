"""Run an exported ONNX on the CPU: ONNX Runtime, or OpenVINO exactly as the CPU engine step runs it.

OpenVINO comes from the engine's own module (``model_repository/engine_cpu/1/openvino_engine.py``, the
file a repository ships), so that parity checks and engine benchmarks measure the served precision:
``f32``, or ``bf16`` (the linear layers in bf16, everything else in fp32, on CPUs with AVX512-BF16 or
AMX). ONNX Runtime's CPU provider has no bf16 kernels; the bf16 export (the TensorRT bf16 source) also
runs in OpenVINO, which reads bf16 weights. Both return ``logits`` [batch, 1] fp32 for int32
``input_ids`` / ``attention_mask``, the engine step's contract.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

RUNTIMES = ("onnxruntime", "openvino")
Model = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: The template ships as package data (rerank_build.templates), so a non-editable install finds it too.
ENGINE_MODULE = Path(str(importlib.resources.files("rerank_build.templates"))) / "engine_cpu" / "1" / "openvino_engine.py"


@cache
def openvino_engine() -> ModuleType:
    """The engine step's OpenVINO module, imported from the repository template."""
    spec = importlib.util.spec_from_file_location("rerank_openvino_engine", ENGINE_MODULE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def onnxruntime_model(onnx_path: str | Path, threads: int = 0) -> Model:
    from .export_onnx import ort_session

    session = ort_session(onnx_path, threads)
    return lambda ids, mask: session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def bf16_native() -> bool:
    """AVX512-BF16 or AMX, as OpenVINO sees it (the engine step's test before serving bf16)."""
    return bool(openvino_engine().cpu_has_bf16())


def openvino_model(onnx_path: str | Path, precision: str = "f32", threads: int = 0) -> Model:
    """OpenVINO on the CPU as the engine step runs it; ``precision`` f32 or bf16 (linear layers)."""
    return openvino_engine().openvino_runner(os.fspath(onnx_path), threads, precision, 0)  # type: ignore[no-any-return]


def cpu_model(onnx_path: str | Path, runtime: str = "onnxruntime", precision: str = "f32", threads: int = 0) -> Model:
    if runtime == "onnxruntime":
        return onnxruntime_model(onnx_path, threads)
    if runtime == "openvino":
        return openvino_model(onnx_path, precision, threads)
    raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
