"""Accuracy beside speed: every system's logits against the fp32 reference, on the same pairs, in the same run.

The pairs: the parity tool's fixed multilingual cases and seeded random ones (passages of 1-120 words),
plus queries with long passages (1,000-4,000 tokens), where reduced precision has the most to lose.
The reference: our PyTorch model in fp32, each pair alone and unpadded (``parity.reference_scorer``).

Per system and precision:
- max abs error: the largest logit difference over all pairs;
- mean abs error / std: the mean difference over the spread of the reference logits (scale-free: the
  random presets' logits spread with a std of ~4, a real checkpoint's differently);
- top passage kept: queries whose best passage by the reference is also the system's best.

The bound for "equal accuracy" is vLLM's bf16 measured in the same run on the same pairs (a system meets
it when none of the three is worse, within :data:`SLACK`); without vLLM, :data:`FALLBACK_BOUND`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .workload import Request, Workload, WorkloadSpec

#: Relative slack on the two error measures when comparing with the bound: the same system's mean error
#: moved by up to 8 % between seeds of this set (torch bf16: 0.0039-0.0042 std-relative), its max more.
SLACK = 0.1


@dataclass(frozen=True)
class Accuracy:
    max_abs: float
    mean_rel: float  # mean abs error / std of the reference logits
    top_kept: int
    queries: int
    pairs: int

    def within(self, bound: "Accuracy") -> bool:
        """No worse than ``bound`` on any measure (errors within :data:`SLACK`)."""
        return (self.max_abs <= bound.max_abs * (1 + SLACK) and self.mean_rel <= bound.mean_rel * (1 + SLACK)
                and self.top_kept / self.queries >= bound.top_kept / bound.queries)

    def cells(self) -> str:
        return f"{self.max_abs:.2g} | {self.mean_rel:.2g} | {self.top_kept}/{self.queries}"


#: The bound when vLLM did not run: vLLM 0.32's bf16 on the small preset, this set, seed 0 (measured
#: 2026-12-06: max 0.080, mean / std 0.0032, every top passage kept).
FALLBACK_BOUND = Accuracy(max_abs=0.08, mean_rel=0.0032, top_kept=27, queries=27, pairs=126)


def accuracy_requests(seed: int, quick: bool = False) -> list[Request]:
    """The accuracy set: fixed and random parity cases, then long passages (shorter with ``quick``)."""
    from rerank_build.parity import default_cases

    cases = [Request(case.query, case.passages) for _, case in default_cases(4 if quick else 12, seed)]
    long_mix = ((1.0, 200, 400),) if quick else ((1.0, 1000, 4000),)
    return cases + Workload(WorkloadSpec(seed + 1, (5,), long_mix)).take(1 if quick else 2)


class AccuracySet:
    """The requests and their reference logits (computed once per run)."""

    def __init__(self, checkpoint: Path, requests: list[Request]) -> None:
        from rerank_build.parity import reference_scorer
        from rerank_contract.prompt import PairEncoder, Truncate, load_tokenizer

        encoder = PairEncoder(load_tokenizer(str(checkpoint)))
        score = reference_scorer(checkpoint)
        started = time.perf_counter()
        self.requests = requests
        self.reference = [score(r.query, r.passages, encoder.encode(r.query, r.passages, Truncate.END))[0]
                          for r in requests]
        self.seconds = time.perf_counter() - started
        self.lengths = [len(row) for r in requests for row in encoder.encode(r.query, r.passages, Truncate.END)]

    def measure(self, logits: Callable[[Request], np.ndarray]) -> Accuracy:
        got = [np.asarray(logits(r), dtype=np.float64) for r in self.requests]
        ref = np.concatenate(self.reference).astype(np.float64)
        diff = np.abs(np.concatenate(got) - ref)
        top = sum(int(np.argmax(g) == np.argmax(r)) for g, r in zip(got, self.reference))
        return Accuracy(float(diff.max()), float(diff.mean() / ref.std()), top, len(self.requests), len(ref))

    def describe(self) -> str:
        return (f"{len(self.requests)} queries, {len(self.lengths)} pairs of {min(self.lengths)}-{max(self.lengths)} "
                f"tokens (median {int(np.median(self.lengths))}), reference logits std "
                f"{np.concatenate(self.reference).std():.2f}")
