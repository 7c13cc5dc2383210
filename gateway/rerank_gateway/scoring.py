"""What every rerank route shares: the model check, the limits, one call to Triton, the metrics.

Triton is reached over gRPC through the client library's :class:`AsyncRerankClient`, so splitting
into requests within the ensemble's limits, merging, retries, the deadline and the typed errors are
the client library's, not rewritten here. One client per worker process, made inside its event loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from rerank_client import AsyncRerankClient, RerankResult, ServerLimits
from rerank_contract import names
from rerank_contract.names import triton_model_name

from . import metrics, tracing
from .admission import Admission, Overloaded
from .deadlines import budget_s
from .errors import ApiError
from .settings import GatewaySettings


#: Budget when neither the settings nor the ensemble give one (a server that publishes none).
DEFAULT_ADMISSION = 256


@dataclass(frozen=True)
class Scored:
    """Every passage's result, best first (logit descending, ties: lower index), and the tokens scored."""

    results: list[RerankResult]
    tokens: int


class Scorer:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._client: AsyncRerankClient | None = None
        self._admission: Admission | None = None
        self._seen_ready = False  # Triton has been ready since this worker started
        self._down_since: float | None = None  # first check that found it unavailable since (monotonic)
        # Names are matched as NIM names its Triton models: case and punctuation do not matter, so
        # the hosted route's "llama-3_2-..." path and LiteLLM's rewritten body names match too.
        self._accepted = {triton_model_name(n) for n in settings.model_names} | {triton_model_name(settings.ensemble)}

    @property
    def client(self) -> AsyncRerankClient:
        if self._client is None:
            s = self.settings
            # Retried for up to ride_through_s while Triton is unavailable: a restart (the watchdog's
            # after a dead python stub) is ridden through instead of failing every request meanwhile.
            self._client = AsyncRerankClient(s.triton, "grpc", model=s.ensemble, timeout_s=s.timeout_s,
                                             max_backoff_s=1.0, retry_window_s=s.ride_through_s,
                                             max_concurrency=s.triton_concurrency,
                                             max_rows_per_request=s.rows_per_request)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def ready(self) -> tuple[bool, float | None]:
        """(whether this gateway takes requests, seconds Triton has been seen unavailable, or None).

        Ready while Triton is, and also for ``ride_through_s`` after a check first found it unavailable:
        a request arriving then waits for Triton (the client retries for that long), so the gateway can
        still answer it. Mirroring Triton's readiness instead would take every gateway pod out of its
        Service during a Triton restart or rollout, failing requests the ride-through would have held
        (docs/operations.md). Not ready before Triton was first seen ready, nor past the ride-through.
        """
        if await self.client.is_ready(timeout_s=2.0):
            self._up()
            return True, None
        if not self._seen_ready:
            return False, None
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        down = now - self._down_since
        return down < self.settings.ride_through_s, down

    def _up(self) -> None:
        self._seen_ready = True
        self._down_since = None

    async def limits(self) -> ServerLimits:
        return await self.client.limits()

    async def admission(self) -> Admission | None:
        """This worker's share of the budget: the setting, else what the ensemble publishes."""
        if not self.settings.admission:
            return None
        if self._admission is None:
            budget = self.settings.admission_passages or (await self.limits()).max_in_flight or DEFAULT_ADMISSION
            self._admission = Admission(max(1, budget // self.settings.workers))
        return self._admission

    @staticmethod
    def _admit(admission: Admission, passages: int) -> int:
        try:
            return admission.acquire(passages)
        except Overloaded as exc:
            metrics.REJECTED.inc()
            raise ApiError(503, f"Overloaded: {exc.in_flight} passages are in flight here, the budget is "
                                f"{exc.budget} ({names.MAX_PASSAGES_IN_FLIGHT}); retry after {exc.retry_after_s} s",
                           headers={"Retry-After": str(exc.retry_after_s)}) from None

    def check_model(self, model: str | None) -> None:
        """``None`` means the served model; any other model is a 404 that says what is served."""
        if model is None or triton_model_name(model) in self._accepted:
            return
        served = ", ".join(self.settings.model_names)
        raise ApiError(404, f"Model '{model}' is not served here; this server serves {served}",
                       "send one of these as 'model', or leave it out")

    async def rank(self, route: str, model: str | None, query: str, passages: Sequence[str],
                   truncate: str | None, chunk_overlap: int | None = None) -> Scored:
        """Score every passage, or raise an :class:`ApiError` / the client's ``RerankError``."""
        self.check_model(model)
        if not passages:
            raise ApiError(400, "No passages to rank: send at least one")
        if len(passages) > self.settings.max_passages:
            raise ApiError(413, f"Request has {len(passages)} passages, more than the limit of "
                                f"{self.settings.max_passages} per request ({names.MAX_PASSAGES_PER_REQUEST}); "
                                "split it into several requests")
        trace = tracing.current()
        timeout_s = budget_s(trace, self.settings.deadline_header, self.settings.timeout_s)
        admission = await self.admission()
        charge = self._admit(admission, len(passages)) if admission else 0
        metrics.PASSAGES_IN_FLIGHT.inc(len(passages))
        started = time.monotonic()
        stages: dict[str, float] = {}
        try:
            results = await self.client.rerank(query, passages, truncate=truncate, chunk_overlap=chunk_overlap,
                                               timeout_s=timeout_s, headers=trace.triton_headers() if trace else None,
                                               timings=stages)
        finally:
            if trace is not None:  # Server-Timing: Triton's round trips, then the ensemble's own stages
                trace.stage("triton", time.monotonic() - started)
                for name, seconds in stages.items():
                    trace.stage(name, seconds)
            metrics.PASSAGES_IN_FLIGHT.dec(len(passages))
            if admission:
                admission.release(charge, len(passages))
        self._up()  # Triton answered
        if any(not math.isfinite(r.logit) for r in results):  # never let a bare NaN into a JSON body
            raise ApiError(500, "The engine returned a non-finite score")
        tokens = sum(r.token_count for r in results)
        metrics.scored(route, len(results), tokens)
        return Scored(results, tokens)
