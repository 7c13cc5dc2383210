"""A request you can follow: ``X-Request-Id``, ``Server-Timing``, W3C trace context, OTLP spans, logs.

- **X-Request-Id**: the client's (when it is a sane token), else a generated one; echoed on every
  response and put into every log line written while the request is answered (:class:`RequestIdFilter`).
- **Server-Timing**: ``total`` (arrival to the response's start) and each stage measured here
  (:meth:`RequestTrace.stage`), in milliseconds, e.g. ``triton;dur=11.8, total;dur=13.1``.
- **Trace context**: an incoming W3C ``traceparent`` (and ``tracestate``) is honoured. With
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) set, each request is a server span,
  child of the caller's, exported over OTLP/HTTP by the OpenTelemetry SDK (the standard ``OTEL_*``
  variables apply: service name, sampler, batch delays); the span's context goes to Triton as
  ``traceparent``, so tritonserver started with ``--trace-config mode=opentelemetry`` hangs its
  spans (ensemble, tokenizer, engine, postprocess, with queue and compute timestamps) under it.
  Without an endpoint, an incoming ``traceparent`` is passed to Triton unchanged.

One :class:`RequestTrace` per request, in a context variable: the routes and the scorer reach it
through :func:`current` without it being threaded through every call.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
#: A client's id is kept when it is a plain token of at most this many characters, else replaced:
#: it goes into headers and log lines, so no spaces, quotes or control characters.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,%d}" % MAX_REQUEST_ID)
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
#: Names of the OTLP endpoint variables; either one turns span export on.
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class RequestTrace:
    """What one request carries while it is answered."""

    request_id: str
    started: float = field(default_factory=time.monotonic)
    headers: Mapping[str, str] = field(default_factory=dict)  # the request's, lower-case names
    stages: dict[str, float] = field(default_factory=dict)  # name -> seconds, in the order measured
    span: Any = None  # the OpenTelemetry span, when spans are exported

    def stage(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (a stage measured twice, e.g. two Triton calls, adds up)."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def server_timing(self) -> str:
        """The ``Server-Timing`` value: each stage, then ``total``, in milliseconds."""
        parts = [f"{name};dur={seconds * 1000:.1f}" for name, seconds in self.stages.items()]
        return ", ".join([*parts, f"total;dur={self.elapsed() * 1000:.1f}"])

    def triton_headers(self) -> dict[str, str]:
        """Headers for this request's Triton calls: the W3C trace context (ours, else the caller's)
        and the request id, which Triton's log prints beside the request when it logs it."""
        out = {REQUEST_ID_HEADER: self.request_id}
        if self.span is not None:
            from opentelemetry.trace import set_span_in_context
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            TraceContextTextMapPropagator().inject(out, context=set_span_in_context(self.span))
        elif _TRACEPARENT.fullmatch(self.headers.get("traceparent", "")):
            out["traceparent"] = self.headers["traceparent"]
            if "tracestate" in self.headers:
                out["tracestate"] = self.headers["tracestate"]
        return out


_current: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("rerank_request", default=None)


def current() -> RequestTrace | None:
    """The request being answered in this task, or None outside of one."""
    return _current.get()


class RequestIdFilter(logging.Filter):
    """Gives every log record a ``request_id`` (``-`` outside of a request), for the log formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace = _current.get()
        record.request_id = trace.request_id if trace is not None else "-"
        return True


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup with the request id in every line (access lines included), for the
    root logger too: worker processes start from this, not from the parent's ``basicConfig``."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG, "filters": {"request_id": {"()": RequestIdFilter}}}
    config["formatters"] = {
        "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s [%(request_id)s] %(message)s"},
        "access": {"()": "uvicorn.logging.AccessFormatter",
                   "fmt": '%(levelprefix)s [%(request_id)s] %(client_addr)s - "%(request_line)s" %(status_code)s'},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"},
    }
    config["handlers"] = {
        **{name: {**handler, "filters": ["request_id"]} for name, handler in LOGGING_CONFIG["handlers"].items()},
        "plain": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["request_id"],
                  "stream": "ext://sys.stderr"},
    }
    config["root"] = {"handlers": ["plain"], "level": level.upper()}
    return config


class Spans:
    """The OpenTelemetry tracer when an OTLP endpoint is configured (None otherwise), and its flush."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.tracer: Any = None
        self._provider: Any = None
        if not any(env.get(name) for name in OTLP_ENDPOINT_VARIABLES):
            return
        # Imported only when used: the SDK and its exporter cost start-up time nobody else needs.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from . import __version__

        # Resource.create reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES over these defaults; the
        # sampler comes from OTEL_TRACES_SAMPLER (default: follow the caller's sampled flag, else sample).
        resource = Resource.create({"service.name": "rerank-gateway", "service.version": __version__})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self._provider.get_tracer("rerank_gateway", __version__)
        logger.info("exporting spans over OTLP/HTTP to %s",
                    next(env[name] for name in OTLP_ENDPOINT_VARIABLES if env.get(name)))

    def start(self, scope: Scope, headers: Mapping[str, str], request_id: str) -> Any:
        if self.tracer is None:
            return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(dict(headers))
        return self.tracer.start_span(f"{scope.get('method', 'HTTP')} {scope.get('path', '')}", context=parent,
                                      kind=SpanKind.SERVER,
                                      attributes={"http.request.method": scope.get("method", ""),
                                                  "url.path": scope.get("path", ""),
                                                  "rerank.request_id": request_id})

    def shutdown(self) -> None:
        """Export what is buffered (at the worker's exit)."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None
            self.tracer = None


def end_span(span: Any, status: int, trace: RequestTrace) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    for name, seconds in trace.stages.items():
        span.set_attribute(f"rerank.stage.{name}_ms", round(seconds * 1000, 3))
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


class TracingMiddleware:
    """Outermost: every response, errors and 413s included, carries the id and the timings."""

    def __init__(self, app: ASGIApp, spans: Spans) -> None:
        self.app = app
        self.spans = spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get(REQUEST_ID_HEADER, "")
        trace = RequestTrace(given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex, headers=headers)
        trace.span = self.spans.start(scope, headers, trace.request_id)
        token = _current.set(trace)
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [
                    *[(k, v) for k, v in message.get("headers", [])
                      if k.lower() not in (b"x-request-id", b"server-timing")],
                    (b"x-request-id", trace.request_id.encode()),
                    (b"server-timing", trace.server_timing().encode()),
                ]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path_format", None)
            if route and trace.span is not None:
                trace.span.update_name(f"{scope.get('method', '')} {route}")
            end_span(trace.span, status, trace)
            _current.reset(token)
