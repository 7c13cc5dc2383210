"""Names every component agrees on: model ids, the ensemble's tensors and the published limits.

The Triton model configs, the client library, the REST gateway and the build tools all read these,
so a renamed tensor or limit cannot silently split the stack in two.
"""

from __future__ import annotations

import re

#: The model's Hugging Face ids: the original and its republished name (same weights).
MODEL_ID = "nvidia/llama-3.2-nv-rerankqa-1b-v2"
MODEL_ALIASES: tuple[str, ...] = (MODEL_ID, "nvidia/llama-nemotron-rerank-1b-v2")


def triton_model_name(model_id: str) -> str:
    """NIM's rule for the Triton model name: the id lowercased, every non-alphanumeric -> ``_``."""
    return re.sub(r"[^a-z0-9]", "_", model_id.lower())


#: The public ensemble's name (NIM's gRPC contract).
ENSEMBLE_NAME = triton_model_name(MODEL_ID)

# Public tensors of the ensemble (lowercase), each [N, 1].
QUERY = "query"  # BYTES, the same query on every row
PASSAGE = "passage"  # BYTES
INDEX = "index"  # INT32, positions in the request, best first
LOGIT = "logit"  # FP32, raw model logits, descending
TOKEN_COUNT = "token_count"  # INT32, tokens scored per pair (BOS included; every window under CHUNK)
CHUNKS = "chunks"  # INT32, windows scored per pair (1 unless truncate=CHUNK split it); our extension
#: INT64 [N, 3], our extension, asked for by the gateway: nanoseconds this request spent tokenizing,
#: from the tokenizer's end to postprocessing (the engine's queue and compute), and postprocessing.
STAGE_NS = "stage_ns"
STAGES: tuple[str, ...] = ("tokenize", "engine", "postprocess")  # the columns of STAGE_NS
INPUTS: tuple[str, ...] = (QUERY, PASSAGE)
OUTPUTS: tuple[str, ...] = (INDEX, LOGIT, TOKEN_COUNT)  # NIM's outputs; CHUNKS is requested with CHUNK

#: Request parameter: ``NONE`` (NIM's default), ``END``, or ``CHUNK`` (our extension: every window of a
#: long passage is scored, the passage gets the best).
TRUNCATE_PARAMETER = "truncate"
#: Request parameter with ``truncate=CHUNK``: tokens shared by consecutive windows.
CHUNK_OVERLAP_PARAMETER = "chunk_overlap"

# Limits the ensemble publishes as config parameters (one name per limit; clients split to fit).
MAX_ROWS_PER_REQUEST = "max_rows_per_request"  # passages per Triton request (ensemble max_batch_size)
MAX_TOKENS_PER_REQUEST = "max_tokens_per_request"  # padded tokens per Triton request
MAX_SEQUENCE_LENGTH = "max_sequence_length"  # tokens per pair, BOS included
MAX_BYTES_PER_REQUEST = "max_bytes_per_request"  # text bytes per Triton request, every row's query and passage
LENGTH_BUCKETS = "length_buckets"  # lengths the tokenizer pads rows to
MAX_PASSAGES_IN_FLIGHT = "max_passages_in_flight"  # admission budget: passages the engine can have in hand
#: Not a limit: a digest of everything the repository serves (weights, tokenizer, template, engine settings),
#: so a cache of scores (the REST gateway's) can tell one served model from another.
MODEL_FINGERPRINT = "model_fingerprint"

# Limits of the REST gateway (it splits a request over several Triton requests).
MAX_PASSAGES_PER_REQUEST = "max_passages_per_request"  # passages per REST request
MAX_BODY_BYTES = "max_body_bytes"  # bytes of one REST request body
