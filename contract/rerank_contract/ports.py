"""The serving stack's ports, in NIM's layout: the one :class:`Ports` type every component uses.

NIM answers its REST API on 8000 and Triton's gRPC on 8001, with Triton's metrics on 8002. Our REST
face is the gateway, so it takes 8000, and Triton's own KServe v2 HTTP (which speaks KServe, not
NIM's ``/v1/ranking``) moves to 8003. The client's default URLs, the gateway's defaults, the local
stack (``rerank-serve``), the serving image's command line and ``make serve`` all take their numbers
from here; ``tests/test_ports.py`` checks the compose file, the Dockerfiles and the Kubernetes
manifests against it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Ports:
    """Where each part of the stack listens."""

    rest: int = 8000  # the REST API (rerank-gateway): NIM's /v1/ranking and the other APIs
    grpc: int = 8001  # Triton gRPC (NIM's gRPC contract)
    metrics: int = 8002  # Triton's Prometheus metrics
    triton_http: int = 8003  # Triton's own KServe v2 HTTP

    @property
    def http(self) -> int:
        """Deprecated spelling of :attr:`rest` (``stack.ServePorts.http`` before the types were merged)."""
        return self.rest

    def offset(self, step: int) -> "Ports":
        """Each port + ``step`` (replica k of ``rerank-serve --replicas`` listens on each Triton port + 10 k)."""
        return replace(self, rest=self.rest + step, grpc=self.grpc + step, metrics=self.metrics + step,
                       triton_http=self.triton_http + step)


#: The defaults: where ``make serve`` and the images listen.
DEFAULT = Ports()

