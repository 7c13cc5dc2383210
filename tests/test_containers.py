"""Containers and GPU scripts, checked without Docker or a GPU: lint, structure, a CPU smoke run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("dockerfile", ["Dockerfile.triton", "Dockerfile.build", "Dockerfile.gateway"])
def test_dockerfiles_pass_hadolint(dockerfile):
    done = subprocess.run([str(BIN / "hadolint"), str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_images_share_one_release():
    for name in ("Dockerfile.triton", "Dockerfile.build"):
        text = (ROOT / "docker" / name).read_text()
        assert "ARG TRITON_RELEASE=25.06" in text and "${TRITON_RELEASE}-py3" in text


def test_compose_serves_on_gpus_with_nims_ports():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    triton, gateway = compose["services"]["triton"], compose["services"]["gateway"]
    assert gateway["ports"] == ["${HTTP_PORT:-8000}:8000"], "the REST API is the public HTTP face"
    assert gateway["environment"]["RERANK_GATEWAY_TRITON"] == "triton:8001"
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert triton["ports"] == ["${GRPC_PORT:-8001}:8001", "${METRICS_PORT:-8002}:8002", "${TRITON_HTTP_PORT:-8003}:8003"]
    assert "--http-port=8003" in (ROOT / "docker" / "triton-entrypoint.sh").read_text()
    assert "8003/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    device = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert triton["volumes"][0].endswith(":/models:ro")
    assert compose["services"]["build"]["profiles"] == ["tools"]


def test_shell_scripts_pass_shellcheck():
    done = subprocess.run([str(BIN / "shellcheck"), str(ROOT / "scripts" / "gpu_check.sh"), str(ROOT / ".ci" / "run"),
                           str(ROOT / "docker" / "triton-entrypoint.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    """The no-TensorRT branch end to end, on CPU with the tiny preset (the real run needs a GPU)."""
    env = dict(os.environ, OUT=str(tmp_path), DEVICE="cpu", PRESET="tiny", QUICK="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "No TensorRT" in report and "| 128 | 8 |" in report and "total wall time" in report


def test_gateway_image_holds_only_the_light_packages():
    text = (ROOT / "docker" / "Dockerfile.gateway").read_text()
    assert "-c requirements.lock ./contract ./client ./gateway" in text
    assert "USER 10001" in text and "build_scripts" not in text and "pyproject.toml ./" not in text


def test_triton_image_restricts_the_admin_apis_like_rerank_build_serve():
    from rerank_build.server import ADMIN_HEADER, RESTRICTED_APIS

    text = (ROOT / "docker" / "triton-entrypoint.sh").read_text()
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}="
    assert restricted in text and "--http-restricted-api=" in text and "--grpc-restricted-protocol=" in text
    assert "--model-control-mode=none" in text
