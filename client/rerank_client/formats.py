"""Results in the response shapes clients already parse: NIM's /v1/ranking and Cohere/Jina's."""

from __future__ import annotations

from typing import Any, Sequence

from .core import RerankResult


def to_nim(results: Sequence[RerankResult], usage: bool = True, chunks: bool = False) -> dict[str, Any]:
    """NIM ``/v1/ranking``: ``{"rankings": [{"index", "logit"}], "usage"}``, best first (``chunks``: each
    ranking also carries its windows, as the gateway answers ``truncate=CHUNK``)."""
    rankings = []
    for r in results:
        if r.error is not None:  # errors="per_passage": the gateway's shape for an unscored passage
            error = {"code": r.error.code, "message": r.error.message, "token_count": r.error.token_count}
            rankings.append({"index": r.index, "error": error})
            continue
        item: dict[str, Any] = {"index": r.index, "logit": r.logit}
        if chunks:
            item["chunks"] = r.chunks
        if r.text is not None:
            item["text"] = r.text
        rankings.append(item)
    out: dict[str, Any] = {"rankings": rankings}
    if usage:
        tokens = sum(r.token_count for r in results if r.error is None)
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return out


def to_cohere(results: Sequence[RerankResult]) -> dict[str, Any]:
    """Cohere/Jina (LiteLLM, LangChain): ``{"results": [{"index", "relevance_score", "document"}]}``."""
    items = []
    for r in results:
        if r.error is not None:  # Cohere's shape has no place for it; the NIM shape carries it
            continue
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.relevance_score}
        if r.text is not None:
            item["document"] = {"text": r.text}
        items.append(item)
    return {"results": items}
