"""Seeded reranking workload shared by Locust and the benchmarks.

A request is one query (5-30 words) with a number of passages drawn from a mix (default 10/50/100);
passage lengths follow a realistic mix in tokens (mostly 50-500, a tail to 4,000), in several
scripts. Every request is generated fresh from the seed, so no two requests (and few shapes) repeat:
response caches and identical shapes cannot flatter the numbers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

from rerank_build.textgen import LANGS, WORDS

#: (weight, low, high) token ranges of passages, drawn log-uniformly inside a range.
DEFAULT_LENGTH_MIX: tuple[tuple[float, int, int], ...] = ((0.85, 50, 500), (0.12, 500, 2000), (0.03, 2000, 4000))
DEFAULT_PASSAGE_MIX: tuple[int, ...] = (10, 50, 100)
#: Llama-3 tokens per word of each word list (measured with the tokenizer on 5,000 words each), used
#: to size passages in tokens without tokenizing them.
TOKENS_PER_WORD = {"en": 1.0, "de": 1.66, "fr": 1.33, "es": 1.4, "ru": 1.78, "el": 3.19, "ar": 2.09, "he": 4.88,
                   "hi": 3.18, "th": 2.74, "zh": 2.15, "ja": 2.4, "ko": 1.25, "vi": 1.13, "misc": 2.77}


@dataclass(frozen=True)
class Request:
    query: str
    passages: tuple[str, ...]

    @property
    def pairs(self) -> int:
        return len(self.passages)


@dataclass(frozen=True)
class WorkloadSpec:
    seed: int = 0
    passage_mix: tuple[int, ...] = DEFAULT_PASSAGE_MIX
    length_mix: tuple[tuple[float, int, int], ...] = DEFAULT_LENGTH_MIX
    query_words: tuple[int, int] = (5, 30)

    @classmethod
    def parse(cls, seed: int = 0, passages: str | None = None, lengths: str | None = None) -> "WorkloadSpec":
        """``passages`` "10,50,100"; ``lengths`` "0.85:50-500,0.12:500-2000,0.03:2000-4000"."""
        mix = tuple(int(x) for x in passages.split(",")) if passages else DEFAULT_PASSAGE_MIX
        if lengths:
            parsed = []
            for part in lengths.split(","):
                weight, span = part.split(":")
                low, high = span.split("-")
                parsed.append((float(weight), int(low), int(high)))
            length_mix = tuple(parsed)
        else:
            length_mix = DEFAULT_LENGTH_MIX
        return cls(seed=seed, passage_mix=mix, length_mix=length_mix)


def _text(rng: random.Random, tokens: int | None = None, words: int | None = None) -> str:
    """Text from one or two scripts, about ``tokens`` tokens long (or exactly ``words`` words)."""
    langs = rng.sample(LANGS, k=rng.choice((1, 1, 2)))
    if words is None:
        per_word = sum(TOKENS_PER_WORD[lang] for lang in langs) / len(langs)
        words = round((tokens or 1) / per_word)
    return " ".join(rng.choice(WORDS[rng.choice(langs)]) for _ in range(max(1, words)))


def passage_tokens(rng: random.Random, mix: Sequence[tuple[float, int, int]]) -> int:
    """A target length in tokens from the mix (log-uniform inside the chosen range)."""
    weights = [w for w, _, _ in mix]
    _, low, high = rng.choices(list(mix), weights=weights)[0]
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


class Workload:
    """An endless, seeded stream of requests; ``worker`` offsets the seed for parallel users."""

    def __init__(self, spec: WorkloadSpec = WorkloadSpec(), worker: int = 0) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed * 1_000_003 + worker)

    def request(self, passages: int | None = None) -> Request:
        rng = self.rng
        n = passages or rng.choice(self.spec.passage_mix)
        query = _text(rng, words=rng.randint(*self.spec.query_words))
        texts = tuple(_text(rng, tokens=passage_tokens(rng, self.spec.length_mix)) for _ in range(n))
        return Request(query, texts)

    def __iter__(self) -> Iterator[Request]:
        while True:
            yield self.request()

    def take(self, n: int, passages: int | None = None) -> list[Request]:
        return [self.request(passages) for _ in range(n)]
