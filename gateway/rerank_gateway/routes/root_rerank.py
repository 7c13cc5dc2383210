"""``POST /rerank`` at the root: TEI's body (``texts``) and Infinity's (``documents``), told apart by
their keys, each answered in its own shape."""

from __future__ import annotations

import time
import uuid
from typing import Any, Union

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..auth import require_key
from ..errors import ApiError
from ..schemas import InfinityRerankRequest, InfinityRerankResponse, RootRerankRequest, TeiResult
from ..scoring import Scorer

router = APIRouter(tags=["TEI / Infinity"], dependencies=[Depends(require_key)])
ROUTE = "/rerank"


@router.post(ROUTE, response_model=Union[list[TeiResult], InfinityRerankResponse],
             summary="Rerank texts (TEI body: 'texts'; Infinity body: 'documents')")
async def rerank(body: RootRerankRequest, request: Request) -> JSONResponse:
    scorer: Scorer = request.app.state.scorer
    if isinstance(body, InfinityRerankRequest):
        scored = await scorer.rank(ROUTE, body.model, body.query, body.documents, "END")
        results = []
        for r in scored.results[:body.top_n]:
            item: dict[str, Any] = {"index": r.index, "relevance_score": r.logit if body.raw_scores
                                    else r.relevance_score}
            if body.return_documents:
                item["document"] = body.documents[r.index]
            results.append(item)
        return JSONResponse({"object": "rerank", "id": f"rerank-{uuid.uuid4()}", "created": int(time.time()),
                             "model": body.model or scorer.settings.served_model_name, "results": results,
                             "usage": {"prompt_tokens": scored.tokens, "total_tokens": scored.tokens}})
    if body.truncation_direction.lower() == "left":
        raise ApiError(400, "truncation_direction 'Left' is not supported: this model keeps the query and cuts "
                            "the end of the passage ('Right')")
    scored = await scorer.rank(ROUTE, None, body.query, body.texts, "END" if body.truncate else "NONE")
    out = []
    for r in scored.results[:body.top_n]:
        item = {"index": r.index, "score": r.logit if body.raw_scores else r.relevance_score}
        if body.return_text:
            item["text"] = body.texts[r.index]
        out.append(item)
    return JSONResponse(out)
