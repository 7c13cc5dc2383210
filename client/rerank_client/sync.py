"""Blocking client: ``RerankClient(url).rerank(query, passages)``.

Large passage lists are split into requests within the server's limits, sent with bounded
concurrency (a thread pool), retried with backoff on UNAVAILABLE / 503 / RESOURCE_EXHAUSTED /
connection errors, merged, and cut to ``top_n`` globally.

Deadline: a call's ``timeout_s`` bounds all of it (reading the server's limits, every attempt, the
waits between them, the halves of a request the server found too large); each attempt gets only
what is left of it. Over gRPC the caller waits that long for the answer, while the RPC's own deadline
is ``RPC_GRACE_S`` later: the server answers a request past its deadline by itself, and a cancellation
at that instant crashes Triton 2.51 (``tensors.RPC_GRACE_S``). Over HTTP the attempt runs under a timer
of that length on a pool thread, so a server that accepts and never answers costs the deadline, not
the connection's network timeout.

Thread safety: one ``RerankClient`` may be shared by any number of threads, and ``close()`` may be
called from any of them; a call running meanwhile fails with :class:`ClientClosedError`.
- gRPC: one channel for the whole client (gRPC channels are thread-safe), never replaced: after a
  failure gRPC reconnects it itself (backoff capped at 1 s, ``connection.py``).
- HTTP: tritonclient's HTTP client is single-threaded (gevent), so every HTTP attempt runs on one of
  the pool's ``max_concurrency`` threads, each with its own connection. A caller's thread holds no
  connection, so threads that come and go leave nothing behind. A connection that failed or timed out
  is closed by its thread at once and replaced on the next attempt.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence, TypeVar

from .core import (
    ClientBase, PassageError, RerankResult, Retrying, ServerLimits, assemble, bisect_for, parse_errors, passage_error,
)
from .errors import (
    ClientClosedError, DeadlineExceededError, InputTooLongError, InvalidInputError, ServerUnavailableError,
)
from .tensors import (
    RPC_GRACE_S, RawResult, Truncation, build_inputs, build_outputs, call_parameters, parse_result, server_timeout_us,
)

T = TypeVar("T")
#: One attempt: (transport client, seconds left of the call's deadline) -> answer.
Attempt = Callable[[Any, float], T]


@dataclass(eq=False)
class _HttpConnection:
    """An HTTP client owned by one pool thread; ``busy`` while an attempt uses it."""

    client: Any
    busy: bool = False


class RerankClient(ClientBase):
    """Sync reranker client over gRPC or HTTP (NIM's Triton contract); options in ``ClientBase``.

    Thread-safe (module docstring): share one per process; ``close()`` (or ``with``) frees its
    connections and threads.
    """

    def _init_transport(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._grpc: Any = None  # the one gRPC client (channel)
        self._local = threading.local()  # HTTP: the pool thread's connection, and that it is a pool thread
        self._http: set[_HttpConnection] = set()
        self._closing = threading.Event()
        self._closed_signal: Future = Future()  # done once close() runs: wakes every waiting caller

    # -- connections and threads -----------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="rerank-client",
                                                initializer=self._mark_worker)
            return self._pool

    def _mark_worker(self) -> None:
        self._local.worker = True

    def _grpc_client(self) -> Any:
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            if self._grpc is None:
                self._grpc = self.settings.sync_client()
            return self._grpc

    def _attempt(self, call: Attempt[T], timeout_s: float) -> T:
        """One try with ``timeout_s`` left; over HTTP only on a pool thread (see :meth:`_on_worker`)."""
        if self.settings.protocol == "grpc":
            return call(self._grpc_client(), timeout_s)
        import gevent

        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            conn = getattr(self._local, "http", None)
            if conn is None:
                conn = _HttpConnection(self.settings.sync_client())
                self._local.http = conn
                self._http.add(conn)
            conn.busy = True
        keep = False
        timer = gevent.Timeout(timeout_s)
        timer.start()
        try:
            result = call(conn.client, timeout_s)
            keep = True
            return result
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            raise DeadlineExceededError(f"no answer within the {timeout_s:.2f}s left of the deadline",
                                        "timeout") from None
        except InvalidInputError:
            keep = True  # the server answered: the connection is fine
            raise
        finally:
            timer.close()
            with self._lock:
                conn.busy = False
                keep = keep and not self._closed
                if not keep:
                    self._http.discard(conn)
                    self._local.http = None
            if not keep:
                _close_quietly(conn.client)

    def _on_worker(self, fn: Callable[..., T], deadline: float, *args: Any) -> T:
        """Run ``fn(*args)`` where its attempts may run: over HTTP on a pool thread (the caller waits,
        until the deadline at most), over gRPC here."""
        if self.settings.protocol == "grpc" or getattr(self._local, "worker", False):
            return fn(*args)
        try:
            future = self._executor().submit(fn, *args)
        except RuntimeError:  # shut down by close() meanwhile
            raise ClientClosedError("the client was closed while the call ran") from None
        return self._wait([future], deadline)[0]

    def _wait(self, futures: list[Future], deadline: float) -> list[Any]:
        """Every future's result, in order; the first failure, a close() or the deadline ends the wait."""
        pending = set(futures)
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError(f"{len(pending)} of {len(futures)} requests unanswered at the deadline")
                done, rest = wait(pending | {self._closed_signal}, timeout=remaining, return_when=FIRST_COMPLETED)
                if self._closed_signal in done:
                    raise ClientClosedError("the client was closed while the call ran")
                for future in done:
                    if future.cancelled():
                        raise ClientClosedError("the client was closed while the call ran")
                    if future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                pending = rest - {self._closed_signal}
        finally:
            for future in pending:
                future.cancel()
        return [future.result() for future in futures]

    def close(self) -> None:
        """Close every connection and the worker threads. Idempotent; callable from any thread.

        Calls running meanwhile fail with :class:`ClientClosedError` at once. A gRPC request in flight
        is cancelled; an HTTP one keeps its pool thread until it ends (the deadline at the latest), and
        that thread then closes its connection.
        """
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            grpc_client, self._grpc = self._grpc, None
            idle = [c for c in self._http if not c.busy]
            self._http.difference_update(idle)
            busy = bool(self._http)
        self._closing.set()
        if not self._closed_signal.done():
            try:
                self._closed_signal.set_result(None)
            except Exception:  # noqa: BLE001 - closed by two threads at once
                pass
        if grpc_client is not None:
            _close_quietly(grpc_client)  # cancels its calls in flight
        for conn in idle:  # not in use: safe to close from this thread
            _close_quietly(conn.client)
        if pool is not None:
            pool.shutdown(wait=not busy, cancel_futures=True)

    def __enter__(self) -> "RerankClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- retries -----------------------------------------------------------------------------------
    def _with_retry(self, call: Attempt[T], deadline: float) -> T:
        """``call`` until it answers, within the deadline and the retry policy."""
        retrying = Retrying(self.retry, deadline, lambda: self._closed)
        while True:
            try:
                return self._attempt(call, retrying.remaining())
            except ClientClosedError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified by Retrying
                if self._closing.wait(retrying.failed(exc)):
                    raise ClientClosedError("the client was closed while the call ran") from exc

    # -- server state ------------------------------------------------------------------------------
    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        """Block until the server and the model are ready; ServerUnavailableError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None

        def check(client: Any, left: float) -> bool:
            kwargs = {"client_timeout": left} if self.settings.protocol == "grpc" else {}
            return bool(client.is_server_ready(headers=self.settings.headers, **kwargs)
                        and client.is_model_ready(self.settings.model, headers=self.settings.headers, **kwargs))

        while time.monotonic() < deadline:
            try:
                if self._on_worker(self._attempt, deadline, check, max(0.01, deadline - time.monotonic())):
                    return
            except ClientClosedError:
                raise
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            if self._closing.wait(min(poll_s, max(0.0, deadline - time.monotonic()))):
                raise ClientClosedError("the client was closed while waiting for the server")
        raise ServerUnavailableError(f"server at {self.settings.url} not ready after {timeout_s:.0f}s"
                                     + (f": {last}" if last else ""))

    @property
    def limits(self) -> ServerLimits:
        """The server's published limits, read once (within the client's ``timeout_s``)."""
        return self._read_limits(time.monotonic() + self.settings.timeout_s)

    def _read_limits(self, deadline: float) -> ServerLimits:
        if self._limits is None:
            def read(client: Any, left: float) -> Any:
                return self.settings.model_config(client, left)

            config = self._on_worker(self._with_retry, deadline, read, deadline)
            self._limits = ServerLimits.from_config(config)
        return self._limits

    # -- reranking ---------------------------------------------------------------------------------
    def rerank(self, query: str, passages: Sequence[str], top_n: int | None = None, truncate: str | None = None,
               return_text: bool = False, timeout_s: float | None = None,
               chunk_overlap: int | None = None, errors: str | None = None) -> list[RerankResult]:
        """Results sorted by logit (best first); ``index`` refers to ``passages``. ``truncate``: NONE, END
        or CHUNK (every window of a long passage scored, the best kept; ``chunk_overlap`` tokens shared).
        ``timeout_s`` (default: the client's) bounds the whole call, the limits' first read included.
        ``errors="per_passage"``: a pair too long for ``truncate=NONE`` fails only its passage, which comes
        after the scored ones with ``error`` set (:class:`PassageError`); default ``raise``: the call fails."""
        per_passage = parse_errors(errors)
        if not passages:  # nothing to rank: validate the arguments, ask the server nothing
            self._plan(query, passages, top_n, truncate, chunk_overlap, ServerLimits())
            return []
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.settings.timeout_s)
        mode, chunks = self._plan(query, passages, top_n, truncate, chunk_overlap, self._read_limits(deadline))
        mode = replace(mode, per_passage=per_passage)
        return assemble(self._send_all(query, passages, chunks, mode, deadline), passages, top_n, return_text)

    def _send_all(self, query: str, passages: Sequence[str], chunks: list[list[int]], truncate: Truncation,
                  deadline: float) -> list[tuple[list[int], RawResult | PassageError]]:
        if len(chunks) == 1:
            return self._on_worker(self._send_chunk, deadline, query, passages, chunks[0], truncate, deadline)
        pool = self._executor()
        try:
            futures = [pool.submit(self._send_chunk, query, passages, c, truncate, deadline) for c in chunks]
        except RuntimeError:  # shut down by close() meanwhile
            raise ClientClosedError("the client was closed while the call ran") from None
        return [pair for part in self._wait(futures, deadline) for pair in part]

    def _send_chunk(self, query: str, passages: Sequence[str], chunk: list[int], truncate: Truncation,
                    deadline: float) -> list[tuple[list[int], RawResult | PassageError]]:
        """One request; a request the server finds too large is split in half and sent again."""
        texts = [passages[i] for i in chunk]
        try:
            result = self._with_retry(lambda c, t: self._infer(c, query, texts, truncate, t), deadline)
        except InvalidInputError as err:
            if truncate.per_passage and len(chunk) == 1 and isinstance(err, InputTooLongError):
                return [(chunk, passage_error(err))]
            if bisect_for(err, len(chunk), truncate.per_passage):
                half = len(chunk) // 2
                return (self._send_chunk(query, passages, chunk[:half], truncate, deadline)
                        + self._send_chunk(query, passages, chunk[half:], truncate, deadline))
            raise
        return [(chunk, result)]

    def _infer(self, client: Any, query: str, texts: list[str], truncate: Truncation, timeout_s: float) -> RawResult:
        module = self.settings.module
        kwargs: dict[str, Any] = {"headers": self.settings.headers, "parameters": call_parameters(truncate, timeout_s)}
        kwargs["timeout"] = server_timeout_us(timeout_s)  # dropped by Triton if still queued past it
        inputs, outputs = build_inputs(module, query, texts), build_outputs(module, truncate.chunked)
        if self.settings.protocol == "grpc":
            result = self._grpc_infer(client, inputs, outputs, kwargs, timeout_s)
        else:
            result = client.infer(self.settings.model, inputs, outputs=outputs, **kwargs)
        return parse_result(result, truncate.chunked)

    def _grpc_infer(self, client: Any, inputs: list, outputs: list, kwargs: dict[str, Any], timeout_s: float) -> Any:
        """The answer within ``timeout_s``; past it DeadlineExceededError, the RPC left to end on its own
        (the server answers a request past its deadline itself; the RPC's own deadline is
        ``RPC_GRACE_S`` later): cancelling it at the instant the server answers crashes Triton 2.51."""
        answer: Future = Future()

        def done(result: Any, error: Any) -> None:
            answer.set_exception(error) if error is not None else answer.set_result(result)

        client.async_infer(self.settings.model, inputs, done, outputs=outputs, client_timeout=timeout_s + RPC_GRACE_S,
                           **kwargs)
        finished, _ = wait([answer, self._closed_signal], timeout=timeout_s, return_when=FIRST_COMPLETED)
        if answer in finished:
            return answer.result()
        if self._closed_signal in finished:
            raise ClientClosedError("the client was closed while the call ran")
        raise DeadlineExceededError(f"no answer within the {timeout_s:.2f}s left of the deadline", "timeout")


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - a broken connection may fail to close
        pass

