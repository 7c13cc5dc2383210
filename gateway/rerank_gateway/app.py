"""The ASGI app: routes, JSON errors, body limit, CORS and metrics around one :class:`Scorer`.

``create_app()`` with no argument reads :class:`GatewaySettings` from the environment: uvicorn calls
it that way in every worker process (``rerank-gateway`` starts it with ``factory=True``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import __version__, errors
from .body_limit import BodyLimitMiddleware
from .deadlines import CancelOnDisconnect
from .metrics import MetricsMiddleware
from .routes import cohere, nim, root_rerank, service
from .scoring import Scorer
from .settings import GatewaySettings
from .tracing import Spans, TracingMiddleware


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings.from_env()
    scorer = Scorer(settings)
    spans = Spans()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await scorer.close()
        spans.shutdown()

    app = FastAPI(title="llama-3.2-nv-rerankqa-1b-v2 reranker", version=__version__, lifespan=lifespan,
                  description="NIM, Cohere, Jina, vLLM, TEI and Infinity rerank APIs over a Triton ensemble.")
    app.state.settings = settings
    app.state.scorer = scorer
    errors.install(app)
    for module in (nim, cohere, root_rerank, service):
        app.include_router(module.router)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(TracingMiddleware, spans=spans)  # outermost: every answer carries the id and timings
    return app
