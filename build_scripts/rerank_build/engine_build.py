"""``rerank-build engine``: a TensorRT engine from the exported ONNX, with planned profiles.

Real code against the TensorRT Python API (10.x), imported lazily: it runs inside NVIDIA's TensorRT
container on a GPU host (TensorRT cannot be installed on our CPU machines or in CI). Precision comes
from the ONNX for strongly typed networks (TensorRT 10; mandatory from 10.12 and in 11): export fp16
or bf16 ONNX, whose RMSNorm, pooling and head are already fp32 (attention's scale, mask add and softmax
stay in the matmul dtype, the form TensorRT fuses). ``fp8`` first quantizes the
fp16 ONNX with :mod:`rerank_build.quantize` (FP8 Q/DQ on the linear layers only, calibrated on seeded
text; the same graph whose accuracy ONNX Runtime measures on CPU).
Profiles are planned from the buckets and a token budget per execution (:mod:`rerank_build.profiles`);
``--plan-only`` prints them and the deployment's memory estimate without TensorRT
(:mod:`rerank_build.engine_plan`). Every build writes ``model.plan`` and ``engine_meta.json`` (with
TensorRT's device memory per profile, the weights' size and the layer information of a DETAILED
build, measured on the build GPU) and reuses a persistent timing cache, refusing a foreign one.
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
from .engine_plan import DEFAULT_WORKSPACE_GIB
from .profiles import DEFAULT_MAX_TOKENS, INPUT_NAMES, Profile, plan_profiles
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
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | Path | None = None,
    seed: int = 0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Path:
    """Build ``out_dir/model.plan`` (+ ``engine_meta.json``); returns the plan's path."""
    onnx_path, out = Path(onnx_path), Path(out_dir)
    check_inputs(onnx_path, precision)
    profiles = plan_profiles(buckets, max_batch, max_tokens, opt_tokens, buckets_per_profile)
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
    # Layer names, types, tactics and formats in the engine inspector's output (engine_meta.json).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    cache_path = Path(timing_cache) if timing_cache else out / "timing.cache"
    cache = attach_timing_cache(config, cache_path)  # must outlive the build
    monitor = progress_monitor()  # must outlive the build
    config.progress_monitor = monitor
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            trt_profile.set_shape(name, trt.Dims(list(profile.min)), trt.Dims(list(profile.opt)),
                                  trt.Dims(list(profile.max)))
        config.add_optimization_profile(trt_profile)

    logger.info("building %s engine with %d profiles (max batch %d, %d tokens per execution, buckets %s)", precision,
                len(profiles), max_batch, max_tokens, list(buckets))
    built = builder.build_serialized_network(network, config)
    del monitor
    if built is None:
        raise EngineBuildError("TensorRT failed to build the engine (see the messages above)")
    serialized = bytes(built)
    plan = out / PLAN_FILE
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - started
    del built, cache, config, parser, network, builder  # free the builder's memory before measuring the engine's
    record = inspect_engine(serialized, len(profiles), int(workspace_gib * (1 << 30)))
    meta = engine_metadata(trt.__version__, precision, profiles, buckets, max_batch, onnx_path, seconds, cache_path,
                           max_tokens=max_tokens, record=record)
    # The plan appears last, and whole: a failed or killed build never leaves one a server could load.
    write_atomically(out / META_FILE, json.dumps(meta, indent=2).encode())
    write_atomically(plan, serialized)
    logger.info("wrote %s (%.1f MB) in %.0fs", plan, plan.stat().st_size / 1e6, meta["build_seconds"])
    return plan


def attach_timing_cache(config: "trt.IBuilderConfig", cache_path: Path) -> "trt.ITimingCache":
    """Attach the persistent timing cache at ``cache_path`` (a new one if absent) to the builder config.

    ``set_timing_cache`` returns False for a cache written on another GPU or by another TensorRT (with
    ``ignore_mismatch=False``): refuse it here, loudly, before minutes of building, instead of
    building without it (or crashing later) as an ignored return value would."""
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except (RuntimeError, TypeError, ValueError) as exc:  # pybind11's translations of TensorRT's refusal
        cache = None
        reason = f": {exc}"
    else:
        reason = ""
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError(
            f"TensorRT refused the timing cache {cache_path}{reason}: it was written by another TensorRT version or "
            "on another GPU. Delete it (the build then starts a new one) or pass --timing-cache with a path of its own "
            "per GPU product and TensorRT version"
        )
    return cache


def inspect_engine(serialized: bytes, num_profiles: int, workspace_bytes: int) -> dict[str, Any]:
    """What the built engine needs on this GPU: TensorRT's device memory per profile
    (``get_device_memory_size_for_profile_v2``) and, measured with ``cudaMemGetInfo``, the engine's own
    load (weights and kernels) and each context created as Triton creates them (ON_PROFILE_CHANGE, one
    per profile, all alive together); plus the layer information (a DETAILED build's inspector, JSON)."""
    import tensorrt as trt

    from .cudart import CudaRuntime

    cuda = CudaRuntime()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda.synchronize()
    free_before, _ = cuda.mem_get_info()
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise EngineBuildError("TensorRT could not load the engine it just built (see the messages above)")
    cuda.synchronize()
    free_loaded, _ = cuda.mem_get_info()
    stream = cuda.stream_create()
    contexts, measured = [], []
    for index in range(num_profiles):
        before, _ = cuda.mem_get_info()
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE)
        if context is None:
            raise EngineBuildError(f"TensorRT could not create an execution context for profile {index}")
        if index and not context.set_optimization_profile_async(index, stream):
            raise EngineBuildError(f"TensorRT could not select profile {index} in a new execution context")
        cuda.stream_synchronize(stream)
        after, _ = cuda.mem_get_info()
        measured.append(before - after)
        contexts.append(context)
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    record = {
        "device_memory": {
            "plan_bytes": len(serialized),
            "weights_bytes": free_before - free_loaded,
            "profile_bytes": [engine.get_device_memory_size_for_profile_v2(i) for i in range(num_profiles)],
            "engine_device_memory_size_v2": engine.device_memory_size_v2,
            "measured_context_bytes": measured,
            "workspace_bytes": workspace_bytes,
            "allocation_strategy": "ON_PROFILE_CHANGE",
        },
        "layers": layers,
    }
    del inspector, contexts, engine
    return record


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def engine_metadata(trt_version: str, precision: str, profiles: Sequence[Profile], buckets: Sequence[int],
                    max_batch: int, onnx_path: Path, seconds: float, cache_path: Path, *,
                    max_tokens: int = DEFAULT_MAX_TOKENS, record: dict[str, Any]) -> dict[str, Any]:
    """``engine_meta.json``; ``record`` is :func:`inspect_engine`'s (device memory, layers)."""
    layers = record.get("layers") or {}
    layer_types: dict[str, int] = {}
    for layer in layers.get("Layers", []) if isinstance(layers, dict) else []:
        kind = str(layer.get("LayerType", "unknown")) if isinstance(layer, dict) else "unknown"
        layer_types[kind] = layer_types.get(kind, 0) + 1
    return {
        "format": META_FORMAT,
        "tensorrt_version": trt_version,
        "gpu": gpu_description(),
        "precision": precision,
        "strongly_typed": True,
        "profiles": [p.to_dict() for p in profiles],
        "max_batch_size": max_batch,
        "max_tokens_per_execution": max_tokens,
        "buckets": sorted(set(buckets)),
        "max_sequence_length": max(buckets),
        "inputs": {name: "int32 [batch, seq]" for name in INPUT_NAMES},
        "outputs": {"logits": "float32 [batch, 1]"},
        "onnx": {"path": os.fspath(onnx_path), "sha256": sha256(onnx_path), "dtype": onnx_dtype(onnx_path)},
        "timing_cache": os.fspath(cache_path),
        "build_seconds": round(seconds, 1),
        "device_memory": record["device_memory"],
        "layer_types": layer_types,
        "layers": layers,
    }
