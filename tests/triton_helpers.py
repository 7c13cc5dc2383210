"""Raw tritonclient helpers for server tests (any shape, any dtype, either protocol)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once, protocol_module

INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


def client(server, protocol: str):
    return protocol_module(protocol).InferenceServerClient(server.url(protocol))


def tensor(module: Any, name: str, array: np.ndarray, dtype: str | None = None):
    dtype = dtype or ("BYTES" if array.dtype == object else {"int32": "INT32", "float32": "FP32"}[str(array.dtype)])
    inp = module.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return inp


def texts(values: list, rows: int | None = None) -> np.ndarray:
    arr = np.array([v if isinstance(v, bytes) else v.encode() for v in values], dtype=object)
    return arr.reshape(-1, 1) if rows is None else arr.reshape(rows, -1)


def infer_raw(server, protocol: str, inputs: dict[str, np.ndarray], parameters: dict | None = None,
              model: str = DEFAULT_ENSEMBLE_NAME):
    module = protocol_module(protocol)
    c = client(server, protocol)
    try:
        return c.infer(model, [tensor(module, k, v) for k, v in inputs.items()], parameters=parameters)
    finally:
        c.close()


def expect_invalid(server, protocol: str, inputs: dict[str, np.ndarray], parameters: dict | None = None,
                   model: str = DEFAULT_ENSEMBLE_NAME) -> str:
    """Send a bad request; assert INVALID_ARGUMENT / HTTP 400 and return the message."""
    try:
        infer_raw(server, protocol, inputs, parameters, model)
    except InferenceServerException as exc:
        assert str(exc.status()) == INVALID[protocol], (exc.status(), exc.message())
        return exc.message()
    raise AssertionError("the server accepted a bad request")


def ensemble_answer(server, query: str, passages: list[str], truncate: str = "END") -> tuple[np.ndarray, np.ndarray]:
    """(logits, token counts) per passage, by position, from the ensemble over gRPC: one request per
    passage, so that no splitting or merging of ours is involved. The ground truth for those tests."""
    def one(passage: str) -> tuple[float, int]:
        r = infer_once(server.grpc_url, "grpc", DEFAULT_ENSEMBLE_NAME, query, [passage], truncate=truncate)
        return float(r.logit[0]), int(r.token_count[0])

    with ThreadPoolExecutor(4) as pool:
        pairs = list(pool.map(one, passages))
    return np.array([p[0] for p in pairs], dtype=np.float32), np.array([p[1] for p in pairs])
