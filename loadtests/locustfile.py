"""Locust load test of the reranker: the REST gateway, and the ensemble over gRPC and KServe HTTP.

User classes (pick on the command line; all by default):
- ``RestGatewayUser``: NIM's ``POST /v1/ranking`` on the REST gateway, every passage in one request
  (the gateway splits it with the client library);
- ``GrpcClientUser`` / ``HttpClientUser``: through our client library (``rerank_client``);
- ``GrpcRawUser`` / ``HttpRawUser``: raw tritonclient sending the SAME requests (the client's plan,
  one after another), so the client library's overhead is visible side by side.
Each task is one rerank call from the seeded workload (``loadtests/workload.py``), reported as
type ``<protocol>-<client|raw>``, name ``rerank``; Locust's "content size" of a call is its number of
pairs, so pairs/s = requests/s x average content size.

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 60s --grpc-url localhost:8001 \
        --http-url localhost:8003 --gateway-url http://localhost:8000
"""

from __future__ import annotations

import itertools
import json
import time

# gRPC must cooperate with gevent before any channel exists (docs/triton.md, "Locust and gRPC").
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import gevent  # noqa: E402
from geventhttpclient import URL, HTTPClient  # noqa: E402
from locust import User, between, constant, constant_throughput, events, task  # noqa: E402

from loadtests.workload import Workload, WorkloadSpec  # noqa: E402
from rerank_client import RerankClient, ServerLimits  # noqa: E402
from rerank_client.core import TokenEstimator, plan_requests  # noqa: E402
from rerank_client.errors import (  # noqa: E402
    DeadlineExceededError, InputTooLongError, InvalidInputError, RerankError, ServerUnavailableError, classify,
)
from rerank_client.tensors import (  # noqa: E402
    DEFAULT_ENSEMBLE_NAME, build_inputs, build_outputs, parse_result, protocol_module, request_parameters,
)
from rerank_contract.ports import DEFAULT as DEFAULT_PORTS  # noqa: E402

_worker_ids = itertools.count()
#: Every client opened by a user; closed again at test stop, also for users Locust had to kill
#: (an open gRPC channel makes Locust hang at exit).
_open_clients: list = []


@events.test_stop.add_listener
def _close_clients(**_kwargs) -> None:
    while _open_clients:
        try:
            _open_clients.pop().close()
        except Exception:  # noqa: BLE001 - closing twice or a broken channel
            pass


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("reranker")
    group.add_argument("--grpc-url", default=f"localhost:{DEFAULT_PORTS.grpc}", env_var="GRPC_URL")
    group.add_argument("--http-url", default=f"localhost:{DEFAULT_PORTS.triton_http}", env_var="HTTP_URL", help="Triton's KServe HTTP")
    group.add_argument("--gateway-url", default=f"http://localhost:{DEFAULT_PORTS.rest}", env_var="GATEWAY_URL", help="the REST API")
    group.add_argument("--model", default=DEFAULT_ENSEMBLE_NAME)
    group.add_argument("--workload-seed", type=int, default=0)
    group.add_argument("--passages", default="10,50,100", help="passages per request, drawn from this mix")
    group.add_argument("--lengths", default="", help="token length mix, e.g. 0.85:50-500,0.12:500-2000,0.03:2000-4000")
    group.add_argument("--pacing", default="none",
                       help="none | constant:SECONDS | between:MIN-MAX | throughput:CALLS_PER_SECOND (per user)")
    group.add_argument("--truncate", default="END", choices=["END", "NONE"])
    group.add_argument("--timeout-s", type=float, default=300.0,
                       help="deadline of a rerank call (client users) or of each infer call (raw users); a "
                            "saturated CPU server answers large requests in tens of seconds")
    group.add_argument("--client-concurrency", type=int, default=1,
                       help="requests in flight per call in the client library (1: same as the raw users)")


def _wait_time(pacing: str):
    kind, _, value = pacing.partition(":")
    if kind == "none":
        return constant(0)
    if kind == "constant":
        return constant(float(value))
    if kind == "between":
        low, high = value.split("-")
        return between(float(low), float(high))
    if kind == "throughput":
        return constant_throughput(float(value))
    raise ValueError(f"unknown --pacing {pacing!r}")


class _WorkloadUser(User):
    """Pacing and the seeded workload, shared by every user class."""

    abstract = True

    def wait_time(self):  # type: ignore[override]
        if not hasattr(self, "_pacer"):
            self._pacer = _wait_time(self.environment.parsed_options.pacing)
        return self._pacer(self)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.truncate = opts.truncate
        self.timeout_s = opts.timeout_s
        self.workload = Workload(WorkloadSpec.parse(opts.workload_seed, opts.passages, opts.lengths or None),
                                 worker=next(_worker_ids))

    def report(self, request_type: str, started: float, pairs: int, exception: Exception | None) -> None:
        events.request.fire(request_type=request_type, name="rerank",
                            response_time=(time.perf_counter() - started) * 1000, response_length=pairs,
                            exception=exception, context={})


class RestGatewayUser(_WorkloadUser):
    """NIM's ``POST /v1/ranking`` on the gateway (geventhttpclient: gevent-native, keep-alive)."""

    def on_start(self) -> None:
        super().on_start()
        url = URL(self.environment.parsed_options.gateway_url)
        self.http = HTTPClient.from_url(url, concurrency=1, network_timeout=self.timeout_s,
                                        connection_timeout=self.timeout_s)
        _open_clients.append(self.http)

    def on_stop(self) -> None:
        self.http.close()
        if self.http in _open_clients:
            _open_clients.remove(self.http)

    @task
    def rerank(self) -> None:
        request = self.workload.request()
        body = json.dumps({"query": {"text": request.query}, "passages": [{"text": p} for p in request.passages],
                           "truncate": self.truncate}).encode()
        started = time.perf_counter()
        exception = None
        retry_after = 0.0
        try:
            response = self.http.post("/v1/ranking", body=body, headers={"Content-Type": "application/json"})
            answer = json.loads(response.read())
            if response.status_code != 200:
                exception = rest_error(response.status_code, answer.get("message", ""))
                retry_after = float(response.get("retry-after") or 0) if response.status_code == 503 else 0.0
            elif len(answer["rankings"]) != request.pairs:
                exception = RerankError(f"wrong answer: {len(answer['rankings'])} rankings for {request.pairs} passages")
        except Exception as exc:  # noqa: BLE001 - reported to Locust
            exception = exc
        self.report("rest-gateway", started, request.pairs, exception)
        if retry_after:  # the gateway's admission control asked this user to come back later
            gevent.sleep(retry_after)


class AdmissionRejected(ServerUnavailableError):
    """The gateway's admission budget was full (503 "Overloaded: ..."): a kind of its own, because at
    saturation it is the designed answer, unlike Triton being unavailable."""


def rest_error(status: int, message: str) -> RerankError:
    """A gateway error answer as the client library's typed error, so that failures group by the same kinds."""
    if status == 503 and message.startswith("Overloaded:"):
        return AdmissionRejected(message, str(status))
    if status in (400, 413, 422):  # 422: NIM's status for an over-long pair under truncate NONE
        cls = InputTooLongError if "exceeds maximum allowed token size" in message else InvalidInputError
    else:
        cls = {503: ServerUnavailableError, 504: DeadlineExceededError}.get(status, RerankError)
    return cls(message, str(status))


class RerankUser(_WorkloadUser):
    abstract = True
    protocol = "grpc"
    via_client = True

    def on_start(self) -> None:
        super().on_start()
        opts = self.environment.parsed_options
        self.url = opts.grpc_url if self.protocol == "grpc" else opts.http_url
        self.model = opts.model
        self.client = RerankClient(self.url, self.protocol, model=self.model, truncate=self.truncate,
                                   max_concurrency=opts.client_concurrency, timeout_s=self.timeout_s)
        _open_clients.append(self.client)
        self.limits: ServerLimits = self.client.limits
        self.estimator = TokenEstimator()
        if not self.via_client:
            module = protocol_module(self.protocol)
            # The same deadline as the client users: tritonclient's HTTP client gives up after 60 s by default.
            self.raw = (module.InferenceServerClient(self.url, network_timeout=self.timeout_s)
                        if self.protocol == "http" else module.InferenceServerClient(self.url))
            _open_clients.append(self.raw)

    def on_stop(self) -> None:
        # Without closing, Locust hangs at exit in gRPC channel cleanup.
        for client in [self.client] + ([] if self.via_client else [self.raw]):
            client.close()
            if client in _open_clients:
                _open_clients.remove(client)

    @task
    def rerank(self) -> None:
        request = self.workload.request()
        started = time.perf_counter()
        exception = None
        try:
            if self.via_client:
                self.client.rerank(request.query, list(request.passages))
            else:
                self._raw(request.query, list(request.passages))
        except Exception as exc:  # noqa: BLE001 - reported to Locust, typed
            exception = classify(exc)
        self.report(f"{self.protocol}-{'client' if self.via_client else 'raw'}", started, request.pairs, exception)

    def _raw(self, query: str, passages: list[str]) -> None:
        """The client's plan, sent with plain tritonclient calls one after another."""
        module = protocol_module(self.protocol)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        chunks = plan_requests(self.estimator.estimate(query, passages), self.limits,
                               self.client.max_rows_per_request, self.truncate)
        for chunk in chunks:
            parse_result(self.raw.infer(self.model, build_inputs(module, query, [passages[i] for i in chunk]),
                                        outputs=build_outputs(module),
                                        parameters=request_parameters(self.truncate), **kwargs))


class GrpcClientUser(RerankUser):
    protocol, via_client = "grpc", True


class HttpClientUser(RerankUser):
    protocol, via_client = "http", True


class GrpcRawUser(RerankUser):
    protocol, via_client = "grpc", False


class HttpRawUser(RerankUser):
    protocol, via_client = "http", False
