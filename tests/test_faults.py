"""Faults while requests flow, against ``rerank-build serve`` (tritonserver + gateway + watchdog).

For each fault: requests keep flowing through the REST gateway (plain HTTP, as a user's client) and
through the client library over gRPC (with a retry window, as the gateway uses it); a probe polls
readiness. Each scenario records what the in-flight requests got and how long recovery took (printed;
``pytest -s`` shows them), and checks that the gateway and the client library rode through, that the
gateway stayed ready through a tritonserver restart (shorter than its ride-through), that each flow got
right answers after the recovery, and that no answer was ever wrong.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest
import requests

from gateway_helpers import distinct_passages, expected_order
from rerank_contract.ports import Ports
from rerank_serving.server import free_stack_ports
from rerank_serving.stubs import SHM_DIR, python_stubs
from rerank_client import RerankClient
from stack_helpers import children, start_serve, stop_serve
from threads import Worker
from triton_helpers import ensemble_answer

pytestmark = [pytest.mark.server, pytest.mark.slow]

QUERY, PASSAGES = distinct_passages(12, seed=31)
#: Right answers each flow must get after the recovery (each one checked against the truth).
AFTER_RECOVERY = 3


@dataclass
class Flow:
    """Requests sent continuously by one kind of client, and what each got."""

    outcomes: Counter = field(default_factory=Counter)
    wrong: list = field(default_factory=list)


@pytest.fixture(scope="module")
def stack(tiny_repository, tmp_path_factory, server):
    """One served stack for every scenario (the watchdog's restart budget allows them all)."""
    tmp = tmp_path_factory.mktemp("faults")
    ports = free_stack_ports()
    # The REST flow repeats one request: with the score cache on, the gateway would answer it without
    # Triton, and the flow would not test riding through a restart. (serve's gateway reads the environment.)
    with mock.patch.dict(os.environ, {"RERANK_GATEWAY_CACHE": "off"}):
        proc = start_serve(tiny_repository, ports, tmp)
    logits, _ = ensemble_answer(server, QUERY, PASSAGES)  # the truth, from the session's own server
    try:
        yield proc, ports, tmp / "serve.log", expected_order(logits)
    finally:
        stop_serve(proc)


def _rest_flow(url: str, order: list[int], flow: Flow, stop: threading.Event) -> None:
    session = requests.Session()
    body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES], "truncate": "END"}
    while not stop.is_set():
        try:
            answer = session.post(url + "/v1/ranking", json=body, timeout=60)
            flow.outcomes[str(answer.status_code)] += 1
            if answer.status_code == 200 and [r["index"] for r in answer.json()["rankings"]] != order:
                flow.wrong.append(answer.text[:200])
        except requests.RequestException as exc:
            flow.outcomes[type(exc).__name__] += 1
            session = requests.Session()
            time.sleep(0.1)


def _grpc_flow(url: str, order: list[int], flow: Flow, stop: threading.Event) -> None:
    with RerankClient(url, "grpc", timeout_s=60, truncate="END", max_backoff_s=1.0, retry_window_s=30) as client:
        while not stop.is_set():
            try:
                results = client.rerank(QUERY, PASSAGES)
                flow.outcomes["ok"] += 1
                if [r.index for r in results] != order:
                    flow.wrong.append([r.index for r in results])
            except Exception as exc:  # noqa: BLE001 - recorded
                flow.outcomes[type(exc).__name__] += 1


def _probe(url: str, seen: Counter, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            seen[str(requests.get(url + "/v1/health/ready", timeout=2).status_code)] += 1
        except requests.RequestException as exc:
            seen[type(exc).__name__] += 1
        time.sleep(0.05)


def good_answers(rest: Flow, grpc: Flow) -> tuple[int, int]:
    return rest.outcomes["200"], grpc.outcomes["ok"]


def run_fault(stack, kill, recovered_line: str, title: str) -> tuple[Flow, Flow, Counter, float]:
    """Start the flows, apply ``kill()``, wait for the watchdog's recovery line, then until each flow
    has had more right answers since; returns the flows, the readiness probe's counts and the recovery
    time (s)."""
    proc, ports, log, order = stack
    rest_url, grpc_url = f"http://127.0.0.1:{ports.rest}", f"127.0.0.1:{ports.grpc}"
    before = log.read_text().count(recovered_line)
    stop, rest, grpc, ready = threading.Event(), Flow(), Flow(), Counter()
    threads = [Worker(_rest_flow, rest_url, order, rest, stop, name="rest"),
               Worker(_grpc_flow, grpc_url, order, grpc, stop, name="grpc"),
               Worker(_probe, rest_url, ready, stop, name="probe")]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while min(good_answers(rest, grpc)) < 1 and time.monotonic() < deadline:  # requests in flight
            time.sleep(0.1)
        kill()
        deadline = time.monotonic() + 120
        while log.read_text().count(recovered_line) == before and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        text = log.read_text()
        assert text.count(recovered_line) > before, f"no recovery within 120 s: {text[-3000:]}"
        seconds = float(re.findall(rf"{re.escape(recovered_line)} and ready in ([\d.]+)s", text)[-1])
        recovered = good_answers(rest, grpc)
        deadline = time.monotonic() + 60
        while (any(now < then + AFTER_RECOVERY for now, then in zip(good_answers(rest, grpc), recovered))
               and time.monotonic() < deadline):
            time.sleep(0.1)
        after = [now - then for now, then in zip(good_answers(rest, grpc), recovered)]
    finally:
        stop.set()
        for t in threads:
            t.check(90)  # a flow whose thread died fails the test
    print(f"\n[{title}] recovery {seconds:.1f}s; REST via gateway: {dict(rest.outcomes)}; client library gRPC: "
          f"{dict(grpc.outcomes)}; gateway readiness probes: {dict(ready)}")
    assert not rest.wrong and not grpc.wrong, "a wrong answer"
    assert min(after) >= AFTER_RECOVERY, f"right answers after the recovery (REST, gRPC): {after}"
    return rest, grpc, ready, seconds


def _stub_pid(ports: Ports, proc, model: str) -> tuple[int, list[str]]:
    triton = next(p for p in children(proc.pid) if b"bin/tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes())
    stubs = python_stubs(triton)
    victim = next(s for s in stubs if s.name.startswith(model))
    return victim.pid, [s.shm_region for s in stubs if s.shm_region]


@pytest.mark.parametrize("model", ["engine", "tokenizer"])
def test_killed_python_stub_is_recovered_and_ridden_through(stack, model):
    proc, ports, _, _ = stack
    pid, regions = _stub_pid(ports, proc, model)
    rest, grpc, ready, seconds = run_fault(stack, lambda: __import__("os").kill(pid, signal.SIGKILL),
                                           f"died; tritonserver on gRPC {ports.grpc} restarted", f"kill -9 {model} stub")
    assert set(rest.outcomes) == {"200"}, "the gateway rode through the restart"
    assert set(grpc.outcomes) == {"ok"}, "the client library rode through the restart"
    assert set(ready) == {"200"}, "the gateway stayed ready: the restart is shorter than its ride-through"
    assert not [r for r in regions if (SHM_DIR / r).exists()], "the old stubs' /dev/shm regions are gone"
    assert seconds < 60


def test_killed_tritonserver_is_restarted(stack):
    proc, ports, _, _ = stack
    triton = next(p for p in children(proc.pid) if b"bin/tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes())
    regions = [s.shm_region for s in python_stubs(triton) if s.shm_region]
    where = f"tritonserver on gRPC {ports.grpc}"
    rest, grpc, ready, _ = run_fault(stack, lambda: __import__("os").kill(triton, signal.SIGKILL),
                                     f"{where} exited (code -9); {where} restarted", "kill -9 tritonserver")
    assert set(rest.outcomes) == {"200"} and set(grpc.outcomes) == {"ok"}
    assert set(ready) == {"200"}, "the gateway stayed ready: the restart is shorter than its ride-through"
    assert regions and not [r for r in regions if (SHM_DIR / r).exists()], "the killed server's stubs left no region"


def test_killed_gateway_is_restarted(stack):
    proc, _, _, _ = stack
    gateway = next(p for p in children(proc.pid) if b"rerank_gateway" in Path(f"/proc/{p}/cmdline").read_bytes())
    rest, grpc, ready, _ = run_fault(stack, lambda: __import__("os").kill(gateway, signal.SIGKILL),
                                     "rerank-gateway exited (code -9); rerank-gateway restarted", "kill -9 gateway")
    assert set(grpc.outcomes) == {"ok"}, "gRPC clients do not go through the gateway"
    assert rest.outcomes["200"] >= 1
    # While the gateway is down its clients get connection errors (HTTP clients do not retry those),
    # never an error answer.
    assert not [k for k in rest.outcomes if k.isdigit() and k != "200"], rest.outcomes
