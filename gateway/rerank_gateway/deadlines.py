"""Work nobody waits for is not done: the client's deadline bounds the request, a client that hangs
up cancels it.

- **Deadline**: a REST request may carry its deadline in a header (setting ``deadline_header``,
  default Envoy's ``x-envoy-expected-rq-timeout-ms``, milliseconds, which Envoy and Istio set from
  a route's timeout and any client may send). The request's budget is the smaller of it and the
  gateway's ``timeout_s``, counted from the request's arrival. The client library sends it with every
  Triton request as Triton's own ``timeout`` and as the instant it falls (``deadline_ns``,
  rerank_contract/deadline.py), which the tokenizer and the CPU engine read: a request that cannot be
  answered by then is dropped before it costs engine time. Past it, the answer is 504; the RPC is not
  cancelled then (its own gRPC deadline is ``RPC_GRACE_S`` later: rerank_client.tensors).
- **Disconnect**: :class:`CancelOnDisconnect` watches the connection once the body is read; when the
  client goes away first, the request's task is cancelled, which cancels its gRPC calls. Triton
  2.51 then runs no further step of a cancelled ensemble request (a step already queued at the
  engine still runs, unless its deadline drops it: docs/operations.md, "Deadlines").
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .errors import ApiError
from .tracing import RequestTrace

logger = logging.getLogger(__name__)
#: What the access log and the metrics say for a request whose client left first (nginx's code).
CLIENT_CLOSED = 499


def budget_s(trace: RequestTrace | None, header: str, timeout_s: float) -> float:
    """Seconds left for this request: the client's deadline header, capped by ``timeout_s``.

    A header that is not a positive number of milliseconds is a 400 naming it; one already spent is
    a 504 at once (nothing is sent to Triton)."""
    if trace is None:
        return timeout_s
    raw = trace.headers.get(header.lower())
    if raw is None:
        return timeout_s - trace.elapsed()
    try:
        millis = float(raw.strip())
    except ValueError:
        millis = float("nan")
    if not millis > 0 or millis == float("inf"):
        raise ApiError(400, f"Header {header} must be a positive number of milliseconds, got {raw!r}")
    left = min(millis / 1000.0, timeout_s) - trace.elapsed()
    if left <= 0:
        raise ApiError(504, f"The deadline in {header} ({raw} ms) passed before the request could be sent")
    return left


class CancelOnDisconnect:
    """Cancel a POST's handler when its client disconnects before the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        answered = False

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive_wrapper, send_wrapper))

        async def watch() -> None:
            # The server's receive() blocks until the connection closes (or the response completes)
            # once the body is read; the handler reads no more, so nothing else is waiting on it.
            await body_read.wait()
            message = await receive()
            if message["type"] == "http.disconnect" and not answered and not handler.done():
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # the gateway itself is being cancelled (shutdown), not the client leaving
            metrics.DISCONNECTS.inc()
            logger.info("client disconnected before the answer: request cancelled, with its Triton calls")
            # Nobody reads it; it tells the access log and the metrics what happened.
            await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
