"""Deadlines the server honours, and a client that hangs up cancels its work (docs/operations.md, "Deadlines").

Against a real tritonserver whose repository was built with ``request_timeouts`` and whose tokenizer
and engine are held at gates the test opens (tests/gated_models.py): no timing thresholds. Each test
holds the engine (or the tokenizer) with a first request, lets a second one expire (or its client
leave) behind it, opens the gate, then sends a third and waits for it: the engine runs in arrival
order, so whatever the second request would have cost is spent by then. The engine's own token
counter (``rerank_engine_tokens_total{kind="useful"}`` on Triton's metrics port) must have grown by
the first and third requests' tokens only.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

import pytest
import requests

from gated_models import gate_model
from rerank_build.repository import RepositorySettings, build_repository
from rerank_client import DeadlineExceededError, RerankClient
from threads import Worker

from conftest import TEST_LIMITS

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

QUERY = "what do deadlines do"
HEADER = "x-envoy-expected-rq-timeout-ms"


@pytest.fixture(scope="module")
def timeouts_repository(tiny_checkpoint, tiny_onnx_fp32, tmp_path_factory):
    """The tiny repository built with per-request timeouts, its tokenizer and engine gated (open)."""
    tmp = tmp_path_factory.mktemp("deadlines")
    repository = build_repository(tiny_checkpoint, tmp / "repo",
                                  RepositorySettings(**{**TEST_LIMITS, "request_timeouts": True}), onnx=tiny_onnx_fp32)
    return repository, gate_model(repository, "engine", "input_ids", tmp), gate_model(repository, "tokenizer", "query", tmp)


@pytest.fixture(scope="module")
def gated(timeouts_repository, tmp_path_factory):
    """(server, engine gate, tokenizer gate) on that repository."""
    from rerank_serving.server import TritonServer

    repository, engine, tokenizer = timeouts_repository
    tmp = tmp_path_factory.mktemp("deadlines-server")
    log = tmp / "tritonserver.log"
    server = TritonServer(repository, log_path=log)
    try:
        server.start(timeout_s=180)
    except Exception:
        print(log.read_text()[-5000:] if log.exists() else "no log")
        raise
    yield server, engine, tokenizer
    engine.open()
    tokenizer.open()
    server.stop()


@pytest.fixture(scope="module")
def gated_gateway(gated, tmp_path_factory):
    from rerank_serving.server import free_ports
    from rerank_serving.stack import GatewayProcess

    server = gated[0]
    log = tmp_path_factory.mktemp("deadlines-gateway") / "gateway.log"
    gateway = GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=log)
    gateway.start(60)
    gateway.wait_ready(60)
    yield gateway
    gateway.stop()


@pytest.fixture
def gates(gated):
    """Both gates open before and after each test."""
    _, engine, tokenizer = gated
    engine.open()
    tokenizer.open()
    yield engine, tokenizer
    engine.open()
    tokenizer.open()


def useful_tokens(server) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.ports.metrics}/metrics", timeout=10).read().decode()
    found = re.search(r'rerank_engine_tokens_total\{kind="useful"\} ([0-9.e+]+)', text)
    assert found, "the engine publishes its token counter"
    return float(found.group(1))


def gateway_metric(gateway, name: str) -> float:
    text = requests.get(gateway.url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def rank(url: str, passage: str, headers: dict | None = None) -> requests.Response:
    body = {"query": {"text": QUERY}, "passages": [{"text": passage}], "truncate": "END"}
    return requests.post(url + "/v1/ranking", json=body, headers=headers or {}, timeout=120)


def test_expired_request_costs_no_engine_time_grpc(gated, gates):
    """The client library's deadline reaches Triton as the request's timeout: the engine's queue drops a
    request that waited past it, and the caller gets DeadlineExceededError (not retried)."""
    server, _, _ = gated
    engine, _ = gates
    before = useful_tokens(server)
    runs = len(engine.executions())
    with RerankClient(server.grpc_url, "grpc", timeout_s=120, truncate="END") as client:
        engine.close()
        first = Worker(lambda: client.rerank(QUERY, ["the first passage holds the engine"]))
        first.start()
        engine.wait_for_executions(runs + 1)
        with pytest.raises(DeadlineExceededError):
            client.rerank(QUERY, ["the second passage waits past its deadline"], timeout_s=0.5)
        engine.open()
        held = first.check(120)
        third = client.rerank(QUERY, ["the third passage comes after"])
    spent = useful_tokens(server) - before
    assert spent == held[0].token_count + third[0].token_count, "the expired request was computed"
    assert [rows for _, rows in engine.executions()[runs:]] == [1, 1]


def test_deadline_header_costs_no_engine_time(gated, gates, gated_gateway):
    """On REST, the deadline header does the same: 504 for the caller, no engine time for its work."""
    server, _, _ = gated
    engine, _ = gates
    before = useful_tokens(server)
    runs = len(engine.executions())
    engine.close()
    first = Worker(lambda: rank(gated_gateway.url, "the first passage holds the engine"))
    first.start()
    engine.wait_for_executions(runs + 1)
    late = rank(gated_gateway.url, "the second passage waits past its deadline", {HEADER: "500"})
    assert late.status_code == 504, late.text
    engine.open()
    held = first.check(120)
    third = rank(gated_gateway.url, "the third passage comes after")
    assert held.status_code == third.status_code == 200
    spent = useful_tokens(server) - before
    assert spent == held.json()["usage"]["total_tokens"] + third.json()["usage"]["total_tokens"]


def test_disconnected_client_cancels_its_queued_work(gated, gates, gated_gateway):
    """A client that hangs up while its request waits in Triton (here: in the tokenizer) cancels it: the
    gateway cancels the gRPC call and Triton schedules no further step, so the engine never sees it."""
    server, _, _ = gated
    engine, tokenizer = gates
    before = useful_tokens(server)
    disconnects = gateway_metric(gated_gateway, "rerank_gateway_client_disconnects_total")
    steps = len(tokenizer.executions())
    tokenizer.close()
    body = (b'{"query": {"text": "%s"}, "passages": [{"text": "a passage whose client leaves"}]}' % QUERY.encode())
    host, port = gated_gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/ranking HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"X-Request-Id: leaving-client\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        tokenizer.wait_for_executions(steps + 1)
    # The gateway counts the disconnect once it has cancelled the request; then the gate opens
    # (the test's timeout bounds the wait).
    while gateway_metric(gated_gateway, "rerank_gateway_client_disconnects_total") < disconnects + 1:
        time.sleep(0.05)
    tokenizer.open()
    third = rank(gated_gateway.url, "the third passage comes after")
    assert third.status_code == 200, third.text
    spent = useful_tokens(server) - before
    assert spent == third.json()["usage"]["total_tokens"], "the engine computed the cancelled request"
    log = gated_gateway.log_path.read_text()
    assert re.search(r"\[leaving-client\].*client disconnected", log), log[-2000:]
    assert "never retrieved" not in log, log[-2000:]
    answered = requests.get(gated_gateway.url + "/metrics", timeout=10).text
    assert re.search(r'rerank_gateway_requests_total\{route="/v1/ranking",status="499"\} 1\.0', answered), answered


@pytest.mark.parametrize("value", ["soon", "-5", "0", "inf", "nan"])
def test_bad_deadline_header_is_a_400_naming_it(gateway, value):
    answer = rank(gateway.url, "a passage", {HEADER: value})
    assert answer.status_code == 400, answer.text
    assert HEADER in answer.json()["message"]


def test_request_timeouts_render_a_queue_policy_that_honours_them():
    """Triton lets a request only shorten a non-zero default timeout (0 means none): so the default is
    an hour, and overriding is allowed; the bound and the timeouts combine in one policy."""
    values = RepositorySettings(request_timeouts=True).template_values()
    assert values["queue_policy"] == ("default_queue_policy { default_timeout_microseconds: 3600000000 "
                                      "allow_timeout_override: true }")
    both = RepositorySettings(request_timeouts=True, max_queue_size=8).template_values()["queue_policy"]
    assert both.endswith("allow_timeout_override: true max_queue_size: 8 }")
    assert RepositorySettings().template_values()["queue_policy"] == ""


@pytest.mark.slow
def test_deadlines_tool_quick_run(tiny_repository, timeouts_repository, tmp_path):
    """``loadtests.deadlines`` runs both repositories and accounts for every request and engine token."""
    from loadtests import deadlines

    assert deadlines.main(["--repository", str(tiny_repository), "--timeouts-repository", str(timeouts_repository[0]),
                           "--label", "tiny", "--phase-s", "3", "--capacity-s", "3", "--deadline-ms", "300",
                           "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "deadlines-tiny.json").read_text())
    assert report["capacity_rps"] > 0
    assert [p["request_timeouts"] for p in report["phases"]] == [False, True]
    for phase in report["phases"]:
        assert phase["requests"] > 0 and phase["ok"] > 0 and phase["other"] == 0, phase
        assert phase["ok"] + phase["expired_504"] + phase["rejected_503"] == phase["requests"], phase
        assert phase["engine_tokens"] >= phase["answered_tokens"] > 0, "the engine computed every answered token"
    text = (tmp_path / "deadlines-tiny.md").read_text()
    assert "| off | on | 2x | 300 ms |" in text and "| on | on | 2x | 300 ms |" in text
