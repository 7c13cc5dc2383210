"""Run an exported ONNX on the CPU: ONNX Runtime, or OpenVINO (the only one of the two with bf16).

ONNX Runtime's CPU provider has no bf16 kernels, so the bf16 export (the TensorRT bf16 source) runs
in OpenVINO, which reads bf16 weights and, on CPUs with AVX512-BF16 or AMX, computes in bf16 when
asked (``precision="bf16"``: ``INFERENCE_PRECISION_HINT``). Both return ``logits`` [batch, 1] fp32
for int32 ``input_ids`` / ``attention_mask``, the engine step's contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

RUNTIMES = ("onnxruntime", "openvino")
Model = Callable[[np.ndarray, np.ndarray], np.ndarray]


def onnxruntime_model(onnx_path: str | Path, threads: int = 0) -> Model:
    from .export_onnx import ort_session

    session = ort_session(onnx_path, threads)
    return lambda ids, mask: session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def bf16_native() -> bool:
    """AVX512-BF16 or AMX, as OpenVINO sees it (the engine step's test before serving bf16)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_model(onnx_path: str | Path, precision: str = "f32", threads: int = 0) -> Model:
    """OpenVINO on the CPU; ``precision`` is its inference precision hint (``f32`` or ``bf16``)."""
    import openvino as ov

    if precision not in ("f32", "bf16"):
        raise ValueError(f"OpenVINO precision must be f32 or bf16, got {precision!r}")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    compiled = core.compile_model(core.read_model(os.fspath(onnx_path)), "CPU", config)
    output = compiled.output("logits")

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(compiled({"input_ids": ids, "attention_mask": mask})[output], dtype=np.float32)

    return run


def cpu_model(onnx_path: str | Path, runtime: str = "onnxruntime", precision: str = "f32", threads: int = 0) -> Model:
    if runtime == "onnxruntime":
        return onnxruntime_model(onnx_path, threads)
    if runtime == "openvino":
        return openvino_model(onnx_path, precision, threads)
    raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
