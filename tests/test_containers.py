"""Containers and GPU scripts, checked without Docker or a GPU: lint, structure, a CPU smoke run."""

from __future__ import annotations

import contextlib
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
    from rerank_serving.supervise import image_command

    assert "--http-port=8003" in image_command([]), "the entrypoint's command line (test_ports checks the rest)"
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
    assert "No TensorRT" in report and "total wall time" in report
    assert "| 1 request x 64 passages x 128 tokens | 64 |" in report and "| 512 tokens per pair |" in report
    assert "Parity, fp32 on cpu" in report and ": PASS" in report


def test_gpu_check_lists_what_it_misses_first(tmp_path):
    """Asked for a CUDA run where torch has no CUDA (this machine), it stops at once and says what is
    missing, instead of failing halfway through."""
    env = dict(os.environ, OUT=str(tmp_path), DEVICE="cuda", PRESET="tiny", QUICK="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "missing requirements" in done.stderr
    assert "a CUDA build of torch and a visible GPU for DEVICE=cuda" in done.stderr
    assert not (tmp_path / "gpu_check.md").exists()
    header = (ROOT / "scripts" / "gpu_check.sh").read_text().split("set -euo pipefail")[0]
    assert "What this script itself needs" in header and "C compiler" in header


def test_build_image_brings_no_second_cuda():
    """The build image's torch is the CPU build (the reference runs on the CPU); the engine tools use the
    TensorRT container's own CUDA runtime, never torch's, so no CUDA version can mismatch."""
    text = (ROOT / "docker" / "Dockerfile.build").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text and "torch.version.cuda is None" in text
    assert "gcc" in text, "the GPU repository compiles its batching strategy"
    for module in ("engine_runner.py", "engine_build.py", "cudart.py"):
        source = (ROOT / "build_scripts" / "rerank_build" / module).read_text()
        assert "import torch" not in source, f"{module} must not need torch"


def test_gateway_image_holds_only_the_light_packages():
    text = (ROOT / "docker" / "Dockerfile.gateway").read_text()
    assert "-c requirements.lock ./contract ./client ./gateway" in text
    assert "USER 10001" in text and "build_scripts" not in text and "pyproject.toml ./" not in text


def test_triton_image_runs_the_command_line_rerank_build_serve_runs(capsys, monkeypatch):
    """The entrypoint builds tritonserver's command line with server_command, as the local stack does
    (one place for the flags): the admin APIs restricted, model control off, on every interface."""
    from rerank_serving.server import ADMIN_HEADER, RESTRICTED_APIS
    from rerank_serving.supervise import main

    assert 'exec python3 -m rerank_serving.supervise --image -- "$@"' in (ROOT / "docker" / "triton-entrypoint.sh").read_text()
    monkeypatch.setenv("RERANK_TRITON_ADMIN_KEY", "k")
    assert main(["--image", "--print", "--", "--log-info=1"]) == 0
    printed = capsys.readouterr().out.split()
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}=k"
    assert f"--http-restricted-api={restricted}" in printed and f"--grpc-restricted-protocol={restricted}" in printed
    assert {"--model-control-mode=none", "--model-repository=/models", "--http-address=0.0.0.0",
            "--allow-gpu-metrics=true"} <= set(printed) and printed[0] == "tritonserver" and printed[-1] == "--log-info=1"


@pytest.mark.server
@pytest.mark.slow
def test_serving_image_supervisor_stops_triton_when_a_stub_dies(tiny_repository, tmp_path):
    """rerank_serving.supervise (the serving image's main process) with the real tritonserver: it
    waits for readiness, then a kill -9 of the engine's stub makes it stop the server and exit 1, so
    the container's restart policy starts a fresh one. SIGTERM stops it cleanly otherwise."""
    import signal
    import time

    from rerank_serving.server import free_stack_ports, server_command, server_env, stop_group
    from rerank_serving.stubs import SHM_DIR, alive, python_stubs

    @contextlib.contextmanager
    def supervised():
        """The supervisor in a process group of its own, tritonserver and its stubs inside it: whatever
        happens in the test, the whole group is stopped (a failed assertion left tritonserver running)."""
        ports = free_stack_ports()
        cmd = server_command(tiny_repository, ports)
        log = tmp_path / f"supervise-{ports.triton_http}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "rerank_serving.supervise", "--", *cmd],
                                    env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc, log
        finally:
            stop_group(proc, 10, "triton_supervise")

    def child_server(proc, log) -> int:
        import psutil

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children()
            if children and len(python_stubs(children[0].pid)) >= 4 and "watching" in log.read_text():
                return children[0].pid
            time.sleep(0.5)
        raise AssertionError(log.read_text()[-3000:])

    with supervised() as (proc, log):
        triton = child_server(proc, log)
        stubs = python_stubs(triton)
        engine = next(s for s in stubs if s.name.startswith("engine"))
        os.kill(engine.pid, signal.SIGKILL)
        assert proc.wait(30) == 1, log.read_text()[-3000:]
        assert not alive(triton), "tritonserver is stopped with its dead stub"
        assert "died" in log.read_text() and "stopping it" in log.read_text()
        assert not any((SHM_DIR / s.shm_region).exists() for s in stubs if s.shm_region), "no shm left behind"
    with supervised() as (proc, log):
        child_server(proc, log)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert code in (0, 143), (code, log.read_text()[-1500:])
