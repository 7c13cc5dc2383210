"""Light installs: the client and the gateway install on their own, with only their run-time needs.

People put the client (and the gateway) in services; neither may drag in torch, transformers or
locust. Each is installed into a fresh virtual environment, the way a user would (pinned by the
repository's lock file), and then used against the real server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from rerank_build.server import free_ports

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "locust", "onnx", "onnxruntime", "sentence-transformers", "nvidia-pytriton",
         "tokenizers", "matplotlib"}
GATEWAY_ONLY = {"fastapi", "starlette", "uvicorn", "prometheus-client", "pydantic"}

pytestmark = [pytest.mark.server, pytest.mark.slow]


def installed(python: Path) -> set[str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                         check=True).stdout
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def pip_install(python: Path, *paths: str) -> None:
    """Install the packages from a copy of their sources (a build writes build/ and egg-info beside them)."""
    sources = python.parent.parent.parent / "sources"
    for name in paths:
        if not (sources / name).exists():
            shutil.copytree(ROOT / name, sources / name, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                        "__pycache__"))
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "requirements.lock"),
                           *[str(sources / p) for p in paths]], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return venv / "bin" / "python"


def test_client_installs_alone_and_works(light_venv, server):
    pip_install(light_venv, "contract", "client")
    packages = installed(light_venv)
    assert {"rerank-client", "rerank-contract", "tritonclient", "numpy"} <= packages
    assert not packages & (HEAVY | GATEWAY_ONLY), packages & (HEAVY | GATEWAY_ONLY)
    done = subprocess.run([str(light_venv.parent / "rerank-client"), "--url", server.grpc_url, "--query", "which way?",
                           "--passage", "left road", "--passage", "right road"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(r["index"] for r in json.loads(done.stdout)["rankings"]) == [0, 1]


def test_gateway_installs_with_only_its_own_needs(light_venv, server, tmp_path):
    before = installed(light_venv)
    assert "rerank-client" in before, "runs after the client test, in the same environment"
    pip_install(light_venv, "gateway")
    added = installed(light_venv) - before
    assert "rerank-gateway" in added and GATEWAY_ONLY <= added, added
    assert not added & HEAVY, added & HEAVY
    port = free_ports(1)[0]
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(light_venv.parent / "rerank-gateway"), "--triton", server.grpc_url, "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/v1/health/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        answer = requests.post(url + "/v1/ranking", json={"query": {"text": "which way?"},
                                                          "passages": [{"text": "left"}, {"text": "right"}]}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["rankings"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)
