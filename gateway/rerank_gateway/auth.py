"""Optional Bearer keys for the scoring routes.

Off by default: then any ``Authorization`` header is accepted, because real clients send
placeholders (``Bearer **********`` from LangChain, ``Bearer NO_API_KEY_PROVIDED`` from LlamaIndex,
``Bearer fake-api-key`` and ``Bearer None`` from LiteLLM). With keys configured, the scoring routes
need ``Authorization: Bearer <key>``; health, model listing, metadata, metrics and the OpenAPI page
stay open: they cost nothing and serve probes, scrapers and discovery.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import ApiError


async def require_key(request: Request) -> None:
    keys: tuple[str, ...] = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        return
    problem = "Missing" if not request.headers.get("authorization") else "Invalid"
    raise ApiError(401, f"{problem} API key: send the header Authorization: Bearer <key>",
                   headers={"WWW-Authenticate": "Bearer"})
