"""What the CPU engine step does with the rows it gets: regroup them by true length, and refuse rows
that only a direct call to the engine model could send. Engine internals, apart from the request contract
(``prompt.py``); the repository assembly copies this package beside the engine's ``model.py`` too.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


#: What one more engine call costs, in padded tokens: the fixed work of a run (a call into the runtime,
#: slicing, copies). Measured on the small preset on 2 cores: a call of 1 x 8 tokens takes 1.8 ms in
#: OpenVINO f32 and 2.1 ms in ONNX Runtime, the time of 20-30 tokens in a wide run; 64 leaves margin
#: for the Python around it.
RUN_COST_TOKENS = 64


def compact_runs(lengths: "Sequence[int] | np.ndarray", max_tokens: int, granularity: int = 8,
                 run_cost: int = RUN_COST_TOKENS) -> list[tuple[np.ndarray, int]]:
    """Regroup left-padded rows by true length for an engine that accepts any width (CPU).

    Returns (row indices, width) per run. Rows are sorted by length and cut into consecutive runs
    that minimise padded tokens + ``run_cost`` per run (an exact dynamic programme over the sorted
    rows), with at most ``max_tokens`` padded tokens per run (a longer row runs alone). Widths are
    multiples of ``granularity``, so shapes repeat. Scores do not depend on padding.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    widths = np.maximum(granularity, -(-lengths[order] // granularity) * granularity)
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: the cheapest cost of the j shortest rows
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last run of that optimum starts
    for j in range(1, n + 1):
        width = int(widths[j - 1])  # the widest row of any run ending at j
        first = max(0, j - max(1, max_tokens // width))
        starts = np.arange(first, j)
        cost = best[first:j] + (j - starts) * width + run_cost
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], first + k
    runs: list[tuple[np.ndarray, int]] = []
    j = n
    while j > 0:
        runs.append((order[cut[j]:j], int(widths[j - 1])))
        j = int(cut[j])
    return runs[::-1]


def engine_input_problem(input_ids: np.ndarray, attention_mask: np.ndarray, max_width: int,
                         vocab_size: int) -> "str | None":
    """Why the engine step must refuse a request that reached it directly, or None if it is sound.

    The ensemble's tokenizer only ever sends sound rows, but the engine model is reachable on its
    own: an id outside the vocabulary would be gathered out of bounds (undefined in a TensorRT
    engine), a width past the longest bucket allocates without bound, a mask of other values than
    0 and 1 gives NaN, an all-zero mask gives a plausible-looking score of nothing, and the CPU
    engine cuts rows to their length from the left, which only a left-padded row survives.
    """
    if input_ids.ndim != 2 or attention_mask.ndim != 2 or input_ids.shape != attention_mask.shape:
        return (f"input_ids {list(input_ids.shape)} and attention_mask {list(attention_mask.shape)} must both be "
                "[rows, width], of the same shape")
    rows, width = input_ids.shape
    if width > max_width:
        return f"width {width} exceeds the longest sequence the engine serves ({max_width} tokens)"
    if rows == 0 or width == 0:
        return "no tokens to score"
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        return f"input_ids must lie in [0, {vocab_size}), got values from {low} to {high}"
    if not np.isin(attention_mask, (0, 1)).all():
        return "attention_mask must hold only 0 and 1"
    if (np.diff(attention_mask, axis=1) < 0).any():
        return "rows must be left-padded: each attention_mask row is zeros, then ones"
    empty = np.flatnonzero(attention_mask.sum(axis=1) == 0)
    if empty.size:
        return f"row {int(empty[0])} has an all-zero attention_mask: there is nothing to score"
    return None
