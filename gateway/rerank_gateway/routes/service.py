"""Discovery and operations: ``/v1/models``, ``/v1/health/{live,ready}``, ``/v1/metadata``, ``/metrics``.

``/v1/models`` is not optional: LlamaIndex calls it on every construction and refuses a model that
is neither in its own table nor listed here; LangChain takes its default model from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from rerank_contract import names

from .. import __version__, metrics
from ..errors import RETRY_AFTER_S
from ..scoring import Scorer

logger = logging.getLogger(__name__)
router = APIRouter(tags=["Service"])
STARTED = int(time.time())


@router.get("/v1/models", summary="Models served (OpenAI-style list)")
async def models(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": STARTED, "owned_by": "nvidia", "root": name}
        for name in settings.model_names]}


@router.get("/v1/health/live", summary="The gateway process answers")
async def live() -> dict[str, str]:
    return {"object": "health.response", "message": "Service is live.", "status": "live"}


@router.get("/v1/health/ready", summary="200 while requests can be answered: Triton is ready, or was within the "
                                         "ride-through; else 503")
async def ready(request: Request) -> JSONResponse:
    scorer: Scorer = request.app.state.scorer
    ride_through = scorer.settings.ride_through_s
    is_ready, down_s = await scorer.ready()
    if is_ready:
        message = "Service is ready." if down_s is None else (
            f"Service is ready: Triton has been unavailable for {down_s:.1f} s; requests wait up to "
            f"{ride_through:g} s for it (ride_through_s)")
        return JSONResponse({"object": "health.response", "message": message, "status": "ready"})
    # Triton's address is not published: these probes are unauthenticated.
    why = ("it has not been ready since the gateway started" if down_s is None
           else f"it has been unavailable for {down_s:.1f} s, longer than the ride-through ({ride_through:g} s)")
    message = f"Service is not ready: the Triton ensemble {scorer.settings.ensemble} is not ready ({why})"
    return JSONResponse({"object": "health.response", "message": message, "status": "not ready"},
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


@router.get("/v1/metadata", summary="Version, model and limits")
async def metadata(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    scorer: Scorer = request.app.state.scorer
    limits: dict[str, Any] = {names.MAX_PASSAGES_PER_REQUEST: settings.max_passages,
                              names.MAX_BODY_BYTES: settings.max_body_bytes}
    try:  # not the request's ride-through wait: metadata answers at once, with or without Triton
        server = await asyncio.wait_for(scorer.limits(), timeout=2.0)
        limits.update({names.MAX_SEQUENCE_LENGTH: server.max_sequence_length,
                       names.MAX_ROWS_PER_REQUEST: server.max_rows, names.MAX_TOKENS_PER_REQUEST: server.max_tokens})
    except Exception as exc:  # noqa: BLE001 - Triton down: the gateway's own limits are still true
        logger.info("metadata without Triton's limits: %s", exc)
    return {"version": __version__,
            "modelInfo": [{"shortName": settings.served_model_name, "modelUrl": f"https://huggingface.co/{names.MODEL_ID}"}],
            "models": list(settings.model_names), "limits": limits}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
