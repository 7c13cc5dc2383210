"""A real OTLP/HTTP trace receiver for tests: what a collector does with ``POST /v1/traces``, no more.

It decodes each export with the OpenTelemetry protocol's own messages (``opentelemetry-proto``),
answers an ``ExportTraceServiceResponse`` and keeps the spans, so a test sees exactly what an
exporter sent over the wire (the gateway's SDK exporter, or tritonserver's own OpenTelemetry tracer).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str  # "" for a root span
    attributes: dict
    start_ns: int
    end_ns: int


class OtlpReceiver:
    """``with OtlpReceiver() as r:`` listens on a free port; ``r.endpoint`` is its base URL."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if "json" in (self.headers.get("Content-Type") or ""):
                    receiver._add_json(json.loads(body))
                else:
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    spans.append(ReceivedSpan(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                              s.parent_span_id.hex(), attributes, s.start_time_unix_nano,
                                              s.end_time_unix_nano))
        with self._lock:
            self.spans.extend(spans)
            self.exports += 1

    def _add_json(self, request: dict) -> None:
        """OTLP/JSON (tritonserver's exporter sends it): ids are hex strings, as the OTLP spec says."""
        spans = []
        for resource_spans in request.get("resourceSpans", request.get("resource_spans", [])):
            resource = resource_spans.get("resource", {})
            service = next((a["value"].get("stringValue") or a["value"].get("string_value", "")
                            for a in resource.get("attributes", []) if a["key"] == "service.name"), "")
            for scope_spans in resource_spans.get("scopeSpans", resource_spans.get("scope_spans", [])):
                for s in scope_spans.get("spans", []):
                    attributes = {a["key"]: next(iter(a["value"].values()), None) for a in s.get("attributes", [])}
                    spans.append(ReceivedSpan(service, s["name"], s.get("traceId", s.get("trace_id", "")).lower(),
                                              s.get("spanId", s.get("span_id", "")).lower(),
                                              s.get("parentSpanId", s.get("parent_span_id", "")).lower(),
                                              attributes, int(s.get("startTimeUnixNano", s.get("start_time_unix_nano", 0))),
                                              int(s.get("endTimeUnixNano", s.get("end_time_unix_nano", 0)))))
        with self._lock:
            self.spans.extend(spans)
            self.exports += 1

    def wait_for(self, predicate, timeout_s: float = 30.0) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds; AssertionError with what came when it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"the spans never matched; received {[(s.service, s.name) for s in spans]}")

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _value(value) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
