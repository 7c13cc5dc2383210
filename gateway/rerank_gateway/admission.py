"""Admission control: budgets of passages and of tokens in flight, and a fast, honest 503 past either.

Passages alone undercount long work: one 8k-token passage costs the engine about what a hundred short
ones do, so a budget of passages lets a few long requests queue up seconds of work. The token budget
counts the request's estimated tokens (the client library's bytes-based estimate, capped at the pair
limit unless CHUNK scores every window), so long passages fill it sooner.

Without it, overload only lengthens Triton's queues: every request waits longer, until deadlines
fail them all. Triton's own bound (``max_queue_size``) costs about 500 ms per request on 2.51 (see
docs/build.md), so the budget lives here, in the public face. One :class:`Admission` per worker
process; its event loop is single-threaded, so the counter needs no lock.
"""

from __future__ import annotations

import math
import time

#: Weight of the newest completion in the throughput estimate behind ``Retry-After``.
_EWMA = 0.2
#: ``Retry-After`` bounds, seconds.
MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S = 1, 30


class Overloaded(Exception):
    """Over a budget (``unit``: passages or tokens): answer 503 now, with ``retry_after_s``."""

    def __init__(self, in_flight: int, budget: int, retry_after_s: int, unit: str = "passages") -> None:
        super().__init__(f"{in_flight} {unit} in flight, budget {budget}")
        self.in_flight = in_flight
        self.budget = budget
        self.retry_after_s = retry_after_s
        self.unit = unit


class Admission:
    """Admits a request when its passages and its tokens fit their budgets, or when nothing else is in flight.

    A request larger than a whole budget is charged that budget, so it runs alone instead of
    never. ``Retry-After`` is the time the passages in flight take at the recent rate (passages
    completed per second while busy), rounded up and kept within 1-30 s.
    """

    def __init__(self, budget: int, token_budget: int | None = None) -> None:
        if budget < 1 or (token_budget is not None and token_budget < 1):
            raise ValueError(f"the admission budgets must be at least 1, got {budget} passages and "
                             f"{token_budget} tokens")
        self.budget = budget
        self.token_budget = token_budget
        self.in_flight = 0
        self.tokens_in_flight = 0
        self._rate: float | None = None  # passages completed per second while busy
        self._last: float | None = None  # last completion, or the start of this busy period

    def acquire(self, passages: int, tokens: int = 0) -> tuple[int, int]:
        """Admit ``passages`` of ``tokens`` (estimated) or raise :class:`Overloaded`; returns the charge
        to :meth:`release`."""
        charge = min(max(passages, 1), self.budget)
        token_charge = min(max(tokens, 0), self.token_budget) if self.token_budget else 0
        if self.in_flight and self.in_flight + charge > self.budget:
            raise Overloaded(self.in_flight, self.budget, self.retry_after_s())
        if self.in_flight and self.token_budget and self.tokens_in_flight + token_charge > self.token_budget:
            raise Overloaded(self.tokens_in_flight, self.token_budget, self.retry_after_s(), "tokens")
        if not self.in_flight:
            self._last = time.perf_counter()
        self.in_flight += charge
        self.tokens_in_flight += token_charge
        return charge, token_charge

    def release(self, charge: tuple[int, int], passages: int) -> None:
        """The request is answered (or failed): its passages and tokens leave the budgets."""
        self.in_flight -= charge[0]
        self.tokens_in_flight -= charge[1]
        self._completed(passages)

    def _completed(self, passages: int) -> None:
        # Passages per second between completions of one busy period: the throughput behind us.
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            sample = passages / (now - self._last)
            self._rate = sample if self._rate is None else (1 - _EWMA) * self._rate + _EWMA * sample
        self._last = now if self.in_flight else None

    def retry_after_s(self) -> int:
        if not self._rate:
            return MIN_RETRY_AFTER_S
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(self.in_flight / self._rate)))
