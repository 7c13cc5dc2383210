"""Start ``rerank-build serve`` as a user would, and look at its process tree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from rerank_build.stack import ServePorts

CLI = str(Path(sys.executable).with_name("rerank-build"))


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except FileNotFoundError:
            continue
        found += [int(k) for k in kids]
        frontier += [int(k) for k in kids]
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def start_serve(repository: Path, ports: ServePorts, tmp_path: Path, *extra: str) -> subprocess.Popen:
    """``rerank-build serve`` in its own session, logging to ``tmp_path/serve.log``; returns once ready."""
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([CLI, "serve", "--repository", str(repository), "--http-port", str(ports.http),
                             "--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics),
                             "--triton-http-port", str(ports.triton_http), *extra], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            if requests.get(f"http://127.0.0.1:{ports.http}/v1/health/ready", timeout=2).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop_serve(proc)
    raise AssertionError("rerank-build serve never became ready: " + (tmp_path / "serve.log").read_text()[-3000:])


def stop_serve(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM ``rerank-build serve`` (it stops its stack), then SIGKILL its whole session if it is still
    there: a failed test must not leave tritonserver or the gateway running."""
    from rerank_build.server import stop_group

    stop_group(proc, timeout_s, "rerank-build serve")
