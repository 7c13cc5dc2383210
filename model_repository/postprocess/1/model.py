"""Postprocess step: one result per passage, sorted by logit, descending, ties by lower index.

Rows arrive one per window: a passage that ``truncate=CHUNK`` split has several (PASSAGE_INDEX says
whose), and gets the best of their logits, the sum of their tokens and their number. Scores stay fp32.
The order is the contract's rule (``rerank_contract/ranking.py``, copied beside this file).
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from rerank_contract.ranking import ranking_order


def aggregate(logits: np.ndarray, token_counts: np.ndarray, passage_index: np.ndarray):
    """Per passage: (max logit, total tokens, windows), each [P], from per-row arrays."""
    owners = passage_index.reshape(-1).astype(np.int64)
    passages = int(owners.max()) + 1
    best = np.full(passages, -np.inf, dtype=np.float32)
    np.maximum.at(best, owners, logits.reshape(-1).astype(np.float32))
    tokens = np.bincount(owners, weights=token_counts.reshape(-1), minlength=passages).astype(np.int32)
    windows = np.bincount(owners, minlength=passages).astype(np.int32)
    return best, tokens, windows


def rank(logits: np.ndarray, token_counts: np.ndarray, passage_index: np.ndarray):
    """(index, logit, token_count, chunks) in ranking order, each [P, 1]."""
    scores, tokens, windows = aggregate(logits, token_counts, passage_index)
    order = ranking_order(scores).astype(np.int32)
    return tuple(a.reshape(-1, 1) for a in (order, scores[order], tokens[order], windows[order]))


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            started = time.monotonic_ns()
            logits, counts, owners, tokenized = (pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                                                 for name in ("LOGITS", "TOKEN_COUNTS", "PASSAGE_INDEX", "TOKENIZE_NS"))
            index, logit, token_count, chunks = rank(logits, counts.astype(np.int32), owners)
            # Server-Timing's stages (the same on every row): tokenizing, from its end to here (the
            # engine's queue and compute), and this step. One host, one monotonic clock.
            stages = np.array([tokenized[0, 1] - tokenized[0, 0], started - tokenized[0, 1],
                               time.monotonic_ns() - started], np.int64)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("INDEX", index),
                pb_utils.Tensor("LOGIT", logit),
                pb_utils.Tensor("TOKEN_COUNT", token_count),
                pb_utils.Tensor("CHUNKS", chunks),
                pb_utils.Tensor("STAGE_NS", np.tile(stages, (len(index), 1))),
            ]))
        return responses
