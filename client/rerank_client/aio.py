"""asyncio client of the same shape as :class:`rerank_client.RerankClient`.

One tritonclient aio client (a gRPC channel or an aiohttp session) per AsyncRerankClient, shared by
all its coroutines and never replaced: after a failure gRPC reconnects the channel itself (backoff
capped at 1 s, ``connection.py``) and aiohttp opens a new connection, so retries reuse it. Requests
of one call run concurrently under a semaphore.

Deadline: a call's ``timeout_s`` bounds all of it (the limits' first read, every attempt, the waits
between them, halves of a request the server found too large): each attempt runs under
``asyncio.wait_for`` with what is left. A scoring RPC is not cancelled when that wait runs out: the
server drops a request past its deadline and answers by itself, and the RPC's own gRPC deadline
(:data:`~rerank_client.tensors.RPC_GRACE_S` later) ends it otherwise (over HTTP it is cancelled); cancelling at the instant the
server answers crashes Triton 2.51 (see ``RPC_GRACE_S``). A caller that cancels (a REST client that
hung up) still cancels the RPC.

Concurrency: any number of coroutines may share one client, on the event loop it was first used on
(gRPC's aio channels belong to one loop); it is not for several threads or loops.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from rerank_contract import names

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
Attempt = Callable[[Any, float], Awaitable[T]]


class AsyncRerankClient(ClientBase):
    """Async reranker client over gRPC or HTTP (NIM's Triton contract); options in ``ClientBase``."""

    def _init_transport(self) -> None:
        self._client: Any = None

    def _connection(self) -> Any:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._client is None:
            self._client = self.settings.async_client()
        return self._client

    async def close(self) -> None:
        """Close the connection. Idempotent; calls running meanwhile fail with ClientClosedError."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass

    async def __aenter__(self) -> "AsyncRerankClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ready(self, client: Any, timeout_s: float) -> bool:
        kwargs = {"client_timeout": timeout_s} if self.settings.protocol == "grpc" else {}
        return bool(await client.is_server_ready(headers=self.settings.headers, **kwargs)
                    and await client.is_model_ready(self.settings.model, headers=self.settings.headers, **kwargs))

    async def is_ready(self, timeout_s: float = 2.0) -> bool:
        """One check, for health probes: the server and the model are ready (False on any error)."""
        try:
            return await self._attempt(self._ready, timeout_s)
        except Exception:  # noqa: BLE001 - down, starting or unreachable: not ready
            return False

    async def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if await self._attempt(self._ready, max(0.01, deadline - time.monotonic())):
                    return
            except ClientClosedError:
                raise
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        raise ServerUnavailableError(f"server at {self.settings.url} not ready after {timeout_s:.0f}s"
                                     + (f": {last}" if last else ""))

    @property
    def known_limits(self) -> ServerLimits | None:
        """The limits read so far, without asking the server (None before the first read)."""
        return self._limits

    async def limits(self, refresh: bool = False) -> ServerLimits:
        """The server's published limits, read once (within the client's ``timeout_s``); ``refresh``
        reads them again (a server restarted with another model publishes other limits and identity)."""
        if refresh:
            config = await self._with_retry(self._read_config, time.monotonic() + self.settings.timeout_s)
            self._limits = ServerLimits.from_config(config)
            return self._limits
        return await self._read_limits(time.monotonic() + self.settings.timeout_s)

    async def _read_config(self, client: Any, left: float) -> Any:
        if self.settings.protocol == "grpc":
            return await client.get_model_config(self.settings.model, headers=self.settings.headers,
                                                 as_json=True, client_timeout=left)
        return await client.get_model_config(self.settings.model, headers=self.settings.headers)

    async def _read_limits(self, deadline: float) -> ServerLimits:
        if self._limits is None:
            config = await self._with_retry(self._read_config, deadline)
            self._limits = ServerLimits.from_config(config)
        return self._limits

    async def rerank(self, query: str, passages: Sequence[str], top_n: int | None = None,
                     truncate: str | None = None, return_text: bool = False,
                     timeout_s: float | None = None, chunk_overlap: int | None = None, errors: str | None = None,
                     headers: Mapping[str, str] | None = None,
                     timings: dict[str, float] | None = None) -> list[RerankResult]:
        """Results sorted by logit (best first); ``index`` refers to ``passages``. ``truncate``: NONE, END
        or CHUNK (every window of a long passage scored, the best kept; ``chunk_overlap`` tokens shared).
        ``timeout_s`` (default: the client's) bounds the whole call, the limits' first read included;
        what is left of it goes with each request as Triton's own timeout.
        ``errors="per_passage"``: a pair too long for ``truncate=NONE`` fails only its passage, which comes
        after the scored ones with ``error`` set (:class:`PassageError`); default ``raise``: the call fails.
        ``headers`` go with this call's requests beside the client's (e.g. a W3C ``traceparent``, which
        Triton's tracing joins). ``timings``, where the ensemble reports them (``stage_ns``), gets each of
        ``names.STAGES`` in seconds: the longest among this call's requests (they run concurrently)."""
        per_passage = parse_errors(errors)
        if not passages:  # nothing to rank: validate the arguments, ask the server nothing
            self._plan(query, passages, top_n, truncate, chunk_overlap, ServerLimits())
            return []
        budget = timeout_s if timeout_s is not None else self.settings.timeout_s
        deadline = time.monotonic() + budget
        limits = await self._read_limits(deadline)
        mode, chunks = self._plan(query, passages, top_n, truncate, chunk_overlap, limits)
        mode = replace(mode, per_passage=per_passage)
        stages = timings is not None and limits.stage_timings
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def bounded(chunk: list[int]) -> list[tuple[list[int], RawResult | PassageError]]:
            async with semaphore:
                return await self._send_chunk(query, passages, chunk, mode, deadline, headers, stages)

        tasks = [asyncio.ensure_future(bounded(c)) for c in chunks]
        gathered = asyncio.gather(*tasks)
        # A call cancelled from outside (its REST client left) ends its requests; what they raise then
        # is nobody's news, so it is marked retrieved rather than logged as "never retrieved".
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            done, _ = await asyncio.wait({gathered}, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:  # the caller was cancelled (its REST client left): end its requests
            for task in tasks:
                task.cancel()
            raise
        if not done:
            # Nothing is cancelled: each request ends by itself at the deadline (its attempt stops
            # waiting and leaves its RPC to the server's answer, module docstring).
            raise DeadlineExceededError(f"requests unanswered after {budget:.2f}s")
        try:
            parts = gathered.result()
        except DeadlineExceededError:
            raise  # the server dropped one at its deadline: the others end by the same deadline, uncancelled
        except BaseException:  # another failure: the other requests are not needed
            for task in tasks:
                task.cancel()
            raise
        pairs = [pair for part in parts for pair in part]
        if stages and timings is not None:
            for _, raw in pairs:
                if isinstance(raw, PassageError) or raw.stage_ns is None:
                    continue
                for name, ns in zip(names.STAGES, raw.stage_ns):
                    timings[name] = max(timings.get(name, 0.0), float(ns) / 1e9)
        return assemble(pairs, passages, top_n, return_text)

    async def _send_chunk(self, query: str, passages: Sequence[str], chunk: list[int], truncate: Truncation,
                          deadline: float, headers: Mapping[str, str] | None = None, stages: bool = False,
                          ) -> list[tuple[list[int], RawResult | PassageError]]:
        texts = [passages[i] for i in chunk]
        try:
            result = await self._with_retry(lambda c, t: self._infer(c, query, texts, truncate, t, headers, stages),
                                            deadline)
        except InvalidInputError as err:
            if truncate.per_passage and len(chunk) == 1 and isinstance(err, InputTooLongError):
                return [(chunk, passage_error(err))]
            if bisect_for(err, len(chunk), truncate.per_passage):
                half = len(chunk) // 2
                return (await self._send_chunk(query, passages, chunk[:half], truncate, deadline, headers, stages)
                        + await self._send_chunk(query, passages, chunk[half:], truncate, deadline, headers, stages))
            raise
        return [(chunk, result)]

    async def _infer(self, client: Any, query: str, texts: list[str], truncate: Truncation, timeout_s: float,
                     headers: Mapping[str, str] | None = None, stages: bool = False) -> RawResult:
        module = self.settings.module
        sent = {**(self.settings.headers or {}), **headers} if headers else self.settings.headers
        kwargs: dict[str, Any] = {"headers": sent, "parameters": call_parameters(truncate, timeout_s)}
        kwargs["timeout"] = server_timeout_us(timeout_s)  # dropped by Triton if still queued past it
        if self.settings.protocol == "grpc":
            kwargs["client_timeout"] = timeout_s + RPC_GRACE_S  # the server answers at the deadline itself
        result = await client.infer(self.settings.model, build_inputs(module, query, texts),
                                    outputs=build_outputs(module, truncate.chunked, stages), **kwargs)
        return parse_result(result, truncate.chunked, stages)

    async def _attempt(self, call: Attempt[T], timeout_s: float) -> T:
        """One try, ended when ``timeout_s`` (what is left of the deadline) runs out; the RPC itself is
        left to end on its own then (module docstring), and cancelled only with the caller."""
        attempt = asyncio.ensure_future(call(self._connection(), timeout_s))
        # asyncio.wait, not wait_for: an error the attempt raises (a TimeoutError among them) is its own,
        # never mistaken for the wait running out.
        try:
            done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
        except asyncio.CancelledError:
            attempt.cancel()
            attempt.add_done_callback(_forget)
            raise
        if not done:
            if self.settings.protocol != "grpc":  # over HTTP Triton cancels nothing: no race to avoid
                attempt.cancel()
            attempt.add_done_callback(_forget)
            raise DeadlineExceededError(f"no answer within the {timeout_s:.2f}s left of the deadline", "timeout")
        return attempt.result()

    async def _with_retry(self, call: Attempt[T], deadline: float) -> T:
        retrying = Retrying(self.retry, deadline, lambda: self._closed)
        while True:
            try:
                return await self._attempt(call, retrying.remaining())
            except (asyncio.CancelledError, ClientClosedError):
                raise
            except Exception as exc:  # noqa: BLE001 - classified by Retrying
                await asyncio.sleep(retrying.failed(exc))


def _forget(attempt: "asyncio.Future[Any]") -> None:
    """Retrieve an abandoned attempt's outcome, so that asyncio does not log it as never retrieved."""
    if not attempt.cancelled():
        attempt.exception()
