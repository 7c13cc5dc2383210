"""Gateway settings, declared once: each field below is the setting, its environment variable, its flag,
its default, its check and its line in ``docs/reference.md``.

Why one declaration: the gateway used to state each setting three times (a dataclass, hand-written
argparse, an 18-row README table), and the three drifted. TEI declares a setting once (clap's ``long``,
``env`` and ``default_value``) and vLLM generates its CLI from config dataclasses; here pydantic-settings
reads the environment and validates, :func:`add_arguments` generates the command line and
:func:`settings_table` the documentation (``tests/test_reference_docs.py`` checks it is current).

- Environment: ``RERANK_GATEWAY_<NAME>``; where NIM has a name for the same setting (``NIM_HTTP_API_PORT``,
  ``NIM_SERVED_MODEL_NAME``, ``NIM_LOG_LEVEL``) it is read too, after ours, so a NIM deployment's
  environment carries over. Lists are comma-separated; booleans take 1/0, true/false, yes/no, on/off.
- Command line: ``--name-with-dashes`` for each field (``flag=`` where the published spelling differs,
  e.g. the repeatable ``--api-key``); a boolean also gets ``--no-<name>``. A flag wins over its variable.
- Worker processes read their settings from the environment (uvicorn starts them by import), which is
  why the CLI writes them back with :meth:`GatewaySettings.to_env`.

Adding a setting is one :func:`setting` line in :class:`GatewaySettings` (then regenerate the docs with
``python scripts/gen_reference.py``).
"""

from __future__ import annotations

import argparse
import contextvars
from typing import Annotated, Any, Literal, Mapping, cast, get_args, get_origin

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from rerank_contract import names
from rerank_contract.ports import DEFAULT as DEFAULT_PORTS

PREFIX = "RERANK_GATEWAY_"
#: NIM's variable names, read when ours are unset.
NIM_ALIASES = {"port": "NIM_HTTP_API_PORT", "served_model_name": "NIM_SERVED_MODEL_NAME",
               "log_level": "NIM_LOG_LEVEL"}

#: The environment :meth:`GatewaySettings.from_env` reads; unset, the settings read no environment at all
#: (``GatewaySettings(port=1)`` is those values and the defaults, as a plain dataclass would be).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("gateway_environ", default=None)


def setting(default: Any, description: str, *, nim: str | None = None, flag: str | None = None,
            doc_default: str | None = None, **constraints: Any) -> Any:
    """One setting: its default, its meaning (flag help and docs), and where it differs from the rule,
    the field's name (``nim``: the one in :data:`NIM_ALIASES`), its flag spelling and how the docs state
    its default. ``constraints`` are pydantic's (``ge=1``)."""
    extra: dict[str, Any] = {k: v for k, v in (("flag", flag), ("doc_default", doc_default)) if v is not None}
    if nim is not None:  # ours first, then NIM's (with an alias pydantic-settings reads these, not prefix+name)
        constraints["validation_alias"] = AliasChoices(env_name(nim), NIM_ALIASES[nim])
    return Field(default, description=description, json_schema_extra=cast(Any, extra or None), **constraints)


def env_name(name: str) -> str:
    return PREFIX + name.upper()


class GatewaySettings(BaseSettings):
    """Everything the gateway can be told (``docs/reference.md`` lists each field, generated from here)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid", validate_by_name=True,
                                      validate_by_alias=True, case_sensitive=False)

    triton: str = setting(
        f"localhost:{DEFAULT_PORTS.grpc}", "Triton's gRPC endpoint (`grpcs://` for TLS), or several replicas: `h1:8001,h2:8001` or "
        "`dns:///triton-headless:8001` (round robin per request, a failed replica skipped and its requests retried "
        "on another)")
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(DEFAULT_PORTS.rest, "port to listen on", nim="port", ge=1)
    workers: int = setting(1, "worker processes (metrics are summed over them)", ge=1)
    served_model_name: str = setting(names.MODEL_ID, "listed first by `/v1/models`; accepted as `model`",
                                     nim="served_model_name")
    ensemble: str = setting(names.ENSEMBLE_NAME, "the Triton ensemble to call")
    max_passages: int = setting(1000, "passages per REST request (published as `max_passages_per_request`)", ge=1)
    max_body_bytes: int = setting(32 * 1024 * 1024, "bytes per request body (published as `max_body_bytes`)", ge=1)
    timeout_s: float = setting(60.0, "deadline of one REST request, retries included (504 past it)", gt=0)
    deadline_header: str = setting(
        "x-envoy-expected-rq-timeout-ms", "request header with the client's deadline in milliseconds (Envoy's name, "
        "set by Envoy and Istio from a route's timeout); a request's budget is the smaller of it and `timeout_s`, "
        "and Triton drops its work still queued past it (docs/operations.md, \"Deadlines\")",
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    ride_through_s: float = setting(
        30.0, "how long a request retries while Triton is unavailable (a restart), then 503", ge=0)
    triton_concurrency: int = setting(4, "Triton requests in flight per REST request", ge=1)
    rows_per_request: int = setting(128, "passages per Triton request (the ensemble's limits also apply)", ge=1)
    admission: bool = setting(True, "a budget of passages in flight; past it, 503 with `Retry-After` at once "
                                    "(off: overload only lengthens Triton's queue)")
    admission_passages: int = setting(
        0, "the admission budget: passages in flight, for the whole gateway, before a fast 503",
        doc_default="0: the ensemble's `max_passages_in_flight` (256)", ge=0)
    admission_tokens: int = setting(
        0, "the admission budget's tokens: estimated tokens in flight, for the whole gateway, before a fast 503 "
           "(beside the passages; docs/operations.md, \"Overload\")",
        doc_default="0: 512 × the passage budget (131072)", ge=0)
    cache: bool = setting(True, "the exact pair-score cache (off: every pair is scored by Triton; docs/gateway.md, "
                                "\"Score cache\")")
    cache_bytes: int = setting(32 * 1024 * 1024, "the score cache's bound per worker process, in bytes (about "
                                                 "131,000 pairs at the default), least recently used evicted first",
                               ge=1024)
    api_keys: Annotated[tuple[str, ...], NoDecode] = setting(
        (), "accept this Bearer key (repeatable; comma-separated in the variable); none: auth off, any "
            "`Authorization` header is accepted", flag="--api-key")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = setting(
        (), "allowed CORS origin (repeatable; comma-separated in the variable); none: CORS off", flag="--cors-origin")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = setting("info", "log level",
                                                                                nim="log_level")
    access_log: bool = setting(True, "one log line per request")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # one plain line per problem, naming the setting, its variable and flag
            raise ValueError("; ".join(_describe(error) for error in exc.errors())) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        source = EnvSettingsSource(settings_cls)
        source.env_vars = {key.lower(): value for key, value in environ.items()}  # not os.environ: this mapping
        return (init_settings, source)

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("admission", "access_log", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("triton")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be HOST:PORT")
        return value

    @property
    def model_names(self) -> tuple[str, ...]:
        """Names /v1/models lists and ``model`` may carry: the served name, then the model's ids."""
        return tuple(dict.fromkeys((self.served_model_name, *names.MODEL_ALIASES)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> GatewaySettings:
        """Defaults, then environment variables (``os.environ`` unless ``environ``), then ``overrides``
        (command-line flags; ``None`` means not given)."""
        import os

        token = _ENVIRON.set(os.environ if environ is None else environ)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        finally:
            _ENVIRON.reset(token)

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` return these settings (for worker processes)."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            out[env_name(name)] = text
        return out


def env_names(name: str) -> tuple[str, ...]:
    """The variables a field is read from, in order."""
    return (env_name(name), NIM_ALIASES[name]) if name in NIM_ALIASES else (env_name(name),)


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def flag(name: str) -> str:
    return str(_extra(GatewaySettings.model_fields[name]).get("flag", "--" + name.replace("_", "-")))


def _scalar(field: FieldInfo) -> type:
    return cast(type, field.annotation) if field.annotation in (int, float, str, bool) else str


def _describe(error: Any) -> str:
    """A pydantic error as one line: ``max_passages must be at least 1, got 0 (RERANK_GATEWAY_MAX_PASSAGES,
    --max-passages)``."""
    loc = str(error["loc"][0]) if error.get("loc") else ""
    name = next((n for n in GatewaySettings.model_fields if loc.lower() in {n, *(e.lower() for e in env_names(n))}),
                loc)
    ctx, value = error.get("ctx") or {}, error.get("input")
    if error["type"] == "greater_than_equal":
        text = "must not be negative" if ctx.get("ge") == 0 else f"must be at least {ctx.get('ge')}"
        text += f", got {value!r}"
    elif error["type"] == "greater_than":
        text = f"must be greater than {ctx.get('gt')}, got {value!r}"
    elif error["type"] == "value_error":
        text = f": {ctx.get('error', error['msg'])}"
    else:
        text = f": {error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"
    line = f"{name}{text}" if text.startswith(":") else f"{name} {text}"
    if name not in GatewaySettings.model_fields:
        return line
    return f"{line} ({', '.join(env_names(name))}, {flag(name)})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, its help the field's description; every flag defaults to None (not given), so
    that only the flags on the command line override the environment."""
    for name, field in GatewaySettings.model_fields.items():
        kind, default = _scalar(field), field.default
        help_text = f"{field.description} (default {_doc_default(name)}; {', '.join(env_names(name))})"
        help_text = help_text.replace("%", "%%")
        if get_origin(field.annotation) is Literal:
            parser.add_argument(flag(name), dest=name, choices=get_args(field.annotation), help=help_text)
        elif field.annotation is bool:
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag(name), dest=name, action="append", help=help_text)
        else:
            parser.add_argument(flag(name), dest=name, type=kind, help=help_text)


def parse_args(argv: list[str] | None, parser: argparse.ArgumentParser) -> GatewaySettings:
    """The command line over the environment."""
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(parser.parse_args(argv)).items()}
    return GatewaySettings.from_env(None, **args)


def _doc_default(name: str) -> str:
    field = GatewaySettings.model_fields[name]
    if "doc_default" in _extra(field):
        return str(_extra(field)["doc_default"])
    default = field.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return "none" if not default else ",".join(default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return f"`{default}`" if isinstance(default, str) else str(default)


def settings_table() -> str:
    """The markdown table of ``docs/reference.md`` (generated: ``python scripts/gen_reference.py``)."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for name, field in GatewaySettings.model_fields.items():
        spelled = f"`{flag(name)}`" + (f", `--no-{name.replace('_', '-')}`" if field.annotation is bool else "")
        env = ", ".join(f"`{e}`" for e in env_names(name))
        lines.append(f"| {spelled} | {env} | {_doc_default(name)} | {field.description} |")
    return "\n".join(lines)
