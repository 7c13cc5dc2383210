"""Postprocess step: rows sorted by logit, descending, ties by lower index (scores stay fp32)."""

import numpy as np
import triton_python_backend_utils as pb_utils


def rank(logits: np.ndarray, token_counts: np.ndarray):
    """(index, logit, token_count) in ranking order, each [N, 1]."""
    scores = logits.reshape(-1).astype(np.float32)
    order = np.lexsort((np.arange(scores.size), -scores)).astype(np.int32)
    return order.reshape(-1, 1), scores[order].reshape(-1, 1), token_counts.reshape(-1)[order].reshape(-1, 1)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "LOGITS").as_numpy()
            counts = pb_utils.get_input_tensor_by_name(request, "TOKEN_COUNTS").as_numpy()
            index, logit, token_count = rank(logits, counts.astype(np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("INDEX", index),
                pb_utils.Tensor("LOGIT", logit),
                pb_utils.Tensor("TOKEN_COUNT", token_count),
            ]))
        return responses
