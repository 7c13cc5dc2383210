"""Request limits: the one table of defaults and the one parser of what an ensemble publishes.

The repository assembly writes these limits into the model configs as parameters named by
:mod:`rerank_contract.names` (``max_rows_per_request``, ``max_tokens_per_request``, ...). The tokenizer
model enforces them and the client splits its requests to fit them; both read them with
:func:`published_limits`, so a limit has one name, one default and one parser.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from . import names

#: Padded lengths the tokenizer pads rows to, so that Triton's dynamic batcher (which only merges
#: requests of identical shape) can merge requests.
DEFAULT_BUCKETS: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits the server enforces and publishes (clients split requests to fit).
    The defaults are the project's: ``rerank-build repository`` writes them unless told otherwise."""

    max_rows: int = 512  # passages per Triton request (published: max_rows_per_request; max_batch_size)
    max_tokens: int = 131072  # padded tokens per request, rows x bucket length (max_tokens_per_request)
    buckets: tuple[int, ...] = DEFAULT_BUCKETS  # (length_buckets)
    max_bytes: int = 4 * 1024 * 1024  # text bytes, every row's query and passage, before tokenizing
    max_sequence_length: int = 8192  # tokens per pair, BOS included (max_sequence_length)


DEFAULTS = RequestLimits()

#: Field of :class:`RequestLimits` -> the config parameter that publishes it.
PUBLISHED_AS = {"max_rows": names.MAX_ROWS_PER_REQUEST, "max_tokens": names.MAX_TOKENS_PER_REQUEST,
                "buckets": names.LENGTH_BUCKETS, "max_bytes": names.MAX_BYTES_PER_REQUEST,
                "max_sequence_length": names.MAX_SEQUENCE_LENGTH}
assert set(PUBLISHED_AS) == {f.name for f in fields(RequestLimits)}


def config_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """A model config's string parameters, from Triton's JSON form (what a python model's ``initialize``
    gets, and what ``get_model_config`` answers, with or without its ``config`` wrapper)."""
    config = config.get("config", config)
    return {k: (v.get("string_value", "") if isinstance(v, Mapping) else str(v))
            for k, v in (config.get("parameters") or {}).items()}


def published_limits(config: Mapping[str, Any]) -> dict[str, Any]:
    """The limits a model config publishes, parsed: {field of RequestLimits: value}, only those present.
    ``max_rows`` falls back to the config's ``max_batch_size`` (NIM's servers publish only that)."""
    inner = config.get("config", config)
    params = config_parameters(config)
    found: dict[str, Any] = {}
    for field, name in PUBLISHED_AS.items():
        text = params.get(name, "").strip()
        if text:
            found[field] = tuple(int(b) for b in text.split(",")) if field == "buckets" else int(text)
    if "max_rows" not in found and inner.get("max_batch_size"):
        found["max_rows"] = int(inner["max_batch_size"])
    return found


def limits_from_config(config: Mapping[str, Any]) -> RequestLimits:
    """What a config publishes, the defaults for the rest."""
    return RequestLimits(**published_limits(config))
