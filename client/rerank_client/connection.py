"""How to reach the server: URL, protocol, TLS, headers; builds tritonclient clients of either kind.

Over gRPC the URL may name several Triton replicas, and every request then goes to the next ready
one (gRPC's ``round_robin`` policy: a replica whose connection fails is skipped until it reconnects;
a replica that fails a request, e.g. one whose python stub died, has it retried on the next):
- ``host1:8001,host2:8001`` (each host resolved once, here);
- ``dns:///triton-headless.ns.svc:8001``, gRPC re-resolving the name (a Kubernetes headless Service:
  every ready pod) at most every 10 s, and at once after a connection fails;
- ``ipv4:10.0.0.1:8001,10.0.0.2:8001`` or ``ipv6:...``, gRPC's own forms.
A long-lived channel to a plain Service would stick to one pod: Services balance connections, not
requests.
"""

from __future__ import annotations

import json
import os
import socket
import ssl as ssl_module
from dataclasses import dataclass
from typing import Any

from rerank_contract.ports import DEFAULT as DEFAULT_PORTS

from .tensors import DEFAULT_ENSEMBLE_NAME, protocol_module

_MAX_MESSAGE = 2**31 - 1
#: Where ``make serve`` (NIM's layout) puts each protocol: Triton gRPC on 8001, Triton's KServe HTTP
#: on 8003 (8000 is the REST gateway's, which speaks NIM's /v1/ranking, not KServe).
DEFAULT_URLS = {"grpc": f"localhost:{DEFAULT_PORTS.grpc}", "http": f"localhost:{DEFAULT_PORTS.triton_http}"}
#: Round robin over every resolved address. No client-side health checks: they need the health
#: service's streaming Watch, which Triton 2.51 does not implement (only Check); gRPC would log an
#: error per connection and treat every server as healthy anyway.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def grpc_target(url: str) -> str:
    """The gRPC target for one endpoint or several (module docstring); a single one is unchanged."""
    if url.startswith(("dns:", "ipv4:", "ipv6:", "unix:")) or "," not in url:
        return url
    addresses = []
    for endpoint in (part.strip() for part in url.split(",") if part.strip()):
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"endpoint {endpoint!r} in {url!r} is not HOST:PORT")
        infos = socket.getaddrinfo(host.strip("[]"), int(port), socket.AF_INET, socket.SOCK_STREAM)
        addresses.append(f"{infos[0][4][0]}:{port}")
    return "ipv4:" + ",".join(addresses)


def _strip_scheme(url: str) -> tuple[str, bool]:
    for scheme, tls in (("grpcs://", True), ("https://", True), ("grpc://", False), ("http://", False)):
        if url.startswith(scheme):
            return url[len(scheme):], tls
    return url, False


@dataclass
class ConnectionSettings:
    url: str | None
    protocol: str = "grpc"
    model: str | None = None
    timeout_s: float = 60.0
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.module = protocol_module(self.protocol)  # validates the protocol
        self.url, tls = _strip_scheme(self.url or DEFAULT_URLS[self.protocol])
        self.ssl = self.ssl or tls
        if self.protocol == "grpc":
            self.url = grpc_target(self.url)
        elif "," in self.url:
            raise ValueError("several endpoints need protocol='grpc' (KServe HTTP takes one URL)")
        self.model = self.model or DEFAULT_ENSEMBLE_NAME
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.headers and self.protocol == "grpc":
            self.headers = {k.lower(): v for k, v in self.headers.items()}  # gRPC metadata keys are lowercase
        # A missing file fails every attempt alike: say so now, instead of retrying until the deadline.
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name} file {path!r} does not exist")

    # gRPC: reconnect quickly after a server restart (the default backoff grows to 120 s); spread
    # requests over every address the target resolves to (one address: no difference).
    def _grpc_channel_args(self) -> list[tuple[str, int | str]]:
        return [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.service_config", SERVICE_CONFIG),
                ("grpc.dns_min_time_between_resolutions_ms", 10000)]

    def _ssl_context(self) -> ssl_module.SSLContext:
        context = ssl_module.create_default_context(cafile=self.root_certificates)
        if self.certificate_chain:
            context.load_cert_chain(self.certificate_chain, self.private_key)
        return context

    def sync_client(self) -> Any:
        if self.protocol == "grpc":
            return self.module.InferenceServerClient(
                self.url, ssl=self.ssl, root_certificates=self.root_certificates, private_key=self.private_key,
                certificate_chain=self.certificate_chain, channel_args=self._grpc_channel_args())
        options = {}
        if self.ssl:
            options = {k: v for k, v in (("ca_certs", self.root_certificates), ("certfile", self.certificate_chain),
                                         ("keyfile", self.private_key)) if v}
        return self.module.InferenceServerClient(
            self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s, ssl=self.ssl,
            ssl_options=options or None)

    def async_client(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as aio

            return aio.InferenceServerClient(
                self.url, ssl=self.ssl, root_certificates=self.root_certificates, private_key=self.private_key,
                certificate_chain=self.certificate_chain, channel_args=self._grpc_channel_args())
        import tritonclient.http.aio as aio

        return aio.InferenceServerClient(self.url, conn_timeout=self.timeout_s, ssl=self.ssl,
                                         ssl_context=self._ssl_context() if self.ssl else None)

    def model_config(self, client: Any, timeout_s: float | None = None) -> dict[str, Any]:
        """The ensemble's config as a dict, whatever the protocol (sync clients). ``timeout_s``: gRPC's
        deadline for the call (the sync HTTP client is bounded by its caller's timer instead)."""
        if self.protocol == "grpc":
            return client.get_model_config(self.model, headers=self.headers, as_json=True, client_timeout=timeout_s)
        return client.get_model_config(self.model, headers=self.headers)
