"""What every rerank route shares: the model check, the limits, one call to Triton, the metrics.

Triton is reached over gRPC through the client library's :class:`AsyncRerankClient`, so splitting
into requests within the ensemble's limits, merging, retries, the deadline and the typed errors are
the client library's, not rewritten here. One client per worker process, made inside its event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

from rerank_client import AsyncRerankClient, InvalidInputError, RerankError, RerankResult, ServerLimits
from rerank_client.core import TokenEstimator, check_arguments
from rerank_contract import names
from rerank_contract import prompt as rp
from rerank_contract.names import triton_model_name

from . import metrics, tracing
from .admission import Admission, Overloaded
from .deadlines import budget_s
from .errors import ApiError
from .score_cache import Entry, Lookup, ScoreCache, request_keys
from .settings import GatewaySettings

logger = logging.getLogger(__name__)

#: Budget when neither the settings nor the ensemble give one (a server that publishes none).
DEFAULT_ADMISSION = 256
#: The default token budget is the passage budget's worth of pairs this long (a typical RAG chunk, 256-512
#: tokens, with its query): shorter passages meet the passage budget first, longer ones the token budget.
TOKENS_PER_PASSAGE = 512
#: The served model's identity (the ensemble's ``model_fingerprint``) is read again when older than this,
#: on every readiness check, and after Triton failed or was unavailable; a read waits at most the timeout.
IDENTITY_TTL_S = 1.0
IDENTITY_TIMEOUT_S = 2.0
_ESTIMATOR = TokenEstimator()  # bytes-based: what admission charges before anything is tokenized


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
        self.cache = ScoreCache(settings.cache_bytes) if settings.cache else None
        self._identity: str | None = None  # the served model's fingerprint; None: unknown, the cache is skipped
        self._identity_at = -math.inf  # when it was read (monotonic)
        self._identity_read: asyncio.Future | None = None  # the read in progress, shared by its waiters

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
            await self._read_identity()
            return True, None
        self._forget_identity()  # unknown until read again: the model may come back as another
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
        """This worker's share of the budgets: the settings, else what the ensemble publishes (passages in
        flight), and for tokens that many pairs of :data:`TOKENS_PER_PASSAGE`."""
        if not self.settings.admission:
            return None
        if self._admission is None:
            s = self.settings
            budget = s.admission_passages or (await self.limits()).max_in_flight or DEFAULT_ADMISSION
            tokens = s.admission_tokens or budget * TOKENS_PER_PASSAGE
            self._admission = Admission(max(1, budget // s.workers), max(1, tokens // s.workers))
        return self._admission

    @staticmethod
    def _admit(admission: Admission, passages: int, tokens: int) -> tuple[int, int]:
        try:
            return admission.acquire(passages, tokens)
        except Overloaded as exc:
            metrics.REJECTED.labels(exc.unit).inc()
            limit = names.MAX_PASSAGES_IN_FLIGHT if exc.unit == "passages" else "admission_tokens"
            raise ApiError(503, f"Overloaded: {exc.in_flight} {exc.unit} are in flight here, the budget is "
                                f"{exc.budget} ({limit}); retry after {exc.retry_after_s} s",
                           headers={"Retry-After": str(exc.retry_after_s)}) from None

    # -- the score cache --------------------------------------------------------------------------------
    async def _read_identity(self) -> str | None:
        """Read the served model's fingerprint now (one read at a time; concurrent callers share it)."""
        if self._identity_read is None:
            self._identity_read = asyncio.ensure_future(self._fetch_identity())
        read = self._identity_read
        try:
            return await asyncio.shield(read)
        finally:
            if read.done() and self._identity_read is read:
                self._identity_read = None

    def _read_done(self, read: asyncio.Future) -> None:
        if self._identity_read is read:
            self._identity_read = None

    def _forget_identity(self) -> None:
        """Triton failed or is unavailable: no lookups until its model's identity is read again."""
        self._identity, self._identity_at = None, -math.inf

    async def _fetch_identity(self) -> str | None:
        try:
            fingerprint = (await asyncio.wait_for(self.client.limits(refresh=True), IDENTITY_TIMEOUT_S)).model_fingerprint
        except Exception as exc:  # noqa: BLE001 - Triton unavailable: unknown model, no lookups
            logger.debug("served model's identity unknown: %s", exc)
            fingerprint = None
        if fingerprint != self._identity:
            if self.cache is not None:
                self.cache.clear()  # every entry belongs to the model that was served before
                self._cache_gauges()
            if fingerprint is not None:
                logger.info("served model %s (score cache keyed on it)", fingerprint)
            elif self.cache is not None:
                logger.info("the served model's identity is unknown (Triton unavailable, or the ensemble "
                            "publishes no %s): the score cache is skipped", names.MODEL_FINGERPRINT)
        self._identity, self._identity_at = fingerprint, time.monotonic()
        return fingerprint

    async def _lookup(self, query: str, passages: Sequence[str], truncate: str | None,
                      chunk_overlap: int | None) -> Lookup | None:
        """This request's cache entries, or None when the cache is off or cannot key it."""
        if self.cache is None:
            return None
        identity = self._identity
        if time.monotonic() - self._identity_at >= IDENTITY_TTL_S:
            if identity is None:  # unknown (Triton was unavailable): read it meanwhile, never wait for it
                if self._identity_read is None:
                    self._identity_read = asyncio.ensure_future(self._fetch_identity())
                    self._identity_read.add_done_callback(self._read_done)
                return None
            identity = await self._read_identity()
        if identity is None:
            return None
        try:  # the key holds the canonical mode and the overlap CHUNK will use; bad values: the client says
            mode = rp.parse_truncate(truncate)
            overlap = (rp.parse_overlap(chunk_overlap, (await self.limits()).max_sequence_length)
                       if mode is rp.Truncate.CHUNK else None)
        except rp.RerankInputError:
            return None
        lookup = Lookup.of(self.cache, identity, request_keys(identity, mode.value, overlap, query, passages))
        metrics.CACHE_HITS.inc(len(lookup.hits))
        metrics.CACHE_MISSES.inc(len(passages) - len(lookup.hits))
        return lookup

    def _store(self, lookup: Lookup, missing: list[int], fresh: list[RerankResult]) -> None:
        if self.cache is None or lookup.identity != self._identity:  # the model changed meanwhile
            return
        for r in fresh:
            if r.error is None:
                self.cache.put(lookup.keys[missing[r.index]], Entry(r.logit, r.relevance_score, r.token_count, r.chunks))
        self._cache_gauges()

    def _cache_gauges(self) -> None:
        if self.cache is not None:
            metrics.CACHE_ENTRIES.set(len(self.cache))
            metrics.CACHE_BYTES.set(self.cache.bytes)

    def check_model(self, model: str | None) -> None:
        """``None`` means the served model; any other model is a 404 that says what is served."""
        if model is None or triton_model_name(model) in self._accepted:
            return
        served = ", ".join(self.settings.model_names)
        raise ApiError(404, f"Model '{model}' is not served here; this server serves {served}",
                       "send one of these as 'model', or leave it out")

    async def rank(self, route: str, model: str | None, query: str, passages: Sequence[str],
                   truncate: str | None, chunk_overlap: int | None = None, errors: str | None = None) -> Scored:
        """Score every passage, or raise an :class:`ApiError` / the client's ``RerankError``.

        Passages found in the score cache are answered from it; only the others go to Triton (and count
        against admission). ``errors="per_passage"``: an over-long passage is its own error result.
        """
        self.check_model(model)
        if not passages:
            raise ApiError(400, "No passages to rank: send at least one")
        if len(passages) > self.settings.max_passages:
            raise ApiError(413, f"Request has {len(passages)} passages, more than the limit of "
                                f"{self.settings.max_passages} per request ({names.MAX_PASSAGES_PER_REQUEST}); "
                                "split it into several requests")
        check_arguments(query, passages, None)  # before any lookup or estimate: unencodable text is a 400
        lookup = await self._lookup(query, passages, truncate, chunk_overlap)
        missing = lookup.missing if lookup else list(range(len(passages)))
        fresh: list[RerankResult] = []
        if missing:
            fresh = await self._score(query, [passages[i] for i in missing], truncate, chunk_overlap, errors)
            if lookup:
                self._store(lookup, missing, fresh)
        results = [replace(r, index=missing[r.index]) for r in fresh]
        if lookup:
            results += [RerankResult(i, e.logit, e.relevance_score, e.token_count, None, e.chunks)
                        for i, e in lookup.hits.items()]
        scored = sorted((r for r in results if r.error is None), key=lambda r: (-r.logit, r.index))
        failed = sorted((r for r in results if r.error is not None), key=lambda r: r.index)
        tokens = sum(r.token_count for r in scored)
        metrics.scored(route, len(scored), tokens)
        return Scored(scored + failed, tokens)

    async def _score(self, query: str, passages: list[str], truncate: str | None, chunk_overlap: int | None,
                     errors: str | None) -> list[RerankResult]:
        """Triton's results for ``passages`` (indices into them), under admission."""
        trace = tracing.current()
        timeout_s = budget_s(trace, self.settings.deadline_header, self.settings.timeout_s)
        admission = await self.admission()
        charge = (0, 0)
        tokens = 0
        if admission:
            tokens = self._estimated_tokens(query, passages, truncate)
            charge = self._admit(admission, len(passages), tokens)
        metrics.PASSAGES_IN_FLIGHT.inc(len(passages))
        metrics.TOKENS_IN_FLIGHT.inc(tokens)
        started = time.monotonic()
        stages: dict[str, float] = {}
        try:
            results = await self.client.rerank(query, passages, truncate=truncate, chunk_overlap=chunk_overlap,
                                               errors=errors, timeout_s=timeout_s,
                                               headers=trace.triton_headers() if trace else None, timings=stages)
        except InvalidInputError:
            raise
        except RerankError:
            self._forget_identity()  # Triton failed: it may come back serving another model
            raise
        finally:
            if trace is not None:  # Server-Timing: Triton's round trips, then the ensemble's own stages
                trace.stage("triton", time.monotonic() - started)
                for name, seconds in stages.items():
                    trace.stage(name, seconds)
            metrics.PASSAGES_IN_FLIGHT.dec(len(passages))
            metrics.TOKENS_IN_FLIGHT.dec(tokens)
            if admission:
                admission.release(charge, len(passages))
        self._up()  # Triton answered
        if any(not math.isfinite(r.logit) for r in results if r.error is None):  # never a bare NaN in JSON
            raise ApiError(500, "The engine returned a non-finite score")
        return results

    def _estimated_tokens(self, query: str, passages: Sequence[str], truncate: str | None) -> int:
        """Tokens the request will cost, estimated from its bytes (nothing is tokenized yet): each pair
        capped at the pair limit, except under CHUNK, which scores every window."""
        estimates = _ESTIMATOR.estimate(query, passages)
        if (truncate or "").strip().upper() != rp.Truncate.CHUNK.value:
            longest = (self.client.known_limits or ServerLimits()).max_sequence_length  # never waits for Triton
            estimates = [min(e, longest) for e in estimates]
        return sum(estimates)
