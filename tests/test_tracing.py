"""A request you can follow: X-Request-Id, Server-Timing, W3C trace context to Triton, OTLP spans.

Against the real gateway and tritonserver; the spans go to a real OTLP/HTTP receiver
(tests/otlp_receiver.py) from both exporters: the gateway's OpenTelemetry SDK and tritonserver's own
tracer (``--trace-config mode=opentelemetry``), so the test sees one trace across both services.
"""

from __future__ import annotations

import contextlib
import os
import re

import pytest
import requests

from otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

BODY = {"query": {"text": "which passage"}, "passages": [{"text": "this one"}, {"text": "or that one"}]}
TIMING = re.compile(r"([a-z]+);dur=([0-9.]+)")


def timings(response: requests.Response) -> dict[str, float]:
    return {name: float(ms) for name, ms in TIMING.findall(response.headers.get("Server-Timing", ""))}


def test_request_id_is_echoed_and_in_the_logs(gateway):
    answer = requests.post(gateway.url + "/v1/ranking", json=BODY, headers={"X-Request-Id": "trace-me-42"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Request-Id"] == "trace-me-42"
    stages = timings(answer)
    assert list(stages) == ["triton", "tokenize", "engine", "postprocess", "total"], answer.headers["Server-Timing"]
    assert 0 < stages["triton"] <= stages["total"]
    # The ensemble's own stages lie within the gateway's Triton round trip (0.2 ms: the header's rounding)
    assert stages["tokenize"] > 0 and stages["engine"] > 0 and stages["postprocess"] >= 0
    assert stages["tokenize"] + stages["engine"] + stages["postprocess"] <= stages["triton"] + 0.2
    log = gateway.log_path.read_text()
    assert re.search(r'\[trace-me-42\].*"POST /v1/ranking HTTP/1.1" 200', log), log[-2000:]


@pytest.mark.parametrize("given", [None, "has a space", "x" * 129, "quote\""])
def test_request_id_is_generated_when_missing_or_unfit(gateway, given):
    headers = {} if given is None else {"X-Request-Id": given}
    answer = requests.post(gateway.url + "/v1/ranking", json=BODY, headers=headers, timeout=60)
    assert answer.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-Id"]), answer.headers["X-Request-Id"]


def test_errors_and_other_routes_carry_the_id_and_total(gateway):
    for method, path, body in (("post", "/v1/ranking", {"query": {"text": "q"}}), ("get", "/v1/models", None),
                               ("post", "/v1/ranking", {**BODY, "model": "no-such-model"})):
        answer = getattr(requests, method)(gateway.url + path, json=body, headers={"X-Request-Id": "err-1"}, timeout=60)
        assert answer.headers["X-Request-Id"] == "err-1", (path, answer.status_code)
        assert "total" in timings(answer), (path, answer.headers.get("Server-Timing"))


@contextlib.contextmanager
def environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def traced(tiny_repository, tmp_path_factory):
    """(receiver, tritonserver exporting its spans to it, gateway exporting to it, gateway that does not)."""
    from rerank_serving.server import TritonServer, free_ports
    from rerank_serving.stack import GatewayProcess

    tmp = tmp_path_factory.mktemp("tracing")
    with OtlpReceiver() as receiver:
        url = receiver.endpoint.removeprefix("http://") + "/v1/traces"
        server = TritonServer(tiny_repository, log_path=tmp / "tritonserver.log", extra_args=[
            "--trace-config", "mode=opentelemetry", "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", f"opentelemetry,url={url}",
            "--trace-config", "opentelemetry,resource=service.name=tritonserver"])
        server.start(timeout_s=180)
        gateways = []
        try:
            with environment(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50"):
                gateways.append(GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=tmp / "exporting.log"))
                gateways[-1].start(60)
            gateways.append(GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=tmp / "plain.log"))
            gateways[-1].start(60)
            for g in gateways:
                g.wait_ready(60)
            yield receiver, server, gateways[0], gateways[1]
        finally:
            for g in gateways:
                g.stop()
            server.stop()


def test_spans_are_exported_and_joined_by_triton(traced):
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the gateway's span is the caller's child, and tritonserver's
    spans (the request, the ensemble, each step) hang under the gateway's span: one trace."""
    receiver, _, exporting, _ = traced
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    answer = requests.post(exporting.url + "/v1/ranking", json=BODY, timeout=60,
                           headers={"traceparent": f"00-{trace_id}-{caller}-01", "X-Request-Id": "span-1"})
    assert answer.status_code == 200, answer.text

    def complete(spans) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return any(s.service == "rerank-gateway" for s in mine) and {"InferRequest", "engine"} <= {s.name for s in mine}

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    (gateway_span,) = [s for s in spans if s.service == "rerank-gateway"]
    assert gateway_span.parent_span_id == caller
    assert gateway_span.name == "POST /v1/ranking"
    assert gateway_span.attributes["http.response.status_code"] == 200
    assert gateway_span.attributes["rerank.request_id"] == "span-1"
    assert {f"rerank.stage.{s}_ms" for s in ("triton", "tokenize", "engine", "postprocess")} <= set(gateway_span.attributes)
    (triton_request,) = [s for s in spans if s.name == "InferRequest"]
    assert triton_request.service == "tritonserver"
    assert triton_request.parent_span_id == gateway_span.span_id, "Triton's trace hangs under the gateway's span"
    assert {"tokenizer", "engine", "postprocess"} <= {s.name for s in spans}


def test_traceparent_passes_through_without_an_exporter(traced):
    """Without an OTLP endpoint the gateway exports nothing but hands the caller's context to Triton."""
    receiver, _, _, plain = traced
    trace_id, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    answer = requests.post(plain.url + "/v1/ranking", json=BODY, timeout=60,
                           headers={"traceparent": f"00-{trace_id}-{caller}-01"})
    assert answer.status_code == 200, answer.text
    spans = receiver.wait_for(lambda got: any(s.trace_id == trace_id and s.name == "InferRequest" for s in got))
    mine = [s for s in spans if s.trace_id == trace_id]
    (triton_request,) = [s for s in mine if s.name == "InferRequest"]
    assert triton_request.parent_span_id == caller
    assert not [s for s in mine if s.service == "rerank-gateway"]
