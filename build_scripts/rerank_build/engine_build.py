"""``rerank-build engine``: a TensorRT engine from the exported ONNX, with planned profiles.

Real code against the TensorRT Python API (10.x), imported lazily: it runs inside NVIDIA's TensorRT
container on a GPU host (TensorRT cannot be installed on our CPU machines or in CI). Precision comes
from the ONNX for strongly typed networks (TensorRT 10; mandatory from 10.12 and in 11): export fp16
or bf16 ONNX, whose RMSNorm, softmax, pooling and head are already fp32. ``fp8`` first quantizes the
fp16 ONNX with :mod:`rerank_build.quantize` (FP8 Q/DQ on the linear layers only, calibrated on seeded
text; the same graph whose accuracy ONNX Runtime measures on CPU).
Every build writes ``model.plan``, ``engine_meta.json`` and reuses a persistent timing cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

from rerank_contract.prompt import DEFAULT_BUCKETS

from .engine_meta import META_FILE, META_FORMAT, PRECISIONS, gpu_description
from .profiles import INPUT_NAMES, Profile, plan_profiles
from .quantize import calibration_feeds, quantize_fp8

if TYPE_CHECKING:  # pragma: no cover - the stubs (tensorrt-stubs, pinned) give mypy the API
    import tensorrt as trt

logger = logging.getLogger(__name__)

#: ONNX dtype each precision is built from.
ONNX_DTYPE_FOR = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp16"}
PLAN_FILE = "model.plan"


class EngineBuildError(RuntimeError):
    """The engine cannot be built here or from these inputs."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a clear error where it cannot be had. Callers then ``import
    tensorrt as trt`` themselves, so that mypy checks their calls against the pinned stubs."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineBuildError(
            "TensorRT's Python package is not available: build engines inside NVIDIA's TensorRT container "
            "(nvcr.io/nvidia/tensorrt:<yy.mm>-py3, same release as the Triton image that serves them); "
            "see docs/gpu.md"
        ) from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise EngineBuildError(f"TensorRT {trt.__version__} is too old: 10.0 or newer is required")
    return trt


def onnx_dtype(onnx_path: Path) -> str:
    meta = onnx_path.with_name("export_meta.json")
    if not meta.is_file():
        raise EngineBuildError(f"{meta} is missing: export the ONNX with `rerank-build export-onnx`")
    return json.loads(meta.read_text())["dtype"]


def check_inputs(onnx_path: Path, precision: str) -> None:
    """Strongly typed builds take their precision from the ONNX: refuse a mismatch early."""
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not onnx_path.is_file():
        raise EngineBuildError(f"ONNX file {onnx_path} does not exist")
    have, need = onnx_dtype(onnx_path), ONNX_DTYPE_FOR[precision]
    if have != need:
        raise EngineBuildError(
            f"--precision {precision} builds from a {need} ONNX but {onnx_path} is {have}: run "
            f"`rerank-build export-onnx --dtype {need}` first"
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def progress_monitor() -> "trt.IProgressMonitor":
    """A ``trt.IProgressMonitor`` showing each top-level builder phase as a tqdm bar."""
    import tensorrt as trt
    from tqdm import tqdm

    class TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.bars:
                self.bars[phase_name].update(1)
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            if phase_name in self.bars:
                self.bars.pop(phase_name).close()

    return TqdmMonitor()


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    precision: str = "fp16",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    max_batch: int = 64,
    opt_tokens: int = 16384,
    buckets_per_profile: int = 2,
    workspace_gib: float = 8.0,
    timing_cache: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Build ``out_dir/model.plan`` (+ ``engine_meta.json``); returns the plan's path."""
    onnx_path, out = Path(onnx_path), Path(out_dir)
    check_inputs(onnx_path, precision)
    profiles = plan_profiles(buckets, max_batch, opt_tokens, buckets_per_profile)
    import_tensorrt()
    import tensorrt as trt

    out.mkdir(parents=True, exist_ok=True)
    source = (quantize_fp8(onnx_path, out / "fp8", calibration_feeds(onnx_path.parent, seed=seed))
              if precision == "fp8" else onnx_path)
    started = time.perf_counter()

    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(source)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {source}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache_path = Path(timing_cache) if timing_cache else out / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = progress_monitor()  # must outlive the build
    config.progress_monitor = monitor
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            trt_profile.set_shape(name, trt.Dims(list(profile.min)), trt.Dims(list(profile.opt)),
                                  trt.Dims(list(profile.max)))
        config.add_optimization_profile(trt_profile)

    logger.info("building %s engine with %d profiles (max batch %d, buckets %s)", precision, len(profiles),
                max_batch, list(buckets))
    serialized = builder.build_serialized_network(network, config)
    del monitor
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine (see the messages above)")
    plan = out / PLAN_FILE
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = engine_metadata(trt.__version__, precision, profiles, buckets, max_batch, onnx_path,
                           time.perf_counter() - started, cache_path)
    # The plan appears last, and whole: a failed or killed build never leaves one a server could load.
    write_atomically(out / META_FILE, json.dumps(meta, indent=2).encode())
    write_atomically(plan, bytes(serialized))
    logger.info("wrote %s (%.1f MB) in %.0fs", plan, plan.stat().st_size / 1e6, meta["build_seconds"])
    return plan


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def engine_metadata(trt_version: str, precision: str, profiles: Sequence[Profile], buckets: Sequence[int],
                    max_batch: int, onnx_path: Path, seconds: float, cache_path: Path) -> dict[str, Any]:
    return {
        "format": META_FORMAT,
        "tensorrt_version": trt_version,
        "gpu": gpu_description(),
        "precision": precision,
        "strongly_typed": True,
        "profiles": [p.to_dict() for p in profiles],
        "max_batch_size": max_batch,
        "buckets": sorted(set(buckets)),
        "max_sequence_length": max(buckets),
        "inputs": {name: "int32 [batch, seq]" for name in INPUT_NAMES},
        "outputs": {"logits": "float32 [batch, 1]"},
        "onnx": {"path": os.fspath(onnx_path), "sha256": sha256(onnx_path), "dtype": onnx_dtype(onnx_path)},
        "timing_cache": os.fspath(cache_path),
        "build_seconds": round(seconds, 1),
    }
