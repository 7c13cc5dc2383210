"""Blocking client: ``RerankClient(url).rerank(query, passages)``.

Large passage lists are split into requests within the server's limits, sent with bounded
concurrency (a thread pool, one tritonclient connection per worker thread, reused across calls),
retried with backoff on UNAVAILABLE / 503 / RESOURCE_EXHAUSTED / connection errors, merged, and cut
to ``top_n`` globally. Each call has a deadline.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Sequence

from .core import ClientBase, RerankResult, ServerLimits, is_too_large, merge
from .errors import DeadlineExceededError, InvalidInputError, ServerUnavailableError, classify
from .tensors import RawResult, build_inputs, build_outputs, parse_result, Truncation


class RerankClient(ClientBase):
    """Sync reranker client over gRPC or HTTP (NIM's Triton contract); options in ``ClientBase``."""

    def _init_transport(self) -> None:
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- connections ---------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self.settings.sync_client()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """After a connection error: the next attempt opens a fresh connection."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    def close(self) -> None:
        """Close every connection and the worker threads. Idempotent."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
        self._local = threading.local()

    def __enter__(self) -> "RerankClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- server state --------------------------------------------------------------------------
    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        """Block until the server and the model are ready; ServerUnavailableError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client = self._client()
                if client.is_server_ready(headers=self.settings.headers) and client.is_model_ready(
                        self.settings.model, headers=self.settings.headers):
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                self._drop_client()
            time.sleep(poll_s)
        raise ServerUnavailableError(f"server at {self.settings.url} not ready after {timeout_s:.0f}s"
                                     + (f": {last}" if last else ""))

    @property
    def limits(self) -> ServerLimits:
        """The server's published limits, read once."""
        if self._limits is None:
            config = self._with_retry(lambda c, _t: self.settings.model_config(c), time.monotonic() + self.settings.timeout_s)
            self._limits = ServerLimits.from_config(config)
        return self._limits

    # -- reranking -----------------------------------------------------------------------------
    def rerank(self, query: str, passages: Sequence[str], top_n: int | None = None, truncate: str | None = None,
               return_text: bool = False, timeout_s: float | None = None,
               chunk_overlap: int | None = None) -> list[RerankResult]:
        """Results sorted by logit (best first); ``index`` refers to ``passages``. ``truncate``: NONE, END
        or CHUNK (every window of a long passage scored, the best kept; ``chunk_overlap`` tokens shared)."""
        if not passages:  # nothing to rank: validate the arguments, ask the server nothing
            self._plan(query, passages, top_n, truncate, chunk_overlap, ServerLimits())
            return []
        mode, chunks = self._plan(query, passages, top_n, truncate, chunk_overlap, self.limits)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.settings.timeout_s)
        results = self._send_all(query, passages, chunks, mode, deadline)
        return merge([c for c, _ in results], [r for _, r in results], passages, top_n, return_text)

    def _send_all(self, query: str, passages: Sequence[str], chunks: list[list[int]], truncate: Truncation,
                  deadline: float) -> list[tuple[list[int], RawResult]]:
        if len(chunks) == 1:
            return self._send_chunk(query, passages, chunks[0], truncate, deadline)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="rerank-client")
        futures = [self._pool.submit(self._send_chunk, query, passages, c, truncate, deadline) for c in chunks]
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                for other in pending:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        if pending:
            for other in pending:
                other.cancel()
            raise DeadlineExceededError(f"{len(pending)} of {len(chunks)} requests unanswered at the deadline")
        return [pair for future in futures for pair in future.result()]

    def _send_chunk(self, query: str, passages: Sequence[str], chunk: list[int], truncate: Truncation,
                    deadline: float) -> list[tuple[list[int], RawResult]]:
        """One request; a request the server finds too large is split in half and sent again."""
        texts = [passages[i] for i in chunk]
        try:
            result = self._with_retry(lambda c, t: self._infer(c, query, texts, truncate, t), deadline)
        except InvalidInputError as err:
            if len(chunk) > 1 and is_too_large(err):
                half = len(chunk) // 2
                return (self._send_chunk(query, passages, chunk[:half], truncate, deadline)
                        + self._send_chunk(query, passages, chunk[half:], truncate, deadline))
            raise
        return [(chunk, result)]

    def _infer(self, client: Any, query: str, texts: list[str], truncate: Truncation, timeout_s: float) -> RawResult:
        module = self.settings.module
        kwargs: dict[str, Any] = {"headers": self.settings.headers, "parameters": truncate.parameters()}
        if self.settings.protocol == "grpc":
            kwargs["client_timeout"] = timeout_s
        result = client.infer(self.settings.model, build_inputs(module, query, texts),
                              outputs=build_outputs(module, truncate.chunked), **kwargs)
        return parse_result(result, truncate.chunked)

    def _with_retry(self, call, deadline: float):
        attempt = 0
        first_failure: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("deadline passed before the request could be sent")
            try:
                return call(self._client(), remaining)
            except Exception as exc:  # noqa: BLE001 - classified below
                error = classify(exc)
                first_failure = first_failure or time.monotonic()
                if error.retryable:
                    self._drop_client()
                time.sleep(self.retry.backoff(error, exc, attempt, deadline, first_failure))
                attempt += 1
