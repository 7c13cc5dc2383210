"""Admission control: a budget of passages in flight, and a fast, honest 503 past it.

Without it, overload only lengthens Triton's queues: every request waits longer, until deadlines
fail them all. Triton's own bound (``max_queue_size``) costs about 500 ms per request on 2.51 (see
the README), so the budget lives here, in the public face. One :class:`Admission` per worker
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
    """Over the budget: answer 503 now, with ``retry_after_s``."""

    def __init__(self, in_flight: int, budget: int, retry_after_s: int) -> None:
        super().__init__(f"{in_flight} passages in flight, budget {budget}")
        self.in_flight = in_flight
        self.budget = budget
        self.retry_after_s = retry_after_s


class Admission:
    """Admits a request when its passages fit the budget, or when nothing else is in flight.

    A request larger than the whole budget is charged the budget, so it runs alone instead of
    never. ``Retry-After`` is the time the passages in flight take at the recent rate (passages
    completed per second while busy), rounded up and kept within 1-30 s.
    """

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"the admission budget must be at least 1 passage, got {budget}")
        self.budget = budget
        self.in_flight = 0
        self._rate: float | None = None  # passages completed per second while busy
        self._last: float | None = None  # last completion, or the start of this busy period

    def acquire(self, passages: int) -> int:
        """Admit ``passages`` or raise :class:`Overloaded`; returns the charge to :meth:`release`."""
        charge = min(max(passages, 1), self.budget)
        if self.in_flight and self.in_flight + charge > self.budget:
            raise Overloaded(self.in_flight, self.budget, self.retry_after_s())
        if not self.in_flight:
            self._last = time.perf_counter()
        self.in_flight += charge
        return charge

    def release(self, charge: int, passages: int) -> None:
        """The request is answered (or failed): its passages leave the budget."""
        self.in_flight -= charge
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
