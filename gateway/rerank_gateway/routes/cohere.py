"""Cohere's rerank API, ``POST /v1/rerank`` and ``POST /v2/rerank`` (Jina and vLLM use the same shape).

``relevance_score`` is sigmoid(logit) computed in fp32 (Cohere documents scores in [0, 1]); results
are sorted and cut to ``top_n`` here, because the Cohere SDK does neither. Long documents are cut at
the model's pair limit (truncate END), as Cohere truncates rather than failing.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..auth import require_key
from ..errors import ApiError
from ..schemas import CohereRerankRequest, CohereRerankResponse
from ..scoring import Scored, Scorer

router = APIRouter(tags=["Cohere / Jina / vLLM"], dependencies=[Depends(require_key)])


def document_text(document: str | dict[str, Any], i: int, rank_fields: list[str] | None) -> str:
    """A document's text: the string itself, its 'text' field, or its ``rank_fields`` as lines."""
    if isinstance(document, str):
        return document
    if rank_fields:
        missing = [f for f in rank_fields if f not in document]
        if missing:
            raise ApiError(400, f"documents[{i}] has no field {missing[0]!r} named in rank_fields")
        return "\n".join(f"{f}: {document[f]}" for f in rank_fields)
    text = document.get("text")
    if not isinstance(text, str):
        raise ApiError(400, f"documents[{i}]: an object document needs a string 'text' field (or rank_fields)")
    return text


def cohere_body(scored: Scored, texts: list[str], top_n: int | None, return_documents: bool,
                version: str) -> dict[str, Any]:
    results = []
    for r in scored.results[:top_n]:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.relevance_score}
        if return_documents:
            item["document"] = {"text": texts[r.index]}
        results.append(item)
    meta = {"api_version": {"version": version}, "billed_units": {"search_units": 1},
            "tokens": {"input_tokens": scored.tokens, "output_tokens": 0}}
    return {"id": str(uuid.uuid4()), "results": results, "meta": meta}


async def _rerank(request: Request, route: str, body: CohereRerankRequest, version: str) -> JSONResponse:
    scorer: Scorer = request.app.state.scorer
    texts = [document_text(d, i, body.rank_fields) for i, d in enumerate(body.documents)]
    scored = await scorer.rank(route, body.model, body.query, texts, "END")
    return JSONResponse(cohere_body(scored, texts, body.top_n, body.return_documents, version))


@router.post("/v1/rerank", response_model=CohereRerankResponse, summary="Rerank documents (Cohere v1, Jina, vLLM)")
async def rerank_v1(body: CohereRerankRequest, request: Request) -> JSONResponse:
    return await _rerank(request, "/v1/rerank", body, "1")


@router.post("/v2/rerank", response_model=CohereRerankResponse, summary="Rerank documents (Cohere v2)")
async def rerank_v2(body: CohereRerankRequest, request: Request) -> JSONResponse:
    return await _rerank(request, "/v2/rerank", body, "2")
