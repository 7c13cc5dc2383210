"""Deadlines the server honours, and a client that hangs up cancels its work (docs/operations.md, "Deadlines").

Against real tritonservers whose tokenizer and engine are held at gates the test opens
(tests/gated_models.py): no timing thresholds. The default repository (``deadlines`` on): the
tokenizer and the engine read each request's ``deadline_ns`` parameter and drop it, uncomputed, once
it cannot be answered in time; a repository built with ``--request-timeouts`` and ``--no-deadlines``:
Triton's own queue policy drops it in the engine's queue. Each test holds the engine (or the
tokenizer) with a first request, lets a second one expire (or its client leave) behind it, opens
the gate, then sends a third and waits for it: the engine runs in arrival order, so whatever the
second request would have cost is spent by then. The engine's own token counter
(``rerank_engine_tokens_total{kind="useful"}`` on Triton's metrics port) must have grown by the first
and third requests' tokens only.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import urllib.request

import numpy as np
import pytest
import requests

from gated_models import gate_model
from rerank_build.repository import RepositorySettings, build_repository
from rerank_client import DeadlineExceededError, RerankClient
from rerank_contract import deadline
from threads import Worker
from triton_helpers import infer_raw, texts

from conftest import TEST_LIMITS

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

QUERY = "what do deadlines do"
HEADER = "x-envoy-expected-rq-timeout-ms"
#: The repositories under test: our steps' own deadline checks (the default), Triton's queue policy alone.
VARIANTS = {"steps": {}, "queue_policy": {"request_timeouts": True, "deadlines": False}}


@contextlib.contextmanager
def _gated_server(tiny_checkpoint, tiny_onnx_fp32, tmp_path_factory, variant: str):
    """(server, engine gate, tokenizer gate) on the tiny repository built as ``variant``; gates open."""
    from rerank_serving.server import TritonServer

    tmp = tmp_path_factory.mktemp(f"deadlines-{variant}")
    repository = build_repository(tiny_checkpoint, tmp / "repo", RepositorySettings(**{**TEST_LIMITS, **VARIANTS[variant]}),
                                  onnx=tiny_onnx_fp32)
    engine, tokenizer = gate_model(repository, "engine", "input_ids", tmp), gate_model(repository, "tokenizer", "query", tmp)
    try:
        with TritonServer(repository, log_path=tmp / "tritonserver.log").start(timeout_s=180) as server:
            yield server, engine, tokenizer
    finally:
        engine.open()
        tokenizer.open()


@pytest.fixture(scope="module")
def gated(tiny_checkpoint, tiny_onnx_fp32, tmp_path_factory):
    """The default repository (deadlines checked by the tokenizer and the engine), gated."""
    with _gated_server(tiny_checkpoint, tiny_onnx_fp32, tmp_path_factory, "steps") as started:
        yield started


@pytest.fixture(scope="module")
def queue_gated(tiny_checkpoint, tiny_onnx_fp32, tmp_path_factory):
    """A repository where only Triton's queue policy honours deadlines (``--request-timeouts --no-deadlines``)."""
    with _gated_server(tiny_checkpoint, tiny_onnx_fp32, tmp_path_factory, "queue_policy") as started:
        yield started


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


def triton_metric(server, pattern: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.ports.metrics}/metrics", timeout=10).read().decode()
    found = re.search(pattern + r" ([0-9.e+]+)", text)
    assert found, f"Triton publishes {pattern}"
    return float(found.group(1))


def useful_tokens(server) -> float:
    return triton_metric(server, r'rerank_engine_tokens_total\{kind="useful"\}')


def tokenizer_answers(server) -> float:
    return triton_metric(server, r'nv_inference_request_success\{model="tokenizer",[^}]*\}')


def engine_expired(server) -> float:
    return triton_metric(server, r'rerank_engine_dropped_requests_total\{reason="deadline"\}')


def gateway_metric(gateway, name: str) -> float:
    text = requests.get(gateway.url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def rank(url: str, passage: str, headers: dict | None = None) -> requests.Response:
    body = {"query": {"text": QUERY}, "passages": [{"text": passage}], "truncate": "END"}
    return requests.post(url + "/v1/ranking", json=body, headers=headers or {}, timeout=120)


@pytest.mark.parametrize("variant", ["steps", "queue_policy"])
def test_expired_request_costs_no_engine_time_grpc(variant, request):
    """The client library's deadline reaches Triton (the ``deadline_ns`` parameter and the request's
    ``timeout``); a request that waited past it behind a held engine is dropped before the engine
    computes it (by the engine itself, or by Triton's queue policy), and the caller gets
    DeadlineExceededError (not retried)."""
    server, engine, tokenizer = request.getfixturevalue("gated" if variant == "steps" else "queue_gated")
    engine.open()
    tokenizer.open()
    before, expired = useful_tokens(server), engine_expired(server)
    runs = len(engine.executions())
    try:
        with RerankClient(server.grpc_url, "grpc", timeout_s=120, truncate="END") as client:
            engine.close()
            first = Worker(lambda: client.rerank(QUERY, ["the first passage holds the engine"]))
            first.start()
            engine.wait_for_executions(runs + 1)
            tokenized = tokenizer_answers(server)
            # 5 s: ample for the open tokenizer, so that the engine's queue is where it expires
            second = Worker(lambda: client.rerank(QUERY, ["the second passage waits past its deadline"], timeout_s=5.0))
            second.start()
            while tokenizer_answers(server) < tokenized + 1:  # tokenized: in (or entering) the engine's queue
                assert second.is_alive(), f"the second request ended before the engine: {second.error!r}"
                time.sleep(0.01)
            queued = time.time_ns()
            second.join(120)
            assert not second.is_alive() and isinstance(second.error, DeadlineExceededError), second.error
            # Triton's queue policy counts the timeout from the engine's enqueue, just before `queued`:
            # wait until it has passed there too (a precondition, with room for the enqueue itself).
            _wait_past(queued + 5 * 10**9 + 5 * 10**8)
            engine.open()
            held = first.check(120)
            third = client.rerank(QUERY, ["the third passage comes after"])
    finally:
        engine.open()
    spent = useful_tokens(server) - before
    assert spent == held[0].token_count + third[0].token_count, "the expired request was computed"
    if variant == "steps":  # handed to the engine, which dropped it uncomputed
        assert [rows for _, rows in engine.executions()[runs:]] == [1, 1, 1]
        assert engine_expired(server) == expired + 1
    else:  # dropped in the engine's queue: the engine never saw it
        assert [rows for _, rows in engine.executions()[runs:]] == [1, 1]
        assert engine_expired(server) == expired


def _raw_call(server, passage: str, due_ns: int, protocol: str = "grpc"):
    """One ensemble request carrying only the ``deadline_ns`` parameter: no RPC deadline, no Triton
    ``timeout``, so nothing but our steps' own checks can drop it (and the call is never cancelled)."""
    return infer_raw(server, protocol, {"query": texts([QUERY]), "passage": texts([passage])},
                     parameters={deadline.DEADLINE_PARAMETER: due_ns})


def _wait_past(due_ns: int) -> None:
    """Until the wall clock has passed ``due_ns``: the precondition, not a timing threshold."""
    while time.time_ns() <= due_ns:
        time.sleep(0.01)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tokenizer_drops_a_request_already_past_its_deadline(gated, gates, protocol):
    """A request held in the tokenizer past its deadline is answered "Request timeout expired" by the
    tokenizer; the engine never sees it. Over either protocol: the parameter is an int64 on gRPC, a
    JSON number on HTTP."""
    server, _, _ = gated
    engine, tokenizer = gates
    before, runs, steps = useful_tokens(server), len(engine.executions()), len(tokenizer.executions())
    due = deadline.deadline_ns(0.3)
    tokenizer.close()
    call = Worker(_raw_call, server, "a passage held in the tokenizer", due, protocol)
    call.start()
    tokenizer.wait_for_executions(steps + 1)
    _wait_past(due)
    tokenizer.open()
    call.join(120)
    assert not call.is_alive()
    assert call.error is not None and deadline.EXPIRED in str(call.error), call.error
    assert "dropped by the tokenizer" in str(call.error)
    fresh = _raw_call(server, "a passage with time to spare", deadline.deadline_ns(120), protocol)
    assert np.isfinite(fresh.as_numpy("logit")).all()
    assert [rows for _, rows in engine.executions()[runs:]] == [1], "the expired request reached the engine"
    assert useful_tokens(server) - before == int(fresh.as_numpy("token_count").sum())


def test_engine_drops_a_request_past_its_deadline_without_a_timeout(gated, gates):
    """The deadline parameter alone (no Triton ``timeout``, no RPC deadline, no cancellation) is enough:
    the engine answers the expired request "Request timeout expired" and computes only the others."""
    server, _, _ = gated
    engine, _ = gates
    before, expired, runs = useful_tokens(server), engine_expired(server), len(engine.executions())
    engine.close()
    first = Worker(_raw_call, server, "the first passage holds the engine", deadline.deadline_ns(120))
    first.start()
    engine.wait_for_executions(runs + 1)
    tokenized = tokenizer_answers(server)
    due = deadline.deadline_ns(5.0)  # ample for the open tokenizer: the engine's queue is where it expires
    second = Worker(_raw_call, server, "the second passage waits past its deadline", due)
    second.start()
    while tokenizer_answers(server) < tokenized + 1:  # the second request is in the engine's queue
        assert second.is_alive(), f"the second request ended before the engine: {second.error!r}"
        time.sleep(0.01)
    _wait_past(due)
    engine.open()
    held = first.check(120)
    second.join(120)
    assert not second.is_alive()
    assert second.error is not None and "dropped by the engine" in str(second.error), second.error
    spent = useful_tokens(server) - before
    assert spent == int(held.as_numpy("token_count").sum()), "the expired request was computed"
    assert engine_expired(server) == expired + 1


def test_deadline_header_costs_no_engine_time(gated, gates, gated_gateway):
    """On REST, the deadline header does the same: 504 for the caller, no engine time for its work."""
    server, _, _ = gated
    engine, _ = gates
    before, expired = useful_tokens(server), engine_expired(server)
    runs = len(engine.executions())
    engine.close()
    first = Worker(lambda: rank(gated_gateway.url, "the first passage holds the engine"))
    first.start()
    engine.wait_for_executions(runs + 1)
    tokenized = tokenizer_answers(server)
    # 5 s: ample for the open tokenizer, so that the engine is where it expires
    second = Worker(lambda: rank(gated_gateway.url, "the second passage waits past its deadline", {HEADER: "5000"}))
    second.start()
    while tokenizer_answers(server) < tokenized + 1:  # in the engine's queue
        assert second.is_alive(), f"the second request ended before reaching the engine: {second.error or second.result}"
        time.sleep(0.01)
    queued = time.time_ns()
    late = second.check(120)
    assert late.status_code == 504, late.text
    _wait_past(queued + 5 * 10**9)  # its deadline has passed in the engine too (a precondition)
    engine.open()
    held = first.check(120)
    third = rank(gated_gateway.url, "the third passage comes after")
    assert held.status_code == third.status_code == 200
    spent = useful_tokens(server) - before
    assert spent == held.json()["usage"]["total_tokens"] + third.json()["usage"]["total_tokens"]
    assert engine_expired(server) == expired + 1


def test_disconnected_client_cancels_its_queued_work(gated, gates, gated_gateway):
    """A client that hangs up while its request waits in Triton (here: in the tokenizer) cancels it: the
    gateway cancels the gRPC call and Triton runs no further step of it, so the engine never computes it."""
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
def test_deadlines_tool_quick_run(tiny_checkpoint, tiny_onnx_fp32, tiny_repository, tmp_path):
    """``loadtests.deadlines`` runs both repositories, with and without admission, and accounts for
    every request and engine token."""
    from loadtests import deadlines

    off = build_repository(tiny_checkpoint, tmp_path / "off", RepositorySettings(**{**TEST_LIMITS, "deadlines": False}),
                           onnx=tiny_onnx_fp32)
    assert deadlines.main(["--repository", str(tiny_repository), "--off-repository", str(off), "--admission", "both",
                           "--label", "tiny", "--phase-s", "3", "--capacity-s", "3", "--deadline-ms", "300",
                           "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "deadlines-tiny.json").read_text())
    assert report["capacity_rps"] > 0
    assert [(p["variant"], p["admission"]) for p in report["phases"]] == [
        ("off", True), ("steps", True), ("off", False), ("steps", False)]
    for phase in report["phases"]:  # how many answer in time depends on the machine; every one is accounted
        assert phase["requests"] > 0 and phase["other"] == 0, phase
        assert phase["ok"] + phase["expired_504"] + phase["rejected_503"] == phase["requests"], phase
        assert phase["engine_tokens"] >= phase["answered_tokens"], "the engine computed every answered token"
        if phase["variant"] == "off":
            assert phase["engine_expired"] == 0, "a repository built with --no-deadlines dropped work"
    assert any(phase["ok"] for phase in report["phases"]), "nothing was answered in time in any phase"
    text = (tmp_path / "out" / "deadlines-tiny.md").read_text()
    assert "| off | on | 2x | 300 ms |" in text and "| steps | off | 2x | 300 ms |" in text
