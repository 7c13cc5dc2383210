"""Gateway settings: one dataclass, read from the command line or from environment variables.

Every setting has an environment variable ``RERANK_GATEWAY_<NAME>``; NIM's own names are honoured
where NIM has one (``NIM_HTTP_API_PORT``, ``NIM_SERVED_MODEL_NAME``, ``NIM_LOG_LEVEL``), so a NIM
deployment's environment carries over. Worker processes read their settings from the environment
(uvicorn starts them by import), which is why the CLI writes them back with :meth:`to_env`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from rerank_contract import names

PREFIX = "RERANK_GATEWAY_"
#: NIM's variable names, read when ours are unset.
NIM_ALIASES = {"port": "NIM_HTTP_API_PORT", "served_model_name": "NIM_SERVED_MODEL_NAME",
               "log_level": "NIM_LOG_LEVEL"}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway can be told; the README's gateway table documents each field."""

    triton: str = "localhost:8001"  # Triton's gRPC endpoint, HOST:PORT (grpcs:// for TLS)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    served_model_name: str = names.MODEL_ID  # listed first by /v1/models; accepted as `model`
    ensemble: str = names.ENSEMBLE_NAME  # the Triton ensemble to call
    max_passages: int = 1000  # names.MAX_PASSAGES_PER_REQUEST: passages per REST request
    max_body_bytes: int = 32 * 1024 * 1024  # names.MAX_BODY_BYTES
    timeout_s: float = 60.0  # deadline of one REST request, retries included (504 past it)
    ride_through_s: float = 30.0  # how long a request retries while Triton is unavailable (a restart)
    triton_concurrency: int = 4  # Triton requests in flight for one REST request
    rows_per_request: int = 128  # passages per Triton request (the ensemble's limits also apply)
    admission: bool = True  # a budget of passages in flight; past it, 503 with Retry-After at once
    admission_passages: int = 0  # the budget for the whole gateway (0: the ensemble's max_passages_in_flight)
    admission_tokens: int = 0  # estimated tokens in flight, whole gateway (0: 512 per passage of the passage budget)
    cache: bool = True  # the exact pair-score cache (score_cache.py); off: every pair goes to Triton
    cache_bytes: int = 32 * 1024 * 1024  # the score cache's bound per worker process, bytes (LRU past it)
    api_keys: tuple[str, ...] = ()  # empty: auth off, any Authorization header is accepted
    cors_origins: tuple[str, ...] = ()  # empty: CORS off
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        problems = [f"{name} must be at least 1, got {getattr(self, name)}"
                    for name in ("port", "workers", "max_passages", "max_body_bytes", "triton_concurrency",
                                 "rows_per_request") if getattr(self, name) < 1]
        problems += [f"{name} must not be negative, got {getattr(self, name)}"
                     for name in ("admission_passages", "admission_tokens") if getattr(self, name) < 0]
        if self.cache and self.cache_bytes < 1024:
            problems.append(f"cache_bytes must be at least 1024 (or turn the cache off), got {self.cache_bytes}")
        if self.timeout_s <= 0 or self.ride_through_s < 0:
            problems.append(f"timeout_s must be positive and ride_through_s not negative, got {self.timeout_s} "
                            f"and {self.ride_through_s}")
        if not self.triton.strip():
            problems.append("triton must be HOST:PORT")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def model_names(self) -> tuple[str, ...]:
        """Names /v1/models lists and ``model`` may carry: the served name, then the model's ids."""
        return tuple(dict.fromkeys((self.served_model_name, *names.MODEL_ALIASES)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "GatewaySettings":
        """Defaults, then environment variables, then ``overrides`` (e.g. command-line flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(PREFIX + field.name.upper())
            if raw is None and field.name in NIM_ALIASES:
                raw = env.get(NIM_ALIASES[field.name])
            if raw is not None:
                try:
                    values[field.name] = _PARSERS.get(field.name, _parser_for(field.type))(raw)
                except ValueError as exc:
                    raise ValueError(f"{PREFIX + field.name.upper()}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` return these settings (for worker processes)."""
        out = {}
        for field in fields(self):
            value = getattr(self, field.name)
            out[PREFIX + field.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out


def _parser_for(type_name: Any) -> Callable[[str], Any]:
    text = str(type_name)
    if text == "int":
        return int
    if text == "float":
        return float
    if text == "bool":
        return _bool
    return str


_PARSERS: dict[str, Callable[[str], Any]] = {"api_keys": _csv, "cors_origins": _csv}
