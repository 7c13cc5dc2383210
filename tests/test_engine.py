"""TensorRT engine tooling, tested as far as a CPU allows: profile planning, metadata validation,
GPU repository configs for 1, 2 and 4 GPUs, CLI errors. Building needs TensorRT and a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_build.engine_build import EngineBuildError, check_inputs
from rerank_build.engine_meta import (
    TRITON_TENSORRT, EngineMetaError, check_engine_for_repository, gpu_defaults, read_meta,
)
from rerank_build.profiles import check_profiles, plan_profiles, rows_by_width
from rerank_build.repository import RepositorySettings, build_repository, parse_config
from rerank_contract.prompt import DEFAULT_BUCKETS

from gpu_helpers import H100, L40S, fake_engine

CLI = str(Path(sys.executable).with_name("rerank-build"))
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_profiles_follow_the_token_budget():
    """The full batch where the budget allows it; past that, rows x width never exceeds the budget."""
    profiles = plan_profiles(DEFAULT_BUCKETS, max_batch=64, max_tokens=131072, opt_tokens=16384)
    assert [p.max for p in profiles] == [(64, 128), (64, 512), (64, 2048), (32, 4096), (16, 8192)]
    assert [p.min[1] for p in profiles] == [1, 129, 513, 2049, 4097]
    assert all(p.min[0] == 1 and p.max_tokens <= 131072 for p in profiles)
    assert [p.opt[0] for p in profiles] == [64, 32, 8, 4, 2]  # short: large batches, long: small ones
    assert rows_by_width(profiles) == "128:64,512:64,2048:64,4096:32,8192:16"
    assert check_profiles(profiles, DEFAULT_BUCKETS, max_rows=64, max_tokens_per_request=131072) == []
    small = plan_profiles(DEFAULT_BUCKETS, max_batch=64, max_tokens=32768)
    assert [p.max for p in small] == [(64, 128), (64, 512), (32, 1024), (16, 2048), (8, 4096), (4, 8192)]
    with pytest.raises(ValueError, match="cannot hold one row of the longest bucket"):
        plan_profiles(DEFAULT_BUCKETS, max_batch=64, max_tokens=4096)


def test_profile_problems_are_named():
    profiles = plan_profiles((64, 128, 256), max_batch=16)
    problems = check_profiles(profiles, (64, 128, 256, 512), max_rows=16, max_tokens_per_request=131072)
    assert problems == ["bucket 512 is longer than any engine profile (longest 256)"]
    problems = check_profiles(profiles, (64, 128), max_rows=32, max_tokens_per_request=131072)
    assert any("a request of 32 rows at bucket 64" in p and "at most 16 rows" in p for p in problems)
    budget = plan_profiles(DEFAULT_BUCKETS, max_batch=64, max_tokens=65536)
    problems = check_profiles(budget, DEFAULT_BUCKETS, max_rows=64, max_tokens_per_request=131072)
    assert problems and all("lower max_tokens_per_request" in p for p in problems), "a request must fit one execution"


@pytest.mark.parametrize("gpus,per_gpu", [((0,), 1), ((0, 1), 2), ((0, 1, 2, 3), 1)])
def test_gpu_repository_configs(tmp_path, tiny_checkpoint, gpus, per_gpu):
    plan = fake_engine(tmp_path / "engine")
    settings = RepositorySettings(target="gpu", gpus=gpus, instances_per_gpu=per_gpu, **gpu_defaults(plan))
    repo = build_repository(tiny_checkpoint, tmp_path / "repo", settings, engine=plan, triton_release="25.06")
    config = parse_config((repo / "engine" / "config.pbtxt").read_text(), "engine")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 64
    assert [list(g.gpus) for g in config.instance_group] == [[g] for g in gpus]
    assert all(g.count == per_gpu and list(g.profile) == ["0", "1", "2", "3", "4"] for g in config.instance_group)
    assert (repo / "engine" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert json.loads((repo / "engine" / "1" / "engine_meta.json").read_text())["precision"] == "fp16"
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"execution_context_allocation_strategy": "ON_PROFILE_CHANGE", "batch_max_tokens": "131072",
                      "batch_rows_by_width": "128:64,512:64,2048:64,4096:32,8192:16"}
    # Every batch size preferred and no queue delay: batches leave the batcher saturated (batchstrategy.c).
    assert list(config.dynamic_batching.preferred_batch_size) == list(range(1, 65))
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert (repo / "engine" / "batchstrategy.so").is_file(), "Triton loads it from the model's directory"
    ensemble = parse_config((repo / settings.ensemble_name / "config.pbtxt").read_text(), "ensemble")
    assert ensemble.max_batch_size == 64


def test_gpu_defaults_follow_the_engine(tmp_path):
    plan = fake_engine(tmp_path, max_batch=32, buckets=(128, 512, 2048))
    assert gpu_defaults(plan) == {"engine_max_batch_size": 32, "max_rows": 32, "max_tokens_per_request": 131072,
                                  "buckets": (128, 512, 2048), "max_sequence_length": 2048,
                                  "preferred_batch_sizes": (8, 16, 32)}


@pytest.mark.parametrize("overrides,kwargs,fragment", [
    ({"engine_max_batch_size": 128, "max_rows": 128}, {}, "engine_max_batch_size 128 is more than the engine's 64"),
    ({"max_tokens_per_request": 262144}, {}, r"a request of 32 rows at bucket 8192 .* at most 16 rows"),
    ({"buckets": (64, 16384), "max_sequence_length": 16384, "max_tokens_per_request": 16384}, {},
     "bucket 16384 is longer than any engine profile"),
    ({}, {"triton_release": "24.12"}, "built with TensorRT 10.11.0.33 but the serving container has TensorRT 10.7.0"),
    ({}, {"serving_trt": "10.8.0"}, "serving container has TensorRT 10.8.0"),
    ({}, {"triton_release": "19.01"}, "unknown Triton release"),
])
def test_inconsistent_engines_are_refused(tmp_path, tiny_checkpoint, overrides, kwargs, fragment):
    plan = fake_engine(tmp_path / "engine")
    settings = RepositorySettings(target="gpu", **{**gpu_defaults(plan), **overrides})
    with pytest.raises(EngineMetaError, match=fragment):
        check_engine_for_repository(plan, settings, **kwargs)
    assert not (tmp_path / "repo").exists()


def test_engine_without_metadata_is_refused(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"x")
    with pytest.raises(EngineMetaError, match="engine_meta.json is missing"):
        read_meta(plan)


def test_version_matrix_is_monotonic():
    versions = [tuple(int(x) for x in v.split(".")) for v in TRITON_TENSORRT.values()]
    assert versions == sorted(versions)


def test_precision_needs_the_matching_onnx(tiny_onnx_fp32, tiny_onnx_fp16):
    with pytest.raises(EngineBuildError, match="export-onnx --dtype fp16"):
        check_inputs(tiny_onnx_fp32, "fp16")
    check_inputs(tiny_onnx_fp16, "fp16")
    check_inputs(tiny_onnx_fp16, "fp8")
    with pytest.raises(EngineBuildError, match="precision must be one of"):
        check_inputs(tiny_onnx_fp16, "int4")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-TensorRT message does not apply")
def test_cli_explains_missing_tensorrt(tiny_onnx_fp16, tmp_path):
    done = subprocess.run([CLI, "engine", "--onnx", str(tiny_onnx_fp16), "--precision", "fp16",
                           "--out", str(tmp_path / "e")], capture_output=True, text=True)
    assert done.returncode == 2 and "TensorRT container" in done.stderr


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="needs the TensorRT Python package (NVIDIA's TensorRT container on a GPU)")
def test_build_tiny_engine(tiny_onnx_fp16, tmp_path):
    from rerank_build.engine_build import build_engine

    plan = build_engine(tiny_onnx_fp16, tmp_path, "fp16", buckets=(64, 128), max_batch=8)
    meta = read_meta(plan)
    assert meta["precision"] == "fp16" and len(meta["profiles"]) == 1 and plan.stat().st_size > 0



def test_a_pod_refuses_an_engine_built_for_another_gpu_or_tensorrt(tmp_path, tiny_checkpoint):
    """What the GPU overlay's init container runs (rerank-build check-engine) before Triton starts."""
    from rerank_build.engine_meta import EngineMetaError, check_engine_for_node, engine_key

    engine = fake_engine(tmp_path / "engine")
    meta = json.loads((tmp_path / "engine" / "engine_meta.json").read_text())
    meta["gpu"] = H100
    (tmp_path / "engine" / "engine_meta.json").write_text(json.dumps(meta))
    repo = build_repository(tiny_checkpoint, tmp_path / "repo", RepositorySettings(target="gpu", **gpu_defaults(engine)),
                            engine=engine, serving_tensorrt="10.11.0")
    assert "engine OK for this node" in check_engine_for_node(repo, "10.11.0.33", H100)
    with pytest.raises(EngineMetaError, match=r"built on NVIDIA H100 80GB HBM3 \(compute capability 9.0\) but this "
                                              r"node has NVIDIA L40S \(compute capability 8.9\).*"
                                              r"NVIDIA-L40S/trt-10.11.0/fp16"):
        check_engine_for_node(repo, "10.11.0", L40S)
    with pytest.raises(EngineMetaError, match="built with TensorRT 10.11.0.33 but this container has TensorRT 10.12.0"):
        check_engine_for_node(repo, "10.12.0", H100)
    assert engine_key("NVIDIA H100 80GB HBM3", "10.11.0", "fp8") == "NVIDIA-H100-80GB-HBM3/trt-10.11.0/fp8"
    done = subprocess.run([CLI, "check-engine", "--repository", str(repo), "--tensorrt", "10.11.0"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "cannot run on this node" in done.stderr, "no GPU here: refused, with a reason"


def test_engine_files_are_written_atomically(tmp_path):
    from rerank_build.engine_build import write_atomically

    target = tmp_path / "model.plan"
    write_atomically(target, b"engine")
    assert target.read_bytes() == b"engine" and not list(tmp_path.glob("*.partial"))


def test_plan_only_needs_no_tensorrt_and_fits_the_gpu():
    """rerank-build engine --plan-only --preset full: executions of at most 131,072 tokens, and the default
    deployment (one instance per GPU) within 72 GiB; fp8 stores smaller weights."""
    def plan(*extra: str) -> dict:
        done = subprocess.run([CLI, "engine", "--plan-only", "--preset", "full", *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    fp16, fp8 = plan(), plan("--precision", "fp8")
    assert {"profiles", "max_tokens_per_execution", "context_allocation_strategy", "device_memory_gib"} <= set(fp16)
    assert fp16["max_tokens_per_execution"] == 131072 and fp16["context_allocation_strategy"] == "ON_PROFILE_CHANGE"
    assert all(p["max"][0] * p["max"][1] <= 131072 for p in fp16["profiles"])
    assert [p["max"][1] for p in fp16["profiles"]][-1] == 8192, "every bucket up to 8,192 tokens is served"
    memory = fp16["device_memory_gib"]
    assert memory["per_gpu"] <= 72 and memory["per_instance"] < memory["per_gpu"]
    assert fp8["device_memory_gib"]["weights"] < memory["weights"] < 2.5
    two = plan("--instances-per-gpu", "2")["device_memory_gib"]
    assert two["per_gpu"] == pytest.approx(2 * memory["per_instance"] + memory["runtime_per_gpu"], abs=0.02)


def test_plan_only_reads_the_size_from_the_onnx(tiny_onnx_fp16):
    done = subprocess.run([CLI, "engine", "--plan-only", "--onnx", str(tiny_onnx_fp16), "--buckets", "64,128",
                           "--max-batch", "8"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["model"]["parameters"] < 10_000_000 and [p["max"] for p in plan["profiles"]] == [[8, 128]]


def test_a_deployment_that_does_not_fit_the_gpu_is_refused(tmp_path, tiny_checkpoint):
    """The repository checks the device memory the build recorded against the GPU's, and says why."""
    plan = fake_engine(tmp_path / "engine")  # full preset, fp16, recorded on an 80 GB H100
    fits = RepositorySettings(target="gpu", instances_per_gpu=2, **gpu_defaults(plan))
    build_repository(tiny_checkpoint, tmp_path / "ok", fits, engine=plan, serving_tensorrt="10.11.0")
    three = RepositorySettings(target="gpu", instances_per_gpu=3, **gpu_defaults(plan))
    with pytest.raises(EngineMetaError, match=r"3 engine instance\(s\) per GPU need 9\d\.\d GiB .* more than 71\.\d GiB "
                                              r"\(90% of the GPU's 79\.6 GiB\): use fewer --instances-per-gpu"):
        build_repository(tiny_checkpoint, tmp_path / "no", three, engine=plan, serving_tensorrt="10.11.0")
    assert not (tmp_path / "no").exists()
    done = subprocess.run([CLI, "repository", "--checkpoint", str(tiny_checkpoint), "--target", "gpu", "--engine",
                           str(plan), "--serving-tensorrt", "10.11.0", "--gpu-memory-gib", "48",
                           "--out", str(tmp_path / "l40s")], capture_output=True, text=True)
    assert done.returncode == 0, "one instance (33 GiB) fits a 48 GiB GPU"
    done = subprocess.run([CLI, "repository", "--checkpoint", str(tiny_checkpoint), "--target", "gpu", "--engine",
                           str(plan), "--serving-tensorrt", "10.11.0", "--gpu-memory-gib", "32",
                           "--out", str(tmp_path / "small-gpu")], capture_output=True, text=True)
    assert done.returncode == 2 and "more than 28.8 GiB (90% of the GPU's 32.0 GiB)" in done.stderr


def test_engine_metadata_records_memory_and_layers(tmp_path):
    meta = read_meta(fake_engine(tmp_path))
    assert meta["format"] == 2 and len(meta["device_memory"]["profile_bytes"]) == len(meta["profiles"])
    assert meta["layer_types"] == {"Myelin": 1} and meta["max_tokens_per_execution"] == 131072
    old = {**meta, "format": 1}
    (tmp_path / "engine_meta.json").write_text(json.dumps(old))
    with pytest.raises(EngineMetaError, match="format 1, expected 2: rebuild the engine"):
        read_meta(tmp_path / "model.plan")


class FakeBuilderConfig:
    """The two IBuilderConfig calls attach_timing_cache makes, answering as TensorRT 10.11 does for a
    cache from another GPU or TensorRT: set_timing_cache returns False."""

    def __init__(self, accepts: bool) -> None:
        self.accepts, self.attached = accepts, None

    def create_timing_cache(self, data: bytes) -> object:
        return ("cache", data)

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False, "a mismatching cache must be refused, not silently used"
        self.attached = cache if self.accepts else None
        return self.accepts


def test_a_foreign_timing_cache_fails_loudly(tmp_path):
    from rerank_build.engine_build import attach_timing_cache

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another GPU")
    with pytest.raises(EngineBuildError, match="TensorRT refused the timing cache .*timing.cache.*Delete it"):
        attach_timing_cache(FakeBuilderConfig(accepts=False), cache)
    config = FakeBuilderConfig(accepts=True)
    assert attach_timing_cache(config, tmp_path / "absent.cache") == ("cache", b"") == config.attached


def test_engine_key_is_x_y_z_for_the_job_and_the_pods():
    from rerank_build.engine_meta import engine_key

    assert engine_key("NVIDIA H100 80GB HBM3", "10.11.0.33", "fp16") == "NVIDIA-H100-80GB-HBM3/trt-10.11.0/fp16"
    done = subprocess.run([CLI, "engine-key", "--precision", "fp8", "--tensorrt", "10.11.0.33", "--gpu-name",
                           "NVIDIA H100 80GB HBM3"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "NVIDIA-H100-80GB-HBM3/trt-10.11.0/fp8"
    done = subprocess.run([CLI, "engine-key", "--precision", "fp8", "--tensorrt", "ten", "--gpu-name", "x"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a TensorRT version" in done.stderr


def test_gpu_onnx_target_needs_no_engine(tmp_path, tiny_checkpoint, tiny_onnx_fp16, tiny_onnx_fp32):
    """NIM's fallback: the fp16 ONNX in Triton's ONNX Runtime backend on CUDA, a config that parses into
    Triton's ModelConfig, the same batching strategy, and requests sized to fit one execution."""
    done = subprocess.run([CLI, "repository", "--checkpoint", str(tiny_checkpoint), "--target", "gpu-onnx", "--onnx",
                           str(tiny_onnx_fp16), "--gpus", "0,1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    repo = tmp_path / "r"
    config = parse_config((repo / "engine" / "config.pbtxt").read_text(), "engine")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    from tritonclient.grpc import model_config_pb2

    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert [(g.kind, list(g.gpus), list(g.profile)) for g in config.instance_group] == [(gpu, [0], []), (gpu, [1], [])]
    cuda = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert cuda.name == "cuda" and dict(cuda.parameters) == {"arena_extend_strategy": "1"}
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert (repo / "engine" / "batchstrategy.so").is_file() and (repo / "engine" / "1" / "model.onnx").is_file()
    tokenizer = parse_config((repo / "tokenizer" / "config.pbtxt").read_text(), "tokenizer")
    rows = dict(item.split(":") for item in config.parameters["batch_rows_by_width"].string_value.split(","))
    assert rows["8192"] == "8" and rows["4096"] == "32" and rows["2048"] == "64", "tiny: the attention caps 4096+"
    assert tokenizer.parameters["max_tokens_per_request"].string_value == "65536", "8 rows of 8192 fit one execution"
    done = subprocess.run([CLI, "repository", "--checkpoint", str(tiny_checkpoint), "--target", "gpu-onnx", "--onnx",
                           str(tiny_onnx_fp32), "--out", str(tmp_path / "fp32")], capture_output=True, text=True)
    assert done.returncode == 2 and "serves the fp16 export" in done.stderr


def test_gpu_onnx_batches_fit_the_unfused_attention():
    from rerank_build.config import preset
    from rerank_build.onnx_gpu import attention_bytes_per_row, plan_batches, request_tokens

    full = preset("full")
    batches = plan_batches(full, DEFAULT_BUCKETS, 64)
    assert [p.max for p in batches][-3:] == [(16, 2048), (4, 4096), (1, 8192)]
    assert all(p.max[0] * attention_bytes_per_row(full, p.max[1]) <= 16 * (1 << 30) for p in batches)
    assert request_tokens(batches, 64) == 8192
