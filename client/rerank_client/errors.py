"""Typed errors that keep the server's message, and the rule for what is worth retrying."""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
import sys

from rerank_contract import deadline


class RerankError(Exception):
    """Base class; ``status`` is the gRPC status or HTTP code the server (or transport) gave."""

    retryable = False

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidInputError(RerankError, ValueError):
    """The server refused the request as invalid (INVALID_ARGUMENT / HTTP 400); never retried."""


class InputTooLongError(InvalidInputError):
    """A pair is longer than the server's limit and ``truncate`` is ``NONE``."""


class ServerUnavailableError(RerankError):
    """The server could not be reached or was overloaded, also after the retries."""

    retryable = True


class DeadlineExceededError(RerankError, TimeoutError):
    """The call's deadline passed before every request was answered."""


class ClientClosedError(RerankError):
    """The client was closed before or while the call ran (``close()`` from another thread)."""


_RETRYABLE_STATUS = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.ABORTED",
                     "503", "502", "504", "429"}
_INVALID_STATUS = {"StatusCode.INVALID_ARGUMENT", "400"}
_DEADLINE_STATUS = {"StatusCode.DEADLINE_EXCEEDED", "408"}
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError, socket.timeout)
#: Triton prefixes a composing model's error with the ensemble's name; the message itself is ours.
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


def classify(exc: BaseException) -> RerankError:
    """Map a tritonclient / transport exception to our typed errors (message kept)."""
    if isinstance(exc, RerankError):
        return exc
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status()) if exc.status() is not None else None
        message = _ENSEMBLE_PREFIX.sub("", exc.message() or str(exc))
        if status in _INVALID_STATUS:
            cls = InputTooLongError if "exceeds maximum allowed token size" in message else InvalidInputError
            return cls(message, status)
        # Dropped at its deadline (Triton's queue policy, or our tokenizer or engine): retrying cannot beat it.
        if status in _DEADLINE_STATUS or deadline.EXPIRED in message:
            return DeadlineExceededError(message, status)
        loading = "has no available versions" in message or "is not ready" in message  # during a (re)start
        # A python-backend stub that died: Triton 2.51 never restarts it, but `rerank-build serve`'s
        # watchdog restarts tritonserver, so the request is worth retrying.
        dead_stub = "Stub process" in message and "is not healthy" in message
        # No status: tritonclient refused the call itself (a bad argument), which no retry changes.
        if status in _RETRYABLE_STATUS or loading or dead_stub or (status is not None
                                                                   and _looks_like_connection_error(message)):
            return ServerUnavailableError(message, status)
        return RerankError(message, status)
    if isinstance(exc, _TIMEOUTS):
        return DeadlineExceededError(str(exc) or "request timed out", "timeout")
    if _is_connection_error(exc):
        return ServerUnavailableError(f"{type(exc).__name__}: {exc}", "connection")
    return RerankError(f"{type(exc).__name__}: {exc}")


#: OSErrors that mean "the connection failed or dropped": worth another try. Any other OSError (a
#: missing certificate file, a permission problem) fails the same way every time.
_CONNECTION_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                      errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ENOTCONN}


def _is_connection_error(exc: BaseException) -> bool:
    """A connection that could not be made or dropped (retryable); never a TLS certificate problem."""
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError))  # the peer went away mid-stream
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        return not isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch))
    if isinstance(exc, (ConnectionError, EOFError, socket.gaierror)):
        return True  # refused, reset, aborted, broken pipe; a name that did not resolve (as gRPC's UNAVAILABLE)
    if isinstance(exc, OSError):
        return exc.errno in _CONNECTION_ERRNOS
    # geventhttpclient (the sync HTTP client): the server closed the connection before answering.
    return type(exc).__module__.startswith("geventhttpclient") and "connection closed" in str(exc).lower()


def _looks_like_connection_error(message: str) -> bool:
    lowered = message.lower()
    return any(s in lowered for s in ("connection refused", "failed to connect", "connection reset",
                                      "broken pipe", "socket closed", "unavailable"))
