"""Refuse oversized bodies before reading them: 413 with the JSON error body, naming the limit.

A body is never kept past the limit: a declared ``Content-Length`` over it is refused at once (the
rest is read and dropped so that the client sees the answer), a chunked body as soon as it passes it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerank_contract import names

from .errors import error_response

#: Bodies up to this many times the limit are read (and dropped) before the 413 is sent.
DRAIN_FACTOR = 4


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(400, f"Invalid Content-Length header: {declared!r}")(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._refuse(scope, receive, send, length, more=length > 0)
                return
            await self.app(scope, receive, send)
            return
        # No length declared (chunked): buffer up to the limit, then replay the body to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, None, more=message.get("more_body", False))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, length: int | None, more: bool) -> None:
        """``more``: the client is still sending the body. Its rest is read and dropped first, up to a
        bound: a client still sending (Python's requests, for one) would otherwise see a broken pipe
        instead of the 413. Once the body is complete, ``receive`` would only wait for a disconnect."""
        if more and (length is None or length <= DRAIN_FACTOR * self.max_bytes):
            drained = 0
            while drained <= DRAIN_FACTOR * self.max_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
                drained += len(message.get("body", b""))
        size = f"{length} bytes" if length is not None else "more than that"
        message = (f"Request body is too large: {size}, more than the limit of {self.max_bytes} bytes "
                   f"({names.MAX_BODY_BYTES}); send fewer or shorter passages per request")
        await error_response(413, message)(scope, receive, send)
