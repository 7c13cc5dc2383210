"""asyncio client of the same shape as :class:`rerank_client.RerankClient`.

One tritonclient aio client (gRPC channel or aiohttp session) per AsyncRerankClient, shared by all
coroutines; requests of one call run concurrently under a semaphore; retries and the deadline work
as in the sync client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

from .core import ClientBase, RerankResult, ServerLimits, is_too_large, merge
from .errors import DeadlineExceededError, InvalidInputError, ServerUnavailableError, classify
from .tensors import RawResult, build_inputs, build_outputs, parse_result, Truncation


class AsyncRerankClient(ClientBase):
    """Async reranker client over gRPC or HTTP (NIM's Triton contract); options in ``ClientBase``."""

    def _init_transport(self) -> None:
        self._client: Any = None
        self._retired: list[Any] = []  # replaced after errors; closed with the client (others may use them)

    def _connection(self) -> Any:
        if self._client is None:
            self._client = self.settings.async_client()
        return self._client

    def _replace_client(self, client: Any) -> None:
        """After a connection error: later attempts open a fresh connection."""
        if client is not None and self._client is client:
            self._client = None
            self._retired.append(client)

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        clients = [c for c in [self._client, *self._retired] if c is not None]
        self._client, self._retired = None, []
        for client in clients:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    async def __aenter__(self) -> "AsyncRerankClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ready(self, client: Any) -> bool:
        return bool(await client.is_server_ready(headers=self.settings.headers)
                    and await client.is_model_ready(self.settings.model, headers=self.settings.headers))

    async def is_ready(self, timeout_s: float = 2.0) -> bool:
        """One check, for health probes: the server and the model are ready (False on any error)."""
        client = self._connection()
        try:
            return await asyncio.wait_for(self._ready(client), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - down, starting or unreachable: not ready
            return False

    async def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            client = self._connection()
            try:
                if await self._ready(client):
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                self._replace_client(client)
            await asyncio.sleep(poll_s)
        raise ServerUnavailableError(f"server at {self.settings.url} not ready after {timeout_s:.0f}s"
                                     + (f": {last}" if last else ""))

    async def limits(self) -> ServerLimits:
        """The server's published limits, read once."""
        if self._limits is None:
            async def read(client: Any, _t: float) -> Any:
                if self.settings.protocol == "grpc":
                    return await client.get_model_config(self.settings.model, headers=self.settings.headers,
                                                         as_json=True)
                return await client.get_model_config(self.settings.model, headers=self.settings.headers)

            config = await self._with_retry(read, time.monotonic() + self.settings.timeout_s)
            self._limits = ServerLimits.from_config(config)
        return self._limits

    async def rerank(self, query: str, passages: Sequence[str], top_n: int | None = None,
                     truncate: str | None = None, return_text: bool = False,
                     timeout_s: float | None = None, chunk_overlap: int | None = None) -> list[RerankResult]:
        """Results sorted by logit (best first); ``index`` refers to ``passages``. ``truncate``: NONE, END
        or CHUNK (every window of a long passage scored, the best kept; ``chunk_overlap`` tokens shared)."""
        if not passages:  # nothing to rank: validate the arguments, ask the server nothing
            self._plan(query, passages, top_n, truncate, chunk_overlap, ServerLimits())
            return []
        budget = timeout_s if timeout_s is not None else self.settings.timeout_s
        deadline = time.monotonic() + budget
        mode, chunks = self._plan(query, passages, top_n, truncate, chunk_overlap, await self.limits())
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def bounded(chunk: list[int]) -> list[tuple[list[int], RawResult]]:
            async with semaphore:
                return await self._send_chunk(query, passages, chunk, mode, deadline)

        tasks = [asyncio.ensure_future(bounded(c)) for c in chunks]
        try:
            parts = await asyncio.wait_for(asyncio.gather(*tasks), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise DeadlineExceededError(f"requests unanswered after {budget:.1f}s") from None
        finally:
            for task in tasks:
                task.cancel()
        pairs = [pair for part in parts for pair in part]
        return merge([c for c, _ in pairs], [r for _, r in pairs], passages, top_n, return_text)

    async def _send_chunk(self, query: str, passages: Sequence[str], chunk: list[int], truncate: Truncation,
                          deadline: float) -> list[tuple[list[int], RawResult]]:
        texts = [passages[i] for i in chunk]
        try:
            result = await self._with_retry(lambda c, t: self._infer(c, query, texts, truncate, t), deadline)
        except InvalidInputError as err:
            if len(chunk) > 1 and is_too_large(err):
                half = len(chunk) // 2
                return (await self._send_chunk(query, passages, chunk[:half], truncate, deadline)
                        + await self._send_chunk(query, passages, chunk[half:], truncate, deadline))
            raise
        return [(chunk, result)]

    async def _infer(self, client: Any, query: str, texts: list[str], truncate: Truncation, timeout_s: float) -> RawResult:
        module = self.settings.module
        kwargs: dict[str, Any] = {"headers": self.settings.headers, "parameters": truncate.parameters()}
        if self.settings.protocol == "grpc":
            kwargs["client_timeout"] = timeout_s
        result = await asyncio.wait_for(
            client.infer(self.settings.model, build_inputs(module, query, texts), outputs=build_outputs(module, truncate.chunked),
                         **kwargs), timeout=timeout_s)
        return parse_result(result, truncate.chunked)

    async def _with_retry(self, call, deadline: float):
        attempt = 0
        first_failure: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError("deadline passed before the request could be sent")
            client = self._connection()
            try:
                return await call(client, remaining)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                error = classify(exc)
                first_failure = first_failure or time.monotonic()
                if error.retryable:
                    self._replace_client(client)
                await asyncio.sleep(self.retry.backoff(error, exc, attempt, deadline, first_failure))
                attempt += 1
