"""The metadata file beside every TensorRT engine, and the checks the GPU repository runs on it.

``engine_meta.json`` records what the engine was built from and for: TensorRT version, GPU name,
compute capability and memory, precision, optimization profiles and token budget, buckets, the ONNX
file's hash, and what TensorRT reported about the built engine: device memory per profile
(``get_device_memory_size_for_profile_v2``), the weights' size and the layer information. The
repository assembly reads it to write a consistent ``tensorrt_plan`` config and refuses engines that
cannot serve the requested settings, or whose deployment would not fit the GPU. No TensorRT import
here: all of it is tested on CPU.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine_plan import GIB, RUNTIME_OVERHEAD_BYTES, USABLE_FRACTION
from .profiles import Profile, check_profiles

if TYPE_CHECKING:  # pragma: no cover
    from .repository import RepositorySettings

META_FILE = "engine_meta.json"
#: 2: token budget, device memory and layer information recorded (issue 22).
META_FORMAT = 2
PRECISIONS = ("fp16", "bf16", "fp8")

#: Triton container release -> TensorRT version inside it (NVIDIA's Frameworks Support Matrix).
#: The engine must be built with the TensorRT of the Triton release that serves it.
TRITON_TENSORRT: dict[str, str] = {
    "24.05": "10.0.1", "24.06": "10.1.0", "24.07": "10.2.0", "24.08": "10.3.0", "24.09": "10.4.0",
    "24.10": "10.5.0", "24.11": "10.6.0", "24.12": "10.7.0", "25.01": "10.8.0", "25.02": "10.8.0",
    "25.03": "10.9.0", "25.04": "10.9.0", "25.05": "10.10.0", "25.06": "10.11.0",
}
DEFAULT_TRITON_RELEASE = "25.06"


class EngineMetaError(ValueError):
    """An engine that cannot serve the requested repository settings."""


def meta_path(engine: Path) -> Path:
    return engine.with_name(META_FILE)


def read_meta(engine: str | Path) -> dict[str, Any]:
    engine = Path(engine)
    if not engine.is_file():
        raise EngineMetaError(f"engine {engine} does not exist")
    path = meta_path(engine)
    if not path.is_file():
        raise EngineMetaError(f"{path} is missing: build engines with `rerank-build engine`, which writes it")
    meta = json.loads(path.read_text())
    if meta.get("format") != META_FORMAT:
        raise EngineMetaError(f"{path} has format {meta.get('format')}, expected {META_FORMAT}: rebuild the engine "
                              "with this `rerank-build engine` (format 2 records the device memory the memory check "
                              "needs)")
    missing = {"tensorrt_version", "precision", "profiles", "max_batch_size", "buckets", "max_tokens_per_execution",
               "device_memory"} - set(meta)
    if missing:
        raise EngineMetaError(f"{path} lacks {sorted(missing)}")
    return meta


def tensorrt_release(version: str) -> str:
    """``X.Y.Z`` of a TensorRT version (``tensorrt.__version__`` may print a fourth, build field,
    e.g. 10.11.0.33): what an engine is tied to, and what engine keys and volume paths use."""
    parts = version.strip().split(".")
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        raise EngineMetaError(f"not a TensorRT version: {version!r} (expected X.Y.Z or X.Y.Z.B)")
    return ".".join(parts[:3])


def same_release(a: str, b: str) -> bool:
    """TensorRT engines are tied to major.minor.patch of the TensorRT that built them."""
    return tensorrt_release(a) == tensorrt_release(b)


def serving_tensorrt(triton_release: str | None, explicit: str | None) -> str:
    if explicit:
        return explicit
    release = triton_release or DEFAULT_TRITON_RELEASE
    try:
        return TRITON_TENSORRT[release]
    except KeyError:
        raise EngineMetaError(
            f"unknown Triton release {release!r}: pass --serving-tensorrt X.Y.Z (the TensorRT version inside "
            f"that container); known releases: {', '.join(TRITON_TENSORRT)}"
        ) from None


def gpu_description() -> dict[str, str]:
    """Name, compute capability and memory (MiB) of GPU 0, from nvidia-smi (present wherever the
    driver is)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits", "--id=0"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
        name, cc, memory = (x.strip() for x in out.split(","))
        return {"name": name, "compute_capability": cc, "memory_total_mib": str(int(float(memory)))}
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"name": "unknown", "compute_capability": "unknown", "memory_total_mib": "unknown"}


def engine_key(gpu_name: str, tensorrt_version: str, precision: str) -> str:
    """Where an engine lives on a shared volume: one directory per GPU product, TensorRT release
    (X.Y.Z) and precision (an engine runs only on the GPU model and TensorRT version that built it).
    The engine Job writes here and the Triton pods mount it, so both use this one normalisation."""
    product = re.sub(r"[^A-Za-z0-9.]+", "-", gpu_name).strip("-")
    return f"{product}/trt-{tensorrt_release(tensorrt_version)}/{precision}"


def node_problems(meta: dict[str, Any], gpu: dict[str, str], tensorrt_version: str) -> list[str]:
    """Why an engine built as ``meta`` says cannot run on this node's ``gpu`` under ``tensorrt_version``."""
    built_gpu = meta.get("gpu", {})
    problems = []
    if gpu.get("name") == "unknown":
        problems.append("no GPU is visible here (nvidia-smi found none)")
    elif (built_gpu.get("name"), built_gpu.get("compute_capability")) != (gpu.get("name"), gpu.get("compute_capability")):
        problems.append(f"it was built on {built_gpu.get('name')} (compute capability "
                        f"{built_gpu.get('compute_capability')}) but this node has {gpu.get('name')} (compute "
                        f"capability {gpu.get('compute_capability')})")
    if not same_release(meta["tensorrt_version"], tensorrt_version):
        problems.append(f"it was built with TensorRT {meta['tensorrt_version']} but this container has TensorRT "
                        f"{tensorrt_version}")
    return problems


def check_engine_for_node(repository: str | Path, tensorrt_version: str, gpu: dict[str, str] | None = None) -> str:
    """Refuse (EngineMetaError, naming what differs) a repository whose engine does not match this node;
    returns a one-line description of the engine when it does."""
    engine = Path(repository) / "engine" / "1" / "model.plan"
    meta = read_meta(engine)
    gpu = gpu or gpu_description()
    problems = node_problems(meta, gpu, tensorrt_version)
    if problems:
        key = engine_key(gpu.get("name", "unknown"), tensorrt_version, meta["precision"])
        raise EngineMetaError(f"the engine in {repository} cannot run on this node: " + "; ".join(problems)
                              + f". Build one for this node (the engine Job writes it under {key}, docs/kubernetes.md)")
    return (f"engine OK for this node: {meta['precision']}, {gpu['name']} (compute capability "
            f"{gpu['compute_capability']}), TensorRT {meta['tensorrt_version']}")


def gpu_defaults(engine: str | Path) -> dict[str, Any]:
    """Repository settings that follow from the engine unless the user sets them."""
    meta = read_meta(engine)
    batch = int(meta["max_batch_size"])
    return {
        "engine_max_batch_size": batch,
        "max_rows": batch,
        # A request never holds more tokens than one execution may: then every request fits a profile.
        "max_tokens_per_request": int(meta["max_tokens_per_execution"]),
        "buckets": tuple(meta["buckets"]),
        "max_sequence_length": int(meta.get("max_sequence_length", meta["buckets"][-1])),
        "preferred_batch_sizes": tuple(b for b in (8, 16, 32, 64, 128) if b <= batch) or (batch,),
    }


def deployment_bytes(meta: dict[str, Any], instances_per_gpu: int) -> dict[str, int]:
    """Device memory per instance and per GPU from what the build recorded: the engine's weights (the
    measured load, else the plan's size) plus, per profile, the larger of TensorRT's
    ``get_device_memory_size_for_profile_v2`` and the measured context; per GPU, every instance plus
    the runtime (``engine_plan``'s model of Triton's tensorrt_backend)."""
    memory = meta["device_memory"]
    weights = int(memory.get("weights_bytes") or memory["plan_bytes"])
    measured = memory.get("measured_context_bytes") or []
    contexts = [max(int(size), int(measured[i]) if i < len(measured) and measured[i] else 0)
                for i, size in enumerate(memory["profile_bytes"])]
    per_instance = weights + sum(contexts)
    return {"weights": weights, "contexts": sum(contexts), "per_instance": per_instance,
            "per_gpu": instances_per_gpu * per_instance + RUNTIME_OVERHEAD_BYTES}


def memory_problems(meta: dict[str, Any], instances_per_gpu: int, gpu_memory_gib: float | None = None) -> list[str]:
    """Why this deployment would not fit its GPU, with the numbers; ``gpu_memory_gib`` overrides the
    memory recorded at build."""
    total = gpu_memory_gib
    if total is None:
        recorded = meta.get("gpu", {}).get("memory_total_mib", "unknown")
        if not str(recorded).isdigit():
            return ["the GPU's memory is unknown (the build recorded none): pass --gpu-memory-gib"]
        total = int(recorded) / 1024
    need = deployment_bytes(meta, instances_per_gpu)
    usable = total * USABLE_FRACTION
    if need["per_gpu"] / GIB <= usable:
        return []
    return [f"{instances_per_gpu} engine instance(s) per GPU need {need['per_gpu'] / GIB:.1f} GiB (each "
            f"{need['per_instance'] / GIB:.1f} GiB: weights {need['weights'] / GIB:.1f} + the contexts of "
            f"{len(meta['profiles'])} profiles {need['contexts'] / GIB:.1f}, as recorded in engine_meta.json; plus "
            f"{RUNTIME_OVERHEAD_BYTES / GIB:.0f} GiB for the runtime), more than {usable:.1f} GiB "
            f"({USABLE_FRACTION:.0%} of the GPU's {total:.1f} GiB): use fewer --instances-per-gpu, or rebuild the "
            "engine with a smaller --max-tokens-per-execution"]


def check_engine_for_repository(engine: Path, settings: "RepositorySettings", triton_release: str | None = None,
                                serving_trt: str | None = None, gpu_memory_gib: float | None = None) -> dict[str, Any]:
    """Validate an engine against the repository settings; returns its metadata."""
    meta = read_meta(engine)
    problems = []
    profiles = [Profile.from_dict(p) for p in meta["profiles"]]
    problems += check_profiles(profiles, settings.served_buckets, settings.max_rows, settings.max_tokens_per_request)
    budget = int(meta["max_tokens_per_execution"])
    too_big = [p.max for p in profiles if p.max_tokens > budget]
    if too_big:
        problems.append(f"profiles {too_big} hold more than the engine's {budget} tokens per execution")
    if settings.engine_max_batch_size > int(meta["max_batch_size"]):
        problems.append(f"engine_max_batch_size {settings.engine_max_batch_size} is more than the engine's "
                        f"{meta['max_batch_size']} rows")
    problems += memory_problems(meta, settings.instances_per_gpu, gpu_memory_gib)
    longest = max(p.max[1] for p in profiles) if profiles else 0
    if settings.max_sequence_length > longest:
        problems.append(f"max_sequence_length {settings.max_sequence_length} is longer than any engine profile "
                        f"({longest})")
    wanted = serving_tensorrt(triton_release, serving_trt)
    if not same_release(meta["tensorrt_version"], wanted):
        problems.append(f"the engine was built with TensorRT {meta['tensorrt_version']} but the serving container "
                        f"has TensorRT {wanted}: rebuild it in the matching TensorRT image")
    if problems:
        raise EngineMetaError(f"engine {engine} cannot serve these settings: " + "; ".join(problems))
    return meta
