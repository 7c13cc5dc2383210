"""NIM's tensor contract over tritonclient (gRPC and HTTP): build a request, parse a response.

Inputs ``query`` and ``passage`` [N, 1] BYTES (the query repeated on every row), request parameter
``truncate``; outputs ``index`` INT32, ``logit`` FP32 and ``token_count`` INT32, each [N, 1], sorted
by logit descending. With ``truncate=CHUNK`` (our extension) the request may carry ``chunk_overlap``
and asks for ``chunks`` too (NIM servers have no such output, so it is asked for only then).
Everything else in the client builds on these few functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rerank_contract import deadline, names
from rerank_contract.prompt import RerankInputError, Truncate, parse_truncate

DEFAULT_ENSEMBLE_NAME = names.ENSEMBLE_NAME
OUTPUTS = names.OUTPUTS


@dataclass(frozen=True)
class RawResult:
    """One response, in the server's order (best first)."""

    index: np.ndarray  # int32 [N], positions in the request
    logit: np.ndarray  # float32 [N]
    token_count: np.ndarray  # int32 [N]
    chunks: np.ndarray | None = None  # int32 [N], windows scored per passage (asked for under CHUNK)
    stage_ns: np.ndarray | None = None  # int64 [3], names.STAGES of this request (asked for with timings)


@dataclass(frozen=True)
class Truncation:
    """What a request asks of truncation: NIM's ``truncate`` and, under CHUNK, ``chunk_overlap``.

    ``truncate`` is parsed by the contract's one parser (:func:`rerank_contract.prompt.parse_truncate`)
    and sent in canonical form (``END``, not `` end ``); a value it refuses is sent as given, so that the
    server names it in its error (the raw helpers here may be asked to send anything)."""

    mode: "str | Truncate | None" = None
    chunk_overlap: int | None = None
    per_passage: bool = False  # errors="per_passage": an over-long pair is its passage's error, not the call's

    @property
    def parsed(self) -> Truncate | None:
        """The mode (None: not given, or not a mode at all)."""
        if self.mode is None:
            return None
        try:
            return parse_truncate(self.mode)
        except RerankInputError:
            return None

    @property
    def chunked(self) -> bool:
        return self.parsed is Truncate.CHUNK

    def parameters(self) -> dict[str, Any] | None:
        params: dict[str, Any] = {}
        if self.mode is not None:
            parsed = self.parsed
            params[names.TRUNCATE_PARAMETER] = parsed.value if parsed is not None else self.mode
        if self.chunked and self.chunk_overlap is not None:
            params[names.CHUNK_OVERLAP_PARAMETER] = int(self.chunk_overlap)
        return params or None


def protocol_module(protocol: str) -> Any:
    """``tritonclient.grpc`` or ``tritonclient.http``; each comes with its extra of rerank-client."""
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except (ImportError, RuntimeError) as exc:  # tritonclient says RuntimeError when grpcio / gevent are missing
        raise ImportError(f"protocol={protocol!r} needs tritonclient's {protocol} support: "
                          f"pip install 'rerank-client[{protocol}]' ({exc})") from exc
    return module


def _as_bytes(text: "str | bytes") -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def build_inputs(module: Any, query: "str | bytes", passages: Sequence["str | bytes"]) -> list:
    """``query`` and ``passage`` InferInputs, [N, 1] BYTES each."""
    rows = len(passages)
    q = np.full((rows, 1), _as_bytes(query), dtype=object)
    p = np.array([_as_bytes(x) for x in passages], dtype=object).reshape(rows, 1)
    inputs = [module.InferInput(names.QUERY, [rows, 1], "BYTES"), module.InferInput(names.PASSAGE, [rows, 1], "BYTES")]
    inputs[0].set_data_from_numpy(q)
    inputs[1].set_data_from_numpy(p)
    return inputs


def build_outputs(module: Any, chunked: bool = False, stages: bool = False) -> list:
    extra = ((names.CHUNKS,) if chunked else ()) + ((names.STAGE_NS,) if stages else ())
    return [module.InferRequestedOutput(name) for name in OUTPUTS + extra]


def server_timeout_us(timeout_s: float) -> int:
    """Triton's per-request ``timeout`` (microseconds) for what is left of a call's deadline.

    Triton drops a request still queued at a dynamically batched model (the engine) once this has
    passed, counted from that model's own enqueue, where the model's queue policy allows per-request
    timeouts (``rerank-build repository --request-timeouts``, for the TensorRT engine); elsewhere Triton
    ignores it, and the ``deadline_ns`` parameter (:func:`call_parameters`) is what our steps honour.
    At least 1: 0 would mean "no timeout"."""
    return max(1, int(timeout_s * 1_000_000))


#: Seconds an RPC's own gRPC deadline runs past the call's deadline. Our server answers a request
#: that cannot meet its deadline by itself ("Request timeout expired", from the tokenizer or the
#: engine, at or just after the deadline), so the RPC normally ends with that answer and the client
#: cancels nothing. A gRPC deadline at the very instant the server answers is a cancellation racing
#: the response, which crashes Triton 2.51's gRPC frontend (SIGSEGV; triton-inference-server/server
#: issues 7368 and 8034, fixed after 24.12): seen here under 2x overload with 1 s deadlines. The
#: caller still gets its DeadlineExceededError at the deadline; only the RPC lingers, and at most
#: this long when the server does not answer.
RPC_GRACE_S = 2.0


def call_parameters(truncation: Truncation, timeout_s: float) -> dict[str, Any]:
    """A request's parameters: its truncation, and the instant its deadline falls (``deadline_ns``,
    wall clock), which every step of the ensemble reads: the tokenizer and the CPU engine drop a
    request that cannot be answered by then (``rerank_contract.deadline``), wherever it waited."""
    return {**(truncation.parameters() or {}), deadline.DEADLINE_PARAMETER: deadline.deadline_ns(timeout_s)}


def request_parameters(truncate: str | None, chunk_overlap: int | None = None) -> dict[str, Any] | None:
    return Truncation(truncate, chunk_overlap).parameters()


def parse_result(result: Any, chunked: bool = False, stages: bool = False) -> RawResult:
    """A tritonclient InferResult (either protocol) as flat numpy arrays."""
    index, logit, count = (result.as_numpy(name) for name in OUTPUTS)
    chunks = result.as_numpy(names.CHUNKS) if chunked else None
    stage_ns = result.as_numpy(names.STAGE_NS) if stages else None
    return RawResult(index.reshape(-1).astype(np.int32), logit.reshape(-1).astype(np.float32),
                     count.reshape(-1).astype(np.int32),
                     None if chunks is None else chunks.reshape(-1).astype(np.int32),
                     None if stage_ns is None or not len(stage_ns) else stage_ns.reshape(len(stage_ns), -1)[0])


def infer_once(url: str, protocol: str, model_name: str, query: "str | bytes",
               passages: Sequence["str | bytes"], truncate: str | None = None,
               timeout_s: float | None = None, chunk_overlap: int | None = None) -> RawResult:
    """One request on a fresh connection: for tools and tests, not for hot paths."""
    module = protocol_module(protocol)
    truncation = Truncation(truncate, chunk_overlap)
    kwargs: dict[str, Any] = {"parameters": truncation.parameters()}
    if protocol == "http":
        client = module.InferenceServerClient(url, connection_timeout=timeout_s or 60.0,
                                              network_timeout=timeout_s or 60.0)
    else:
        client = module.InferenceServerClient(url)
        kwargs["client_timeout"] = timeout_s
    try:
        result = client.infer(model_name, build_inputs(module, query, passages),
                              outputs=build_outputs(module, truncation.chunked), **kwargs)
        return parse_result(result, truncation.chunked)
    finally:
        client.close()
