"""Light installs, the way users make them: the client and the gateway each in a fresh virtual environment.

People put the client (and the gateway) in services: neither may drag in torch, transformers or locust,
a gRPC-only install neither gevent nor aiohttp, and neither may move the service's own numpy. Two
environments, each built by its own test (no test depends on another's): the client beside numpy 2,
and the gateway on the lock's versions (numpy 1.26). Each is then used against the real server.
pip reuses its cache, so the wheels are fetched once per machine.
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
GATEWAY_ONLY = {"fastapi", "starlette", "uvicorn", "prometheus-client", "pydantic", "pydantic-settings"}
HTTP_ONLY = {"gevent", "geventhttpclient", "aiohttp"}  # rerank-client[http]
#: A numpy 2 of the kind our users run (the newest in this machine's wheel store when this was written).
NUMPY_2 = "numpy==2.4.6"

pytestmark = [pytest.mark.server, pytest.mark.slow]


def fresh_venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True, timeout=300)
    return where / "venv" / "bin" / "python"


def installed(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                         check=True).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def sources(python: Path, *names: str) -> list[str]:
    """Copies of the packages' sources beside the venv (a build writes build/ and egg-info beside them)."""
    where = python.parent.parent.parent / "sources"
    for name in names:
        if not (where / name).exists():
            shutil.copytree(ROOT / name, where / name, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                     "__pycache__"))
    return [str(where / name) for name in names]


def pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def rerank_cli(python: Path, url: str, protocol: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python.parent / "rerank-client"), "--url", url, "--protocol", protocol, "--query",
                           "which way?", "--passage", "left road", "--passage", "right road"],
                          capture_output=True, text=True, timeout=120)


def assert_ranked(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(r["index"] for r in json.loads(done.stdout)["rankings"]) == [0, 1]


def test_client_installs_beside_numpy_2_and_keeps_it(server, tmp_path):
    """`pip install ./contract ./client[grpc,http]` where numpy 2 is installed keeps numpy 2, and the
    client ranks over gRPC and HTTP with it. The rest of the tree is held at the lock's versions (all
    but numpy: only our metadata could move numpy then), so the run is reproducible."""
    python = fresh_venv(tmp_path)
    pip(python, NUMPY_2)
    numpy_2 = installed(python)["numpy"]
    others = tmp_path / "constraints.txt"
    others.write_text("".join(line + "\n" for line in (ROOT / "requirements.lock").read_text().splitlines()
                              if not line.lower().startswith("numpy==")))
    contract, client = sources(python, "contract", "client")
    pip(python, "-c", str(others), contract, f"{client}[grpc,http]")
    packages = installed(python)
    assert packages["numpy"] == numpy_2 and numpy_2.startswith("2."), packages["numpy"]
    assert not set(packages) & (HEAVY | GATEWAY_ONLY), set(packages) & (HEAVY | GATEWAY_ONLY)
    for protocol in ("grpc", "http"):
        assert_ranked(rerank_cli(python, server.url(protocol), protocol))


def test_gateway_installs_with_only_its_own_needs(server, tmp_path):
    """The gateway, as its image installs it (`-c requirements.lock`, so numpy 1.26): its own packages and
    the client's gRPC extra only, no gevent or aiohttp; it serves, the client ranks on numpy 1.26 over
    gRPC, and over HTTP (whose extra is not installed) it says which extra to install."""
    python = fresh_venv(tmp_path)
    pip(python, "-c", str(ROOT / "requirements.lock"), *sources(python, "contract", "client", "gateway"))
    packages = installed(python)
    assert {"rerank-client", "rerank-contract", "rerank-gateway", "tritonclient", "grpcio"} <= set(packages)
    assert GATEWAY_ONLY <= set(packages) and packages["numpy"].startswith("1.26"), packages
    assert not set(packages) & (HEAVY | HTTP_ONLY), set(packages) & (HEAVY | HTTP_ONLY)
    assert_ranked(rerank_cli(python, server.grpc_url, "grpc"))
    refused = rerank_cli(python, server.http_url, "http")
    assert refused.returncode != 0 and "pip install 'rerank-client[http]'" in refused.stderr, refused.stderr[-2000:]
    port = free_ports(1)[0]
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(python.parent / "rerank-gateway"), "--triton", server.grpc_url, "--port",
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
        body = {"query": {"text": "which way?"}, "passages": [{"text": "left"}, {"text": "right"}]}
        answer = requests.post(url + "/v1/ranking", json=body, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["rankings"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)
