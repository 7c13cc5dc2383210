"""``rerank-build serve`` (what ``make serve`` runs): tritonserver and the gateway in NIM's port layout,
started as one command and stopped as one, with nothing left running."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from rerank_serving.server import process_group_alive
from rerank_serving.server import free_stack_ports
from stack_helpers import alive, children, start_serve

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.server


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_both_in_nims_layout_and_stops_both(tiny_repository, tmp_path, stop_signal):
    ports = free_stack_ports()
    proc = start_serve(tiny_repository, ports, tmp_path)
    try:
        descendants = children(proc.pid)
        assert len(descendants) >= 2, "tritonserver and the gateway"
        answer = requests.post(f"http://127.0.0.1:{ports.rest}/v1/ranking", timeout=60,
                               json={"query": {"text": "q"}, "passages": [{"text": "a"}, {"text": "b"}]})
        assert answer.status_code == 200 and len(answer.json()["rankings"]) == 2
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
        kserve = httpclient.InferenceServerClient(f"127.0.0.1:{ports.triton_http}")
        assert grpc.is_server_ready() and kserve.is_server_ready()
        grpc.close()
        kserve.close()
        assert "nv_inference_request_success" in requests.get(f"http://127.0.0.1:{ports.metrics}/metrics",
                                                              timeout=10).text
        proc.send_signal(stop_signal)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while any(alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in descendants), "a child outlived rerank-build serve"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_serve_without_watchdog_stops_everything_when_a_part_dies(tiny_repository, tmp_path):
    ports = free_stack_ports()
    proc = start_serve(tiny_repository, ports, tmp_path, "--no-watchdog")
    try:
        gateway_pid = next(p for p in children(proc.pid)
                           if b"rerank_gateway" in Path(f"/proc/{p}/cmdline").read_bytes())
        everything = children(proc.pid)
        subprocess.run(["kill", "-9", str(gateway_pid)], check=True)
        assert proc.wait(60) == 1, "a dead part is an error"
        deadline = time.monotonic() + 30
        while any(alive(p) for p in everything) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in everything)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_supervisor_death_takes_the_stack_with_it(tiny_repository, tmp_path):
    """SIGKILL of rerank-build serve itself: its children get SIGTERM from the kernel (PDEATHSIG)."""
    ports = free_stack_ports()
    proc = start_serve(tiny_repository, ports, tmp_path)
    groups = children(proc.pid)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 60
    while any(process_group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(process_group_alive(g) for g in groups)


def test_make_serve_honours_the_port_variables():
    done = subprocess.run(["make", "-n", "serve", "HOST=0.0.0.0", "HTTP_PORT=9100", "GRPC_PORT=9101",
                           "METRICS_PORT=9102", "TRITON_HTTP_PORT=9103"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    serve = next(line for line in done.stdout.replace("\\\n", " ").splitlines() if "rerank-build serve" in line)
    for flag in ("--host 0.0.0.0", "--http-port 9100", "--grpc-port 9101", "--metrics-port 9102",
                 "--triton-http-port 9103"):
        assert flag in serve, (flag, serve)
