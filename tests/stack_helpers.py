"""Start ``rerank-build serve`` as a user would, and look at its process tree (with the stub-watching
module the stack's watchdog and the serving image's supervisor use, ``rerank_serving.stubs``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from rerank_contract.ports import Ports
from rerank_serving.stubs import alive, descendants as children  # noqa: F401 - for the tests

CLI = str(Path(sys.executable).with_name("rerank-build"))


def start_serve(repository: Path, ports: Ports, tmp_path: Path, *extra: str) -> subprocess.Popen:
    """``rerank-build serve`` in its own session, logging to ``tmp_path/serve.log``; returns once ready."""
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([CLI, "serve", "--repository", str(repository), "--http-port", str(ports.rest),
                             "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
                             "--triton-http-port", str(ports.triton_http), *extra], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{ports.rest}/v1/health/ready", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop_serve(proc)
    raise AssertionError("rerank-build serve never became ready: " + (tmp_path / "serve.log").read_text()[-3000:])


def stop_serve(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM ``rerank-build serve`` (it stops its stack), then SIGKILL its whole session if it is still
    there: a failed test must not leave tritonserver or the gateway running."""
    from rerank_serving.server import stop_group

    stop_group(proc, timeout_s, "rerank-build serve")
