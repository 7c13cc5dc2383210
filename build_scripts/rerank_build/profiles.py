"""TensorRT optimization profiles planned from the tokenizer's length buckets.

Triton's dynamic batcher merges up to ``max_batch_size`` rows of ANY bucket into one execution, and
the TensorRT backend fails the whole batch when no profile holds its shape. So every profile must
hold ``max_batch_size`` rows at its longest bucket; what differs between profiles is the shape
TensorRT tunes for (``opt``): short sequences at large batches, long sequences at small ones, from
a token budget per execution. Pure Python (no TensorRT), so it is tested on CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

INPUT_NAMES = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes [batch, seq], the same for both engine inputs."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def holds(self, batch: int, seq: int) -> bool:
        return self.min[0] <= batch <= self.max[0] and self.min[1] <= seq <= self.max[1]

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def group_buckets(buckets: Sequence[int], per_profile: int = 2) -> list[list[int]]:
    """Consecutive buckets, ``per_profile`` at a time (64,128 | 256,512 | ...)."""
    ordered = sorted(set(buckets))
    return [ordered[i:i + per_profile] for i in range(0, len(ordered), per_profile)]


def plan_profiles(buckets: Sequence[int], max_batch: int, opt_tokens: int = 16384,
                  per_profile: int = 2) -> list[Profile]:
    """One profile per group of buckets; each holds ``max_batch`` rows up to its longest bucket."""
    if max_batch < 1 or opt_tokens < 1 or not buckets:
        raise ValueError("plan_profiles needs buckets, max_batch >= 1 and opt_tokens >= 1")
    profiles, low = [], 1
    for group in group_buckets(buckets, per_profile):
        high = group[-1]
        opt_batch = max(1, min(max_batch, opt_tokens // high))
        profiles.append(Profile(min=(1, low), opt=(opt_batch, high), max=(max_batch, high)))
        low = high + 1
    return profiles


def check_profiles(profiles: Sequence[Profile], buckets: Sequence[int], max_batch: int) -> list[str]:
    """Problems that would make Triton refuse the engine or fail batches at run time."""
    problems = []
    if not profiles:
        return ["the engine has no optimization profile"]
    longest = max(p.max[1] for p in profiles)
    for bucket in sorted(set(buckets)):
        if bucket > longest:
            problems.append(f"bucket {bucket} is longer than any engine profile (longest {longest})")
        elif not any(p.holds(max_batch, bucket) for p in profiles):
            best = max((p.max[0] for p in profiles if p.min[1] <= bucket <= p.max[1]), default=0)
            problems.append(f"max_batch_size {max_batch} at bucket {bucket} does not fit the profiles "
                            f"(they hold at most {best} rows at that length)")
    return problems


def activation_bytes(hidden: int, intermediate: int, heads: int, profile: Profile, itemsize: int = 2) -> int:
    """Rough peak activation memory of one execution at the profile's max shape (fused attention)."""
    tokens = profile.max[0] * profile.max[1]
    return tokens * (4 * hidden + 2 * intermediate) * itemsize + profile.max[0] * heads * profile.max[1] * 4
