"""Every error leaves as JSON: ``{"object": "error", "message", "detail", "type", "code"}``.

Why these keys (docs/clients.md, what each real client shows of an error): LangChain shows
``message`` as the title and ``detail`` as the body; Haystack and LiteLLM show the raw body; the Cohere SDK shows the parsed body;
``"object": "error"`` is the NIM container's shape. A plain-text 500 is never sent: LangChain's async
client mangles it and its sync client dumps ``requests`` internals instead.
"""

from __future__ import annotations

import logging
import typing
import uuid
from typing import Any, Iterable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from rerank_client import DeadlineExceededError, InvalidInputError, RerankError, ServerUnavailableError

from . import metrics

logger = logging.getLogger(__name__)

#: Seconds a client should wait after a 503 (the Cohere SDK honours it).
RETRY_AFTER_S = 1
_KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type", 422: "invalid_request_error",
          500: "internal_error", 503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    """An answer other than 200, with the message the user sees."""

    def __init__(self, status: int, message: str, detail: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, detail: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    kind = _KINDS.get(status, "error")
    metrics.ERRORS.labels(kind).inc()
    body = {"object": "error", "message": message, "detail": detail or message, "type": kind, "code": status}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def from_rerank_error(error: RerankError) -> ApiError:
    """The client library's typed errors (shared with every other client) as HTTP answers."""
    if isinstance(error, InvalidInputError):
        return ApiError(400, error.message)
    if isinstance(error, ServerUnavailableError):
        return ApiError(503, f"The reranker is unavailable, try again: {error.message}",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, DeadlineExceededError):
        return ApiError(504, f"The reranker did not answer in time: {error.message}")
    return ApiError(500, f"The reranker failed: {error.message}")


def describe_validation_errors(errors: Iterable[Mapping[str, Any]], model: type[BaseModel] | None) -> list[str]:
    """pydantic's errors as sentences naming the field (NIM's wording for unknown fields)."""
    sentences = []
    for error in errors:
        loc = [part for part in error.get("loc", ()) if part != "body"]
        where = _dotted(loc)
        kind = error.get("type", "")
        if kind == "json_invalid":
            sentences.append(f"Request body is not valid JSON: {error.get('ctx', {}).get('error', 'decode error')} "
                             f"at position {loc[0] if loc else 0}")
        elif kind == "extra_forbidden" and loc and loc[-1] == "image":
            sentences.append(f"{where}: image passages are not supported by this text reranker")
        elif kind == "extra_forbidden":
            expected = _fields_at(model, loc[:-1])
            hint = f", expected one of {', '.join(expected)}" if expected else ""
            sentences.append(f"{loc[-1] if loc else where}: unknown field{hint}")
        elif kind == "missing":
            sentences.append(f"{where}: field required")
        elif kind in ("model_attributes_type", "model_type", "dict_type") and not loc:
            sentences.append("Request body must be a JSON object")
        else:
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            sentences.append(f"{where}: {message}" if where else message)
    return sentences


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: type[BaseModel] | None, loc: list[Any]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for "expected one of ..."."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
        while typing.get_origin(current) is not None:  # list[X], X | None
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = args[0] if args else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def install(app: FastAPI) -> None:
    """Exception handlers that turn every failure into the JSON error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RerankError)
    async def _rerank_error(_request: Request, exc: RerankError) -> JSONResponse:
        error = from_rerank_error(exc)
        if error.status >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc.message)
        return error_response(error.status, error.message, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type.lower():
            return error_response(415, "Request body must be JSON: send the header Content-Type: application/json",
                                  f"got Content-Type: {content_type or '(none)'}")
        body_field = getattr(request.scope.get("route"), "body_field", None)
        model = body_field.field_info.annotation if body_field is not None else None
        sentences = describe_validation_errors(exc.errors(), model)
        return error_response(400, sentences[0] if sentences else "Invalid request", "; ".join(sentences))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Not found: {request.method} {request.url.path} (see /docs for the routes)"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text may carry paths, addresses or data: it goes to the log, under an id the
        # client is given to quote, never into the answer.
        incident = uuid.uuid4().hex[:12]
        logger.exception("unexpected error %s on %s %s", incident, request.method, request.url.path)
        return error_response(500, f"Internal error (id {incident}): the gateway's log has the details")
