"""The reranker's prompt, truncation and padding rules: one module for every code path.

The Triton tokenizer model, the reference implementation, the parity tool, the benchmarks, the
client's token estimates and the REST gateway all import this file (the repository assembly copies
the ``rerank_contract`` package verbatim beside the tokenizer's ``model.py``), so the template and
the truncation semantics exist exactly once.

Semantics (docs/model.md):
- one templated string per pair, ``question:{query} \\n \\n passage:{passage}`` with REAL newlines;
- the tokenizer's post-processor prepends BOS (``<|begin_of_text|>``), no EOS; special-token
  strings inside the texts are encoded as text, never as control tokens;
- ``truncate="END"`` keeps the first ``max_length`` tokens (BOS included), so the passage is cut
  first and the query only when the query alone is too long; ``truncate="NONE"`` rejects a
  too-long pair with NIM's message.
- ``truncate="CHUNK"`` (our extension) scores a too-long pair as windows (:meth:`PairEncoder.windows`):
  the query part Q (BOS and every token that starts before the passage text) followed by passage
  tokens ``P[s:s+W]``, ``W = max_length - len(Q)``, ``s = 0, W-overlap, 2(W-overlap), ...`` until a
  window reaches the end of P. Window 0 is exactly the END row; the passage's logit is the maximum
  over its windows (the postprocess step), its ``token_count`` the tokens of all windows.

Only ``numpy`` is imported at module level; ``tokenizers`` is imported by :func:`load_tokenizer`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

from .limits import DEFAULT_BUCKETS, DEFAULTS, RequestLimits

TEMPLATE = "question:{query} \n \n passage:{passage}"
DEFAULT_MAX_LENGTH = DEFAULTS.max_sequence_length
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
BOS_ID = 128000
EOS_ID = 128001
#: Text bytes per Triton request (every row's query and passage), refused before tokenizing.
DEFAULT_MAX_BYTES = DEFAULTS.max_bytes
__all__ = ["DEFAULT_BUCKETS", "RequestLimits"]  # re-exported: their home is rerank_contract.limits


class RerankInputError(ValueError):
    """A request the reranker must refuse (INVALID_ARGUMENT over gRPC, HTTP 400)."""


class EmptyTextError(RerankInputError):
    """A query or passage is empty."""


class TextEncodingError(RerankInputError):
    """A query or passage is not valid UTF-8 text."""


class InputTooLongError(RerankInputError):
    """A pair is longer than the limit and ``truncate`` is ``NONE`` (NIM's wording)."""

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"Input length {length} exceeds maximum allowed token size {limit}")


class TruncateValueError(RerankInputError):
    """``truncate`` is neither ``NONE`` nor ``END``."""


class DistinctQueriesError(RerankInputError):
    """The rows of one request carry different queries (NIM: one query per request)."""


class RequestTooLargeError(RerankInputError):
    """Too many rows, or too many padded tokens, for one request."""


class ChunkError(RerankInputError):
    """``chunk_overlap`` is not a usable number of tokens, or the query leaves no room for windows."""


class Truncate(str, enum.Enum):
    """NIM's truncation modes, and ours (``CHUNK``)."""

    NONE = "NONE"
    END = "END"
    CHUNK = "CHUNK"


#: Tokens shared by consecutive windows under CHUNK, unless the request says otherwise; capped at a
#: quarter of ``max_length`` (so that small test limits still leave room), see :func:`parse_overlap`.
DEFAULT_CHUNK_OVERLAP = 256


def parse_overlap(value: object, max_length: int) -> int:
    """The request's ``chunk_overlap`` (``None``: ``min(256, max_length // 4)``), a whole number >= 0."""
    if value is None or value == "" or value == b"":
        return min(DEFAULT_CHUNK_OVERLAP, max_length // 4)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChunkError(f"chunk_overlap must be a whole number of tokens, 0 or more; got {value!r}")
    return value


def parse_truncate(value: "str | bytes | Truncate | None") -> Truncate:
    """Parse a ``truncate`` value; ``None`` or empty means NIM's default ``NONE``."""
    if isinstance(value, Truncate):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is None or value == "":
        return Truncate.NONE
    if not isinstance(value, str):
        raise TruncateValueError(f"truncate must be a string, got {type(value).__name__}")
    try:
        return Truncate(value.strip().upper())
    except ValueError:
        raise TruncateValueError(
            f"Invalid truncate value {value!r}: expected one of {[t.value for t in Truncate]}"
        ) from None


def to_text(value: "str | bytes", field: str) -> str:
    """Decode and validate one query or passage; ``field`` names it in error messages."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextEncodingError(
                f"{field} is not valid UTF-8 (invalid byte at offset {exc.start})"
            ) from None
    elif not isinstance(value, str):
        raise TextEncodingError(f"{field} must be text, got {type(value).__name__}")
    else:
        try:  # a str from JSON may hold a lone surrogate ("\ud800"), which no UTF-8 text can carry
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TextEncodingError(f"{field} is not valid Unicode text (unpaired surrogate at offset {exc.start})") from None
    if value == "":
        raise EmptyTextError(f"{field} is empty")
    return value


def format_pair(query: str, passage: str) -> str:
    """The model's single templated string for one (query, passage) pair."""
    return TEMPLATE.format(query=query, passage=passage)


def load_tokenizer(path: str) -> "Tokenizer":
    """Load a ``tokenizer.json`` (a file, or a directory holding one) with HF ``tokenizers``."""
    import os

    from tokenizers import Tokenizer

    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tokenizer = Tokenizer.from_file(path)
    # Never let a tokenizer.json's own truncation or padding settings change the semantics.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    # Special-token strings inside a query or passage ("<|begin_of_text|>", "<|eot_id|>") are text,
    # not control tokens: a client cannot inject BOS or EOT. The post-processor still adds the one BOS.
    # (NVIDIA's reference call, an HF tokenizer with its defaults, would turn them into control
    # tokens; only texts that contain such strings score differently.)
    tokenizer.encode_special_tokens = True
    return tokenizer


class PairEncoder:
    """Turns (query, passages) into token ids with BOS, the template and NIM's truncation."""

    def __init__(self, tokenizer: "Tokenizer", max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        probe = tokenizer.encode("x").ids
        bos = tokenizer.token_to_id(BOS_TOKEN)
        # A tokenizer.json without the BOS post-processor silently gives wrong scores: refuse it.
        if bos is None or not probe or probe[0] != bos:
            raise ValueError(
                "tokenizer does not prepend BOS <|begin_of_text|>: its tokenizer.json needs a "
                "post-processor like TemplateProcessing('<|begin_of_text|> $A')"
            )
        self.bos_id = bos

    def encode(
        self,
        query: "str | bytes",
        passages: Sequence["str | bytes"],
        truncate: "str | Truncate | None" = Truncate.NONE,
    ) -> list[list[int]]:
        """Token ids per pair (BOS first), truncated or rejected as NIM does (one row per pair)."""
        mode = parse_truncate(truncate)
        if mode is Truncate.CHUNK:
            raise ValueError("CHUNK gives several rows per pair: use PairEncoder.windows")
        query_text = to_text(query, "query")
        texts = [format_pair(query_text, to_text(p, f"passage {i}")) for i, p in enumerate(passages)]
        rows = [enc.ids for enc in self.tokenizer.encode_batch(texts)]
        return [self._fit(ids, mode) for ids in rows]

    def windows(
        self,
        query: "str | bytes",
        passages: Sequence["str | bytes"],
        truncate: "str | Truncate | None" = Truncate.NONE,
        overlap: object = None,
    ) -> list[list[list[int]]]:
        """The rows that score each pair: one row (as :meth:`encode`), or under CHUNK the windows of a
        pair longer than ``max_length`` (module docstring). The split between query and passage comes
        from the tokenizer's character offsets of this one tokenization, never from a second one."""
        mode = parse_truncate(truncate)
        if mode is not Truncate.CHUNK:
            return [[row] for row in self.encode(query, passages, mode)]
        step_overlap = parse_overlap(overlap, self.max_length)
        query_text = to_text(query, "query")
        texts = [to_text(p, f"passage {i}") for i, p in enumerate(passages)]
        prompts = [format_pair(query_text, p) for p in texts]
        out = []
        for prompt, passage, enc in zip(prompts, texts, self.tokenizer.encode_batch(prompts)):
            if len(enc.ids) <= self.max_length:
                out.append([enc.ids])
                continue
            starts = len(prompt) - len(passage)  # the passage text's first character
            q = next((i for i, (begin, _end) in enumerate(enc.offsets) if i and begin >= starts), len(enc.ids))
            out.append(self._windows(enc.ids, q, step_overlap))
        return out

    def _windows(self, ids: list[int], q: int, overlap: int) -> list[list[int]]:
        head, body = ids[:q], ids[q:]
        width = self.max_length - q
        if width <= overlap:
            raise ChunkError(
                f"the query takes {q} tokens (BOS and template included), which leaves {max(width, 0)} tokens of "
                f"passage per window of {self.max_length}, not more than chunk_overlap ({overlap}); shorten the "
                "query or lower chunk_overlap"
            )
        out, start = [], 0
        while True:
            out.append(head + body[start:start + width])
            if start + width >= len(body):
                return out
            start += width - overlap

    def _fit(self, ids: list[int], mode: Truncate) -> list[int]:
        if len(ids) <= self.max_length:
            return ids
        if mode is Truncate.NONE:
            raise InputTooLongError(len(ids), self.max_length)
        return ids[: self.max_length]

    def count_tokens(self, query: str, passages: Sequence[str], truncate: "str | Truncate" = "END",
                     overlap: object = None) -> list[int]:
        """Tokens scored per pair (BOS included, every window under CHUNK): the server's ``token_count``."""
        return [sum(len(r) for r in rows) for rows in self.windows(query, passages, truncate, overlap)]


@dataclass(frozen=True)
class PaddedBatch:
    """Left-padded engine inputs (int32, the dtype of the ONNX, TensorRT and Triton tensors)."""

    input_ids: np.ndarray  # [N, L] int32
    attention_mask: np.ndarray  # [N, L] int32
    token_counts: np.ndarray  # [N] int32
    #: [N] int32: the pair each row scores (rows of one pair are its CHUNK windows); None: row i is pair i
    passage_index: "np.ndarray | None" = None

    def owners(self) -> np.ndarray:
        n = self.input_ids.shape[0]
        return np.arange(n, dtype=np.int32) if self.passage_index is None else self.passage_index

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


def text_bytes(values: Sequence["str | bytes"]) -> int:
    """Bytes of UTF-8 text the values carry (what tokenizing them costs), without decoding them."""
    return sum(len(v) if isinstance(v, (bytes, bytearray, memoryview)) else len(str(v).encode("utf-8", "surrogatepass"))
               for v in values)


def single_query(queries: Sequence["str | bytes"]) -> "str | bytes":
    """The one query of a request whose ``query`` tensor repeats it on every row."""
    if len(queries) == 0:
        raise RequestTooLargeError("request has no rows: send at least one passage")
    first = queries[0]
    distinct = len(set(queries))
    if distinct > 1:
        raise DistinctQueriesError(
            f"all rows of 'query' must carry the same query; got {distinct} distinct queries in one request"
        )
    return first


def encode_request(
    encoder: PairEncoder,
    queries: Sequence["str | bytes"],
    passages: Sequence["str | bytes"],
    truncate: "str | Truncate | None",
    limits: RequestLimits,
    pad_id: int = EOS_ID,
    overlap: object = None,
) -> PaddedBatch:
    """Validate one request and return its rows left-padded to a length bucket.

    Under CHUNK a pair may give several rows (its windows); they count toward the row and padded-token
    limits like any row, and ``passage_index`` says which pair each row scores.

    The bytes are counted first: tokenizing is the expensive step (a 64 MB request took 21-27 s and
    kept 1.5 GB in the tokenizer), so an oversized request is refused before any of it happens.
    """
    if len(queries) != len(passages):
        raise RequestTooLargeError(f"'query' has {len(queries)} rows but 'passage' has {len(passages)}")
    size = text_bytes(queries) + text_bytes(passages)
    if size > limits.max_bytes:
        raise RequestTooLargeError(
            f"request carries {size} bytes of text (the query on every row, and the passages), more than the "
            f"limit of {limits.max_bytes} bytes per request (max_bytes_per_request); send fewer or shorter "
            "passages per request"
        )
    query = single_query(queries)
    if len(passages) > limits.max_rows:
        raise RequestTooLargeError(
            f"request has {len(passages)} passages, more than the limit of {limits.max_rows} per request "
            "(max_rows_per_request)"
        )
    per_pair = encoder.windows(query, passages, truncate, overlap)
    rows = [row for pair in per_pair for row in pair]
    if len(rows) > limits.max_rows:
        raise RequestTooLargeError(
            f"request has {len(passages)} passages that make {len(rows)} windows (truncate=CHUNK), more than the "
            f"limit of {limits.max_rows} rows per request (max_rows_per_request); send fewer or shorter passages "
            "per request"
        )
    width = choose_bucket(max(len(r) for r in rows), limits.buckets)
    if len(rows) * width > limits.max_tokens:
        raise RequestTooLargeError(
            f"request needs {len(rows)} x {width} = {len(rows) * width} padded tokens, more than the limit of "
            f"{limits.max_tokens} per request (max_tokens_per_request); send fewer or shorter passages per request"
        )
    batch = left_pad(rows, pad_id=pad_id, length=width)
    if len(rows) == len(per_pair):
        return batch
    owners = np.repeat(np.arange(len(per_pair), dtype=np.int32), [len(pair) for pair in per_pair])
    return PaddedBatch(batch.input_ids, batch.attention_mask, batch.token_counts, owners)


def choose_bucket(length: int, buckets: Iterable[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket that holds ``length`` tokens; the length itself past the last bucket."""
    for bucket in sorted(buckets):
        if length <= bucket:
            return bucket
    return length


def left_pad(
    rows: Sequence[Sequence[int]],
    pad_id: int = EOS_ID,
    length: "int | None" = None,
) -> PaddedBatch:
    """Left-pad rows to ``length`` (default: the longest row) as the reference batching does."""
    if not rows:
        raise ValueError("cannot pad an empty batch")
    counts = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    width = int(counts.max()) if length is None else length
    if width < int(counts.max()):
        raise ValueError(f"pad length {width} is shorter than the longest row ({int(counts.max())})")
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return PaddedBatch(ids, mask, counts)


#: Moved to :mod:`rerank_contract.engine_input` (engine internals, not the request contract).
_MOVED = ('RUN_COST_TOKENS', 'compact_runs', 'engine_input_problem')


def __getattr__(name: str) -> object:
    """The old names of the engine internals still import from here, with a deprecation warning."""
    if name in _MOVED:
        import warnings

        from . import engine_input

        warnings.warn(f"rerank_contract.prompt.{name} moved to rerank_contract.engine_input.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(engine_input, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
