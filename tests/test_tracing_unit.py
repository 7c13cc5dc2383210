"""The pieces of tracing and deadlines that need no server: budgets, trace-context pass-through, log setup."""

from __future__ import annotations

import logging

import pytest

from rerank_gateway import tracing
from rerank_gateway.deadlines import budget_s
from rerank_gateway.errors import ApiError

HEADER = "x-envoy-expected-rq-timeout-ms"


def trace(**headers: str) -> tracing.RequestTrace:
    return tracing.RequestTrace("id-1", headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_budget_is_the_smaller_of_the_header_and_the_setting_counted_from_arrival():
    assert budget_s(None, HEADER, 60.0) == 60.0
    assert 59.0 < budget_s(trace(), HEADER, 60.0) <= 60.0
    assert 0.4 < budget_s(trace(x_envoy_expected_rq_timeout_ms="500"), HEADER, 60.0) <= 0.5
    assert 59.0 < budget_s(trace(x_envoy_expected_rq_timeout_ms="900000"), HEADER, 60.0) <= 60.0
    old = trace(x_envoy_expected_rq_timeout_ms="1")
    old.started -= 1.0  # arrived a second ago
    with pytest.raises(ApiError) as spent:
        budget_s(old, HEADER, 60.0)
    assert spent.value.status == 504


@pytest.mark.parametrize("value", ["soon", "", "-1", "0", "inf", "nan", "1e400"])
def test_a_bad_deadline_header_is_a_400_naming_it(value):
    with pytest.raises(ApiError) as bad:
        budget_s(trace(x_envoy_expected_rq_timeout_ms=value), HEADER, 60.0)
    assert bad.value.status == 400 and HEADER in bad.value.message


def test_only_a_valid_traceparent_goes_to_triton():
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    sent = trace(traceparent=good, tracestate="k=v").triton_headers()
    assert sent == {"x-request-id": "id-1", "traceparent": good, "tracestate": "k=v"}
    for bad in ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage", good.upper(), good + "-x"):
        assert trace(traceparent=bad, tracestate="k=v").triton_headers() == {"x-request-id": "id-1"}, bad


def test_server_timing_lists_stages_in_order_then_total():
    t = trace()
    t.stage("triton", 0.010)
    t.stage("tokenize", 0.001)
    t.stage("triton", 0.005)  # a second call adds up
    header = t.server_timing()
    assert header.startswith("triton;dur=15.0, tokenize;dur=1.0, total;dur=")


def test_every_log_line_can_carry_the_request_id():
    config = tracing.log_config("info")
    assert config["root"] == {"handlers": ["plain"], "level": "INFO"}
    for name, handler in config["handlers"].items():
        assert handler["filters"] == ["request_id"], name
    for name, formatter in config["formatters"].items():
        assert "%(request_id)s" in (formatter.get("fmt") or formatter.get("format")), name
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert tracing.RequestIdFilter().filter(record) and record.request_id == "-"


def test_no_exporter_without_an_endpoint():
    assert tracing.Spans({}).tracer is None
    spans = tracing.Spans({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        assert spans.tracer is not None
    finally:
        spans.shutdown()
