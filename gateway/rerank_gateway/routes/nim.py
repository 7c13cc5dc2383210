"""NIM's ranking API: ``POST /v1/ranking`` and the hosted alias ``POST /v1/retrieval/{model}/reranking``.

Every passage comes back, sorted by descending logit (ties: lower index first): LangChain, LlamaIndex
and Haystack keep the first N rankings exactly as returned, so an unsorted answer would silently give
their users the wrong passages.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rerank_client import InputTooLongError
from rerank_client.tensors import Truncation

from ..auth import require_key
from ..errors import ApiError
from ..schemas import RankingRequest, RankingResponse, RetrievalRankingRequest
from ..scoring import Scored, Scorer

router = APIRouter(tags=["NIM"], dependencies=[Depends(require_key)])


def nim_body(scored: Scored, keep: int | None = None, chunked: bool = False) -> dict[str, Any]:
    """NIM's body; under CHUNK each ranking also says how many windows were scored, and with per-passage
    errors an unscored passage carries its error after the scored ones (our extensions). ``keep`` cuts
    the scored rankings; an error is always reported."""
    ranked = [r for r in scored.results if r.error is None]
    failed = [r for r in scored.results if r.error is not None]
    rankings: list[dict[str, Any]] = [{"index": r.index, "logit": r.logit, **({"chunks": r.chunks} if chunked else {})}
                                      for r in (ranked if keep is None else ranked[:keep])]
    rankings += [{"index": r.index, "error": {"code": r.error.code, "message": r.error.message,
                                              "token_count": r.error.token_count}}
                 for r in failed if r.error is not None]
    return {"rankings": rankings, "usage": {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens}}


def chunked(body: RankingRequest) -> bool:
    return Truncation(body.truncate).chunked


async def _rank(request: Request, route: str, body: RankingRequest) -> Scored:
    scorer: Scorer = request.app.state.scorer
    try:
        return await scorer.rank(route, body.model, body.query.text, [p.text for p in body.passages], body.truncate,
                                 body.chunk_overlap, body.errors)
    except InputTooLongError as exc:  # NIM (since 1.9.1) answers 422 for an over-long pair, with this message
        raise ApiError(422, exc.message) from None


@router.post("/v1/ranking", response_model=RankingResponse, summary="Rank passages (NIM)")
async def ranking(body: RankingRequest, request: Request) -> JSONResponse:
    return JSONResponse(nim_body(await _rank(request, "/v1/ranking", body), chunked=chunked(body)))


@router.post("/v1/retrieval/{model:path}/reranking", response_model=RankingResponse,
             summary="Rank passages (NIM's hosted route; LiteLLM's default NVIDIA route)")
async def retrieval_reranking(model: str, body: RetrievalRankingRequest, request: Request) -> JSONResponse:
    request.app.state.scorer.check_model(model)
    scored = await _rank(request, "/v1/retrieval/{model}/reranking", body)
    return JSONResponse(nim_body(scored, body.top_k, chunked(body)))
