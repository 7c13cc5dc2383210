"""TensorRT optimization profiles planned from the tokenizer's length buckets and a token budget.

Triton's dynamic batcher merges only requests of equal shape (the engine's inputs are not ragged, so
core's ``SetConfiguredScheduler`` enforces equal shapes): a batch holds one bucket width, up to
``max_batch_size`` rows. Left alone it would put 64 rows of 8,192 tokens (524,288 tokens, MLP tensors
past 2^32 elements) into one execution. So each execution is capped by a **token budget**
(``max_tokens``, default 131,072): at bucket ``b`` a batch holds ``min(max_batch, max_tokens // b)``
rows, the engine's profile for ``b`` is exactly that large, and the batching strategy
(``model_repository/engine_tensorrt/batchstrategy.c``) keeps Triton's batches inside it.

Consecutive buckets that allow the same rows share a profile (at most ``per_profile`` of them): every
profile is one execution context per instance, and with ``ON_PROFILE_CHANGE`` each context holds the
activation memory of its own profile's largest shape, so fewer, smaller profiles use less memory.
Profile 0 is the shortest (smallest) one: every context is created on profile 0 before it switches
to its own, so that transient stays small. Pure Python (no TensorRT), tested on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

INPUT_NAMES = ("input_ids", "attention_mask")
#: Tokens (rows x padded width) one execution may hold by default.
DEFAULT_MAX_TOKENS = 131072


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes [batch, seq], the same for both engine inputs."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def holds(self, batch: int, seq: int) -> bool:
        return self.min[0] <= batch <= self.max[0] and self.min[1] <= seq <= self.max[1]

    @property
    def max_tokens(self) -> int:
        return self.max[0] * self.max[1]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def rows_at(bucket: int, max_batch: int, max_tokens: int) -> int:
    """Rows one execution may hold at ``bucket``: the batch size, capped by the token budget."""
    return min(max_batch, max_tokens // bucket)


def plan_profiles(buckets: Sequence[int], max_batch: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                  opt_tokens: int = 16384, per_profile: int = 2) -> list[Profile]:
    """One profile per group of consecutive buckets that allow the same rows (at most ``per_profile``
    buckets each); each holds those rows up to its longest bucket. ``opt`` is the shape TensorRT tunes
    for: about ``opt_tokens`` tokens at the longest bucket."""
    if max_batch < 1 or opt_tokens < 1 or per_profile < 1 or not buckets:
        raise ValueError("plan_profiles needs buckets, max_batch >= 1, opt_tokens >= 1 and per_profile >= 1")
    ordered = sorted(set(buckets))
    if max_tokens < ordered[-1]:
        raise ValueError(f"a token budget of {max_tokens} per execution cannot hold one row of the longest bucket "
                         f"({ordered[-1]})")
    groups: list[list[int]] = []
    for bucket in ordered:
        last = groups[-1] if groups else None
        if (last and len(last) < per_profile
                and rows_at(last[0], max_batch, max_tokens) == rows_at(bucket, max_batch, max_tokens)):
            last.append(bucket)
        else:
            groups.append([bucket])
    profiles, low = [], 1
    for group in groups:
        high = group[-1]
        rows = rows_at(high, max_batch, max_tokens)
        profiles.append(Profile(min=(1, low), opt=(max(1, min(rows, opt_tokens // high)), high), max=(rows, high)))
        low = high + 1
    return profiles


def rows_by_width(profiles: Sequence[Profile]) -> str:
    """The batching strategy's table, ``width:rows,...`` by increasing width (config parameter
    ``batch_rows_by_width``): a batch of that width or narrower holds at most that many rows."""
    return ",".join(f"{p.max[1]}:{p.max[0]}" for p in sorted(profiles, key=lambda p: p.max[1]))


def check_profiles(profiles: Sequence[Profile], buckets: Sequence[int], max_rows: int,
                   max_tokens_per_request: int) -> list[str]:
    """Problems that would make a request the tokenizer accepts fail in the engine.

    One request is never split: at bucket ``b`` it may carry ``min(max_rows, max_tokens_per_request // b)``
    rows, and some profile must hold that many. (Batches of several requests are the batching
    strategy's business: it never forms one that no profile holds.)"""
    problems = []
    if not profiles:
        return ["the engine has no optimization profile"]
    longest = max(p.max[1] for p in profiles)
    for bucket in sorted(set(buckets)):
        need = min(max_rows, max_tokens_per_request // bucket)
        if bucket > longest:
            problems.append(f"bucket {bucket} is longer than any engine profile (longest {longest})")
        elif need >= 1 and not any(p.holds(need, bucket) for p in profiles):
            best = max((p.max[0] for p in profiles if p.min[1] <= bucket <= p.max[1]), default=0)
            problems.append(f"a request of {need} rows at bucket {bucket} (max_rows {max_rows}, max_tokens_per_request "
                            f"{max_tokens_per_request}) does not fit the profiles (they hold at most {best} rows at "
                            f"that length): lower max_tokens_per_request or max_rows, or rebuild the engine")
    return problems
