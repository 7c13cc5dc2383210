"""Tokenizer step: one request in, its rows left-padded to a length bucket out.

Under ``truncate=CHUNK`` a long passage gives several rows (its windows); PASSAGE_INDEX tells the
postprocess step which passage each row scores.

All rules (template, BOS, truncation, errors) live in ``rerank_contract/prompt.py`` and the limits in
``rerank_contract/limits.py``; the repository assembly copies that package beside this file. Bad input answers INVALID_ARGUMENT for that request
only; nothing reaches the engine's batch. With ``deadlines`` on, a request already past the deadline
its client sent (``rerank_contract.deadline``) is answered UNAVAILABLE "Request timeout expired"
untokenized, so it never reaches the engine's queue.
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from rerank_contract import deadline, names
from rerank_contract import prompt as rp
from rerank_contract.limits import config_parameters, limits_from_config


def _parameters_of(request) -> tuple[object, object]:
    """The request's ``truncate`` (NIM's default NONE) and ``chunk_overlap`` (None: the default)."""
    params = json.loads(request.parameters() or "{}")
    return params.get(names.TRUNCATE_PARAMETER, "NONE"), params.get(names.CHUNK_OVERLAP_PARAMETER)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        tokenizer = rp.load_tokenizer(os.path.join(here, "tokenizer.json"))
        self.limits = limits_from_config(config)
        self.encoder = rp.PairEncoder(tokenizer, max_length=self.limits.max_sequence_length)
        self.pad_id = int(config_parameters(config)["pad_id"])
        if "deadlines" not in config_parameters(config):  # written by the repository assembly, like the rest
            raise ValueError("tokenizer: config.pbtxt lacks the parameter 'deadlines'")
        self.deadlines = config_parameters(config)["deadlines"] == "on"

    def execute(self, requests):
        return [self._tokenize(request) for request in requests]

    def _tokenize(self, request):
        started = time.monotonic_ns()
        if self.deadlines:
            due = deadline.deadline_of(request.parameters())
            now = time.time_ns()
            if due is not None and due < now:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    deadline.expired_message("tokenizer", due, now), pb_utils.TritonError.UNAVAILABLE))
        try:
            queries = pb_utils.get_input_tensor_by_name(request, names.QUERY).as_numpy().reshape(-1)
            passages = pb_utils.get_input_tensor_by_name(request, names.PASSAGE).as_numpy().reshape(-1)
            truncate, overlap = _parameters_of(request)
            batch = rp.encode_request(
                self.encoder, list(queries), list(passages), truncate, self.limits, self.pad_id, overlap
            )
        except rp.RerankInputError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("INPUT_IDS", batch.input_ids),
            pb_utils.Tensor("ATTENTION_MASK", batch.attention_mask),
            pb_utils.Tensor("TOKEN_COUNTS", batch.token_counts.reshape(-1, 1).astype(np.int32)),
            pb_utils.Tensor("PASSAGE_INDEX", batch.owners().reshape(-1, 1).astype(np.int32)),
            # Server-Timing: when tokenizing started and ended, on every row (the postprocess step reads it)
            pb_utils.Tensor("TOKENIZE_NS", np.tile(np.array([started, time.monotonic_ns()], np.int64),
                                                   (batch.input_ids.shape[0], 1))),
        ])
