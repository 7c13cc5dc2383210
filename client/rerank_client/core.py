"""What the sync and async clients share: server limits, request planning, retry timing, merging.

Planning groups passages of similar (estimated) length into requests, so that each request pads
less, and keeps every request within the server's published limits (rows, padded tokens). Estimates
come from the shared ``rerank_contract.prompt`` module when a tokenizer is given (exact), otherwise from a
conservative bytes-based guess; a request the server still finds too large is split in half.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rerank_contract import names
from rerank_contract import prompt as rp
from rerank_contract.ranking import ranking_order
from rerank_contract.limits import DEFAULTS as DEFAULT_LIMITS, config_parameters, published_limits

from .connection import ConnectionSettings
from .errors import (
    ClientClosedError, DeadlineExceededError, InputTooLongError, InvalidInputError, RerankError, classify,
)
from .tensors import RawResult, Truncation

#: Template + BOS overhead in tokens ("question:" ... " \n \n passage:").
TEMPLATE_TOKENS = 8
DEFAULT_ROWS_PER_REQUEST = 128


@dataclass(frozen=True)
class ServerLimits:
    """What the ensemble publishes in its config (NIM servers may publish only max_batch_size); a limit
    it does not publish is None (the client then does not plan for it), except the rows and the
    sequence length, which take the project's defaults (:data:`rerank_contract.limits.DEFAULTS`)."""

    max_rows: int = DEFAULT_LIMITS.max_rows
    max_tokens: int | None = None
    max_sequence_length: int = DEFAULT_LIMITS.max_sequence_length
    buckets: tuple[int, ...] | None = None
    max_bytes: int | None = None  # text bytes per request, every row's query and passage
    max_in_flight: int | None = None  # admission budget in passages (the REST gateway enforces it)
    model_fingerprint: str | None = None  # identity of the served model (None: a server that publishes none)
    stage_timings: bool = False  # the ensemble has the stage_ns output (ours does; NIM's does not)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ServerLimits":
        """From a model config as JSON (tritonclient's ``get_model_config`` as a dict), with the parser
        the tokenizer model uses (:func:`rerank_contract.limits.published_limits`)."""
        params = config_parameters(config)
        in_flight = params.get(names.MAX_PASSAGES_IN_FLIGHT)
        outputs = config.get("config", config).get("output") or []
        return cls(**published_limits(config), max_in_flight=int(in_flight) if in_flight else None,
                   model_fingerprint=params.get(names.MODEL_FINGERPRINT) or None,
                   stage_timings=any(o.get("name") == names.STAGE_NS for o in outputs))

    def padded(self, length: int) -> int:
        return rp.choose_bucket(length, self.buckets) if self.buckets else length


class TokenEstimator:
    """Tokens per pair: exact with a tokenizer (the server's own rules), else a safe over-estimate."""

    def __init__(self, tokenizer: str | Path | None = None) -> None:
        self.encoder = rp.PairEncoder(rp.load_tokenizer(str(tokenizer)), max_length=10**9) if tokenizer else None

    def estimate(self, query: str, passages: Sequence[str], passage_bytes: Sequence[int] | None = None) -> list[int]:
        """``passage_bytes``: each passage's UTF-8 length, when the caller has it already."""
        if self.encoder is not None:
            return [len(ids) for ids in self.encoder.encode(query, passages, rp.Truncate.NONE)]
        # Llama-3 BPE: ~4 bytes per token for English, ~3 for most other scripts; bytes/3 over-estimates.
        q = math.ceil(len(query.encode("utf-8")) / 3)
        sizes = passage_bytes if passage_bytes is not None else [len(p.encode("utf-8")) for p in passages]
        return [TEMPLATE_TOKENS + q + math.ceil(n / 3) for n in sizes]


def plan_requests(lengths: Sequence[int], limits: ServerLimits, max_rows: int | None = None,
                  truncate: str = "NONE", sizes: Sequence[int] | None = None, overlap: int = 0,
                  query_tokens: int = TEMPLATE_TOKENS) -> list[list[int]]:
    """Passage indices per request: one length bucket per request, within the row, token and byte limits.

    Rows are padded to the request's bucket, so mixing a long passage into a request of short ones
    would pad every row to the long one's bucket; grouping by bucket keeps padding minimal.
    ``sizes``: each row's text bytes (query and passage), kept under ``limits.max_bytes`` when given.
    Under CHUNK a passage longer than the limit counts as the windows it will make (estimated from
    ``query_tokens``, the query part of each window, and ``overlap``), each a full-length row.
    """
    rows_cap = max(1, min(limits.max_rows, max_rows or limits.max_rows))
    longest = limits.max_sequence_length
    cap = longest if truncate in (rp.Truncate.END.value, rp.Truncate.CHUNK.value) else None
    by_width: dict[int, list[int]] = {}
    weight = [1] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        length = min(lengths[i], cap) if cap else lengths[i]
        if truncate == rp.Truncate.CHUNK.value and lengths[i] > longest:
            weight[i] = estimated_windows(lengths[i], longest, query_tokens, overlap)
        width = limits.padded(length) if limits.buckets else 1 << max(0, length - 1).bit_length()
        by_width.setdefault(width, []).append(i)
    chunks: list[list[int]] = []
    for width, members in sorted(by_width.items()):
        per_request = rows_cap
        if limits.max_tokens is not None:
            per_request = max(1, min(rows_cap, limits.max_tokens // max(limits.padded(width), 1)))
        chunks += _pack(members, weight, per_request)
    if sizes is not None and limits.max_bytes is not None:
        chunks = [part for chunk in chunks for part in _pack(chunk, sizes, limits.max_bytes)]
    return chunks


def estimated_windows(length: int, max_length: int, query_tokens: int, overlap: int) -> int:
    """Windows CHUNK makes of a pair of ``length`` tokens (at least 1; the server's rule, estimated)."""
    width = max_length - query_tokens
    if length <= max_length or width <= overlap:
        return 1
    return 1 + math.ceil((length - query_tokens - width) / (width - overlap))


def _pack(members: list[int], weight: Sequence[int], per_request: int) -> list[list[int]]:
    """Consecutive groups of ``members`` whose weights (windows, bytes) sum to at most ``per_request``;
    a heavier lone member travels alone, and the server refuses it with a message naming the limit."""
    groups: list[list[int]] = [[]]
    total = 0
    for i in members:
        if groups[-1] and total + weight[i] > per_request:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += weight[i]
    return [g for g in groups if g]


#: The limits whose refusal a smaller request avoids; every such refusal names its limit in
#: parentheses (``rerank_contract.prompt.encode_request``), so nothing else is mistaken for one.
SPLITTABLE_LIMITS = (names.MAX_ROWS_PER_REQUEST, names.MAX_TOKENS_PER_REQUEST, names.MAX_BYTES_PER_REQUEST)


def is_too_large(error: InvalidInputError) -> bool:
    """The server's "more than the limit ... per request" refusal (rows, CHUNK windows, padded tokens,
    bytes): worth splitting, not failing. Told by the limit's name, which every such refusal carries."""
    return any(f"({limit})" in error.message for limit in SPLITTABLE_LIMITS)


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by the call's deadline.

    ``window_s`` (when set) replaces the count of ``retries``: a request is retried for up to that
    many seconds after its first failure, which is how long it rides through a server restart.
    """

    retries: int = 5
    base_s: float = 0.1
    max_s: float = 5.0
    window_s: float | None = None
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, min(self.max_s, self.base_s * (2 ** attempt)))

    def backoff(self, error: RerankError, cause: BaseException, attempt: int, deadline: float,
                first_failure: float | None = None) -> float:
        """The wait before retrying after ``error``; raises it instead when retrying is not allowed.

        Raises ``error`` itself when it is not retryable or the retries (or the retry window, counted
        from ``first_failure``) are spent, and a ``DeadlineExceededError`` keeping the server's
        message when the wait would pass ``deadline``.
        """
        if self.window_s is None:
            spent = attempt >= self.retries
        else:
            spent = time.monotonic() - (first_failure or time.monotonic()) >= self.window_s
        if not error.retryable or spent:
            raise error from cause
        delay = self.delay(attempt)
        if time.monotonic() + delay >= deadline:
            raise DeadlineExceededError(f"deadline passed while retrying: {error.message}",
                                        error.status) from cause
        return delay


class Retrying:
    """One call's retry state, shared by the sync and async loops: what is left of its deadline before
    each attempt, and the wait after a failure (or the error that ends the call)."""

    def __init__(self, policy: RetryPolicy, deadline: float, closed: Callable[[], bool]) -> None:
        self.policy, self.deadline, self.closed = policy, deadline, closed
        self.attempt = 0
        self.first_failure: float | None = None

    def remaining(self) -> float:
        """Seconds left for the next attempt; DeadlineExceededError when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError("deadline passed before the request could be sent")
        return left

    def failed(self, exc: BaseException) -> float:
        """The wait before the next attempt after ``exc``, or the error that ends the call."""
        if self.closed():
            raise ClientClosedError("the client was closed while the call ran") from exc
        self.first_failure = self.first_failure or time.monotonic()
        delay = self.policy.backoff(classify(exc), exc, self.attempt, self.deadline, self.first_failure)
        self.attempt += 1
        return delay


@dataclass(frozen=True)
class PassageError:
    """Why one passage was not scored (``errors="per_passage"``): ``code`` ``too_long``, the server's
    message, and the pair's length in tokens (BOS and template included)."""

    code: str
    message: str
    token_count: int | None = None


@dataclass(frozen=True)
class RerankResult:
    """One passage's result: ``index`` into the caller's list, raw ``logit``, its sigmoid in fp32.

    With ``errors="per_passage"`` a passage that could not be scored comes after every scored one,
    with ``error`` set and ``logit`` / ``relevance_score`` NaN (never a number that could pass for a score).
    """

    index: int
    logit: float
    relevance_score: float
    token_count: int
    text: str | None = None
    chunks: int = 1  # windows scored (truncate=CHUNK on a passage longer than the limit)
    error: PassageError | None = None


#: ``errors``: ``raise`` (NIM's contract: one over-long pair fails the call) or ``per_passage`` (our
#: extension: it comes back as that passage's error, every other passage scored).
ERROR_MODES = ("raise", "per_passage")
_TOO_LONG = re.compile(r"Input length (\d+) exceeds maximum allowed token size")


def parse_errors(errors: str | None) -> bool:
    """True for per-passage errors; InvalidInputError naming the choices for anything unknown."""
    if errors is None or errors == "raise":
        return False
    if errors == "per_passage":
        return True
    raise InvalidInputError(f"errors must be one of {', '.join(ERROR_MODES)}, got {errors!r}", "client")


def passage_error(error: InputTooLongError) -> PassageError:
    """The server's refusal of one over-long pair as that passage's error."""
    found = _TOO_LONG.search(error.message)
    return PassageError("too_long", error.message, int(found.group(1)) if found else None)


def bisect_for(error: InvalidInputError, rows: int, per_passage: bool) -> bool:
    """Whether a refused request is split in half and sent again: it was too large for the server's
    limits, or (per-passage errors) one of its pairs is too long, which halving isolates. Only the
    tokenizer sees a refused request: halving costs no engine time."""
    return rows > 1 and (is_too_large(error) or (per_passage and isinstance(error, InputTooLongError)))


def with_errors(results: list[RerankResult], errors: Sequence[tuple[int, PassageError]], passages: Sequence[str],
                return_text: bool) -> list[RerankResult]:
    """The scored results, then each unscored passage (by index) with its error."""
    nan = float("nan")
    return results + [RerankResult(i, nan, nan, e.token_count or 0, passages[i] if return_text else None, 0, e)
                      for i, e in sorted(errors, key=lambda pair: pair[0])]


def sigmoid32(logits: np.ndarray) -> np.ndarray:
    """Numerically stable sigmoid computed in float32 (no overflow for large negative logits)."""
    x = np.asarray(logits, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = np.float32(1) / (np.float32(1) + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (np.float32(1) + e)
    return out


def merge(chunks: Sequence[Sequence[int]], results: Sequence[RawResult], passages: Sequence[str],
          top_n: int | None, return_text: bool) -> list[RerankResult]:
    """Per-request results (indices local to each request) -> one ranking over the caller's list."""
    def joined(values: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(values) if values else np.empty(0, dtype=dtype)

    index = joined([np.asarray(chunk)[r.index] for chunk, r in zip(chunks, results)], np.int64)
    logit = joined([r.logit for r in results], np.float32)
    counts = joined([r.token_count for r in results], np.int32)
    windows = joined([r.chunks if r.chunks is not None else np.ones_like(r.index) for r in results], np.int32)
    order = ranking_order(logit, index)  # the server's order: logit descending, ties lower index first
    if top_n is not None:
        order = order[:top_n]
    scores = sigmoid32(logit[order])
    return [
        RerankResult(int(index[o]), float(logit[o]), float(s), int(counts[o]),
                     passages[int(index[o])] if return_text else None, int(windows[o]))
        for o, s in zip(order, scores)
    ]


def assemble(pairs: Sequence[tuple[Sequence[int], "RawResult | PassageError"]], passages: Sequence[str],
             top_n: int | None, return_text: bool) -> list[RerankResult]:
    """Every request's answer (a result, or under per-passage errors one passage's error) as the call's
    results: the scored passages ranked and cut to ``top_n``, then the unscored ones."""
    scored = [(c, r) for c, r in pairs if not isinstance(r, PassageError)]
    failed = [(c[0], r) for c, r in pairs if isinstance(r, PassageError)]
    ranked = merge([c for c, _ in scored], [r for _, r in scored], passages, top_n, return_text)  # type: ignore[misc]
    return with_errors(ranked, failed, passages, return_text)


def check_arguments(query: str, passages: Sequence[str], top_n: int | None) -> None:
    """Refuse what the server would refuse, naming the caller's passage index (requests reorder them).

    Same checks and wording as the server's tokenizer: both use ``rerank_contract.prompt.to_text``.
    """
    if isinstance(passages, (str, bytes)):
        raise InvalidInputError("passages must be a list of texts, not a single string", "client")
    if top_n is not None and top_n < 0:
        raise InvalidInputError(f"top_n must not be negative, got {top_n}", "client")
    try:
        rp.to_text(query, "query")
        for i, passage in enumerate(passages):
            rp.to_text(passage, f"passage {i}")
    except rp.RerankInputError as exc:
        raise InvalidInputError(str(exc), "client") from None


class ClientBase:
    """Options shared by the sync and async clients (the public constructor signature)."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", *,
                 model: str | None = None, timeout_s: float = 60.0, retries: int = 5,
                 backoff_s: float = 0.1, max_backoff_s: float = 5.0, retry_window_s: float | None = None,
                 max_concurrency: int = 4,
                 max_rows_per_request: int | None = DEFAULT_ROWS_PER_REQUEST, truncate: str = "NONE",
                 chunk_overlap: int | None = None,
                 tokenizer: str | None = None, ssl: bool = False, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.settings = ConnectionSettings(url, protocol, model, timeout_s, ssl, root_certificates, private_key,
                                           certificate_chain, headers)
        self.retry = RetryPolicy(retries, backoff_s, max_backoff_s, retry_window_s)
        self.max_concurrency = max(1, max_concurrency)
        self.max_rows_per_request = max_rows_per_request
        self.truncate = truncate
        self.chunk_overlap = chunk_overlap
        self.estimator = TokenEstimator(tokenizer)
        self._limits: ServerLimits | None = None
        self._closed = False
        self._init_transport()

    def _init_transport(self) -> None:
        """Connection state of the concrete client (no connection is opened here)."""

    def _plan(self, query: str, passages: Sequence[str], top_n: int | None, truncate: str | None,
              chunk_overlap: int | None, limits: ServerLimits) -> tuple[Truncation, list[list[int]]]:
        """Validate a call and split it into requests: (truncation, passage indices per request)."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        check_arguments(query, passages, top_n)
        mode = truncate or self.truncate
        overlap = chunk_overlap if chunk_overlap is not None else self.chunk_overlap
        try:
            parsed = rp.parse_truncate(mode)
            if parsed is rp.Truncate.CHUNK:
                overlap = rp.parse_overlap(overlap, limits.max_sequence_length)
        except rp.RerankInputError as exc:
            raise InvalidInputError(str(exc), "client") from None
        chunked = parsed is rp.Truncate.CHUNK
        passage_bytes = [len(p.encode("utf-8")) for p in passages]
        query_bytes = len(query.encode("utf-8"))
        # The query part of a CHUNK window, estimated only when windows are planned (a tokenizer-backed
        # estimate would tokenize the query again on every call).
        query_tokens = self.estimator.estimate(query, ["x"])[0] if chunked else TEMPLATE_TOKENS
        plan = plan_requests(self.estimator.estimate(query, list(passages), passage_bytes), limits,
                             self.max_rows_per_request, parsed.value, [query_bytes + n for n in passage_bytes],
                             overlap=overlap if chunked else 0, query_tokens=query_tokens)
        return Truncation(parsed if mode is not None else None, overlap if chunked else None), plan
