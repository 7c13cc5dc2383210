"""The ranking-order rule, written once: logit descending, ties by the lower passage index first.

The postprocess model orders its outputs with it, the client orders results merged from several
requests with it, and the parity tool compares rankings with it, so all three agree on every tie.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def ranking_order(logits: "np.ndarray | Sequence[float]", index: "np.ndarray | Sequence[int] | None" = None) -> np.ndarray:
    """Positions into ``logits`` in ranking order. ``index``: each position's passage index in the
    original request (default: the positions themselves), which breaks ties, lower first."""
    logits = np.asarray(logits).reshape(-1)
    ties = np.arange(logits.size) if index is None else np.asarray(index).reshape(-1)
    return np.lexsort((ties, -logits))
