"""TensorRT engine tooling, tested as far as a CPU allows: profile planning, metadata validation,
GPU repository configs for 1, 2 and 4 GPUs, CLI errors. Building needs TensorRT and a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_build.engine_build import EngineBuildError, check_inputs, engine_metadata
from rerank_build.engine_meta import (
    TRITON_TENSORRT, EngineMetaError, check_engine_for_repository, gpu_defaults, read_meta,
)
from rerank_build.profiles import Profile, activation_bytes, check_profiles, plan_profiles
from rerank_build.repository import RepositorySettings, build_repository, parse_config
from rerank_contract.prompt import DEFAULT_BUCKETS

CLI = str(Path(sys.executable).with_name("rerank-build"))
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_profiles_cover_every_bucket_with_the_full_batch():
    profiles = plan_profiles(DEFAULT_BUCKETS, max_batch=64, opt_tokens=16384)
    assert len(profiles) == 4
    assert [p.max[1] for p in profiles] == [128, 512, 2048, 8192]
    assert [p.min[1] for p in profiles] == [1, 129, 513, 2049]
    assert all(p.max[0] == 64 and p.min[0] == 1 for p in profiles)
    assert [p.opt[0] for p in profiles] == [64, 32, 8, 2]  # short: large batches, long: small ones
    assert check_profiles(profiles, DEFAULT_BUCKETS, 64) == []


def test_profile_problems_are_named():
    profiles = plan_profiles((64, 128, 256), max_batch=16)
    problems = check_profiles(profiles, (64, 128, 256, 512), 16)
    assert problems == ["bucket 512 is longer than any engine profile (longest 256)"]
    problems = check_profiles(profiles, (64, 128), 32)
    assert any("max_batch_size 32 at bucket 64 does not fit" in p and "at most 16 rows" in p for p in problems)


def test_activation_estimate_grows_with_the_profile():
    small, big = Profile((1, 1), (8, 128), (8, 128)), Profile((1, 1), (8, 128), (64, 8192))
    assert activation_bytes(2048, 8192, 32, big) > 100 * activation_bytes(2048, 8192, 32, small)


def fake_engine(directory: Path, trt_version: str = "10.11.0.33", max_batch: int = 64,
                buckets=DEFAULT_BUCKETS, onnx: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    plan = directory / "model.plan"
    plan.write_bytes(b"not a real engine: config tests only")
    profiles = plan_profiles(buckets, max_batch)
    onnx = onnx or directory / "model.onnx"
    if not onnx.exists():
        onnx.write_bytes(b"onnx")
        (directory / "export_meta.json").write_text(json.dumps({"dtype": "fp16"}))
    meta = engine_metadata(trt_version, "fp16", profiles, buckets, max_batch, onnx, 1.0, directory / "timing.cache")
    (directory / "engine_meta.json").write_text(json.dumps(meta))
    return plan


@pytest.mark.parametrize("gpus,per_gpu", [((0,), 1), ((0, 1), 2), ((0, 1, 2, 3), 1)])
def test_gpu_repository_configs(tmp_path, tiny_checkpoint, gpus, per_gpu):
    plan = fake_engine(tmp_path / "engine")
    settings = RepositorySettings(target="gpu", gpus=gpus, instances_per_gpu=per_gpu, **gpu_defaults(plan))
    repo = build_repository(tiny_checkpoint, tmp_path / "repo", settings, engine=plan, triton_release="25.06")
    config = parse_config((repo / "engine" / "config.pbtxt").read_text(), "engine")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 64
    assert [list(g.gpus) for g in config.instance_group] == [[g] for g in gpus]
    assert all(g.count == per_gpu and list(g.profile) == ["0", "1", "2", "3"] for g in config.instance_group)
    assert (repo / "engine" / "1" / "model.plan").read_bytes() == plan.read_bytes()
    assert json.loads((repo / "engine" / "1" / "engine_meta.json").read_text())["precision"] == "fp16"
    ensemble = parse_config((repo / settings.ensemble_name / "config.pbtxt").read_text(), "ensemble")
    assert ensemble.max_batch_size == 64


def test_gpu_defaults_follow_the_engine(tmp_path):
    plan = fake_engine(tmp_path, max_batch=32, buckets=(128, 512, 2048))
    assert gpu_defaults(plan) == {"engine_max_batch_size": 32, "max_rows": 32, "buckets": (128, 512, 2048),
                                  "max_sequence_length": 2048, "preferred_batch_sizes": (8, 16, 32)}


@pytest.mark.parametrize("overrides,kwargs,fragment", [
    ({"engine_max_batch_size": 128, "max_rows": 128}, {}, "max_batch_size 128 at bucket 64 does not fit"),
    ({"buckets": (64, 16384), "max_sequence_length": 16384, "max_request_tokens": 16384}, {},
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


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
L40S = {"name": "NVIDIA L40S", "compute_capability": "8.9"}


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
