"""Per-passage errors (``errors: per_passage``, our extension) against the real stack, through the REST
gateway and through the client library: an over-long passage under truncate NONE fails alone, after
the scored passages, and every other passage is scored as it is without it. The default stays NIM's:
the whole request fails (422 on /v1/ranking)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway_helpers import assert_error, distinct_passages, post
from triton_helpers import ensemble_answer
from rerank_client import AsyncRerankClient, InputTooLongError, InvalidInputError, PassageError, RerankClient, to_nim
from rerank_contract import prompt as rp

pytestmark = pytest.mark.server

LONG = "word " * 9000  # over 8,192 tokens with the template
LONGER = "word " * 12000


def nim(passages, query, **extra) -> dict:
    return {"query": {"text": query}, "passages": [{"text": p} for p in passages], **extra}


def pair_tokens(tokenizer, query: str, passage: str) -> int:
    return len(rp.PairEncoder(tokenizer, max_length=10**9).encode(query, [passage], "NONE")[0])


def check(rankings: list[dict], passages: list[str], long_at: list[int], server, query: str, tokenizer) -> None:
    scored = rankings[:len(passages) - len(long_at)]
    failed = rankings[len(scored):]
    assert sorted(r["index"] for r in scored) == [i for i in range(len(passages)) if i not in long_at]
    logits = [r["logit"] for r in scored]
    assert logits == sorted(logits, reverse=True), "the scored passages are ranked as always"
    alone, _ = ensemble_answer(server, query, [passages[r["index"]] for r in scored], truncate="NONE")
    np.testing.assert_allclose(logits, alone, atol=1e-5)  # the ground truth: each pair in its own request
    assert [r["index"] for r in failed] == sorted(long_at), "errors after the scored passages, by index"
    for r in failed:
        n = pair_tokens(tokenizer, query, passages[r["index"]])
        assert set(r) == {"index", "error"}, "no logit that could pass for a score"
        assert r["error"] == {"code": "too_long", "token_count": n,
                              "message": f"Input length {n} exceeds maximum allowed token size 8192"}


def test_an_over_long_passage_fails_alone(server, gateway, tokenizer):
    query, passages = distinct_passages(6, seed=201)
    passages.insert(2, LONG)
    response = post(gateway, "/v1/ranking", nim(passages, query, truncate="NONE", errors="per_passage"))
    assert response.status_code == 200, response.text
    answer = response.json()
    check(answer["rankings"], passages, [2], server, query, tokenizer)
    scored_tokens = sum(pair_tokens(tokenizer, query, p) for i, p in enumerate(passages) if i != 2)
    assert answer["usage"]["total_tokens"] == scored_tokens, "usage counts the scored pairs"
    # NIM's default is unchanged: the whole request fails, 422, NIM's message.
    for extra in ({}, {"errors": "raise"}):
        assert_error(post(gateway, "/v1/ranking", nim(passages, query, truncate="NONE", **extra)), 422,
                     "exceeds maximum allowed token size 8192")
    assert_error(post(gateway, "/v1/ranking", nim(passages, query, errors="each")), 400, "errors")


def test_several_long_passages_among_many_split_over_requests(server, gateway, tokenizer):
    """70 passages (more than one Triton request of the test repository's 64 rows), three too long:
    halving the refused requests isolates each, and no good passage is lost or scored twice."""
    query, passages = distinct_passages(67, seed=202)
    for at, text in ((0, LONG), (40, LONGER), (69, LONG + "tail")):
        passages.insert(at, text)
    answer = post(gateway, "/v1/ranking", nim(passages, query, errors="per_passage")).json()
    check(answer["rankings"], passages, [0, 40, 69], server, query, tokenizer)
    # The hosted route: top_k cuts the scored rankings; the errors are always reported.
    top = post(gateway, "/v1/retrieval/nvidia/llama-3.2-nv-rerankqa-1b-v2/reranking",
               nim(passages, query, errors="per_passage", top_k=2)).json()["rankings"]
    assert top[:2] == answer["rankings"][:2] and [r["index"] for r in top[2:]] == [0, 40, 69]


def test_over_long_passages_the_planner_groups_are_halved_apart(server, gateway, tokenizer):
    """"1 " is two tokens in two bytes, so the client's bytes-based estimate (about 6,000 tokens) puts
    these 18,000-token passages in one Triton request with each other: the refusal of that request must
    be halved until each stands alone, and the fitting long passage beside them is still scored."""
    query, passages = distinct_passages(3, seed=204)
    passages += ["1 " * 9000, "word " * 4000, "2 " * 9500]
    assert pair_tokens(tokenizer, query, passages[3]) > 8192 >= pair_tokens(tokenizer, query, passages[4])
    answer = post(gateway, "/v1/ranking", nim(passages, query, errors="per_passage")).json()
    check(answer["rankings"], passages, [3, 5], server, query, tokenizer)


def test_the_client_library_reports_per_passage_errors(server, protocol, tokenizer):
    query, passages = distinct_passages(5, seed=203)
    passages.insert(1, LONG)
    n = pair_tokens(tokenizer, query, LONG)
    with RerankClient(server.url(protocol), protocol) as client:
        with pytest.raises(InputTooLongError, match="exceeds maximum allowed token size 8192"):
            client.rerank(query, passages)
        results = client.rerank(query, passages, errors="per_passage", return_text=True)
        with pytest.raises(InvalidInputError, match="errors must be one of raise, per_passage"):
            client.rerank(query, passages, errors="each")
    assert [r.index for r in results[-1:]] == [1] and all(r.error is None for r in results[:-1])
    error = results[-1]
    assert error.error == PassageError("too_long", f"Input length {n} exceeds maximum allowed token size 8192", n)
    assert np.isnan(error.logit) and np.isnan(error.relevance_score) and error.text == LONG
    check(to_nim(results)["rankings"], passages, [1], server, query, tokenizer)

    async def run() -> list:
        async with AsyncRerankClient(server.url(protocol), protocol) as aclient:
            return await aclient.rerank(query, passages, errors="per_passage")

    assert [(r.index, r.logit, r.error) for r in asyncio.run(run())] == \
        [(r.index, r.logit, r.error) for r in results if r.error is None] + [(1, pytest.approx(np.nan, nan_ok=True), error.error)]
