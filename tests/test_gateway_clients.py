"""The reranking clients our users run, unmodified and pinned (the ``clients`` extra), against the gateway.

Each must return the same top passages, in the same order, as the ensemble over gRPC for the same
texts. LangChain, LlamaIndex and Haystack keep the first N rankings exactly as the server returns
them, so these tests check the order, not just the set. What each client sends and needs:
../shared/REAL_CLIENTS.md.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from gateway_helpers import assert_well_separated, distinct_passages, expected_order, get
from triton_helpers import ensemble_answer

pytestmark = pytest.mark.server

# LiteLLM: the bundled cost map instead of a download, and no Hub tokenizer download for TEI.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "nvidia/llama-3.2-nv-rerankqa-1b-v2"
NEMOTRON = "nvidia/llama-nemotron-rerank-1b-v2"
TOP = 5
#: More passages than LangChain (32) and LlamaIndex (64) send per request: they batch and merge.
N_PASSAGES = 70


@pytest.fixture(scope="module")
def case(server):
    """A query, 70 passages, and the ensemble's logits and order for them (gRPC, one pair per request)."""
    query, passages = distinct_passages(N_PASSAGES, seed=23)
    logits, _ = ensemble_answer(server, query, passages)
    assert_well_separated(logits, TOP)
    return query, passages, logits, expected_order(logits)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def ranking_posts(gateway) -> float:
    """Successful ``POST /v1/ranking`` so far, from the gateway's own metrics."""
    key = 'rerank_gateway_requests_total{route="/v1/ranking",status="200"} '
    return next((float(line[len(key):]) for line in get(gateway, "/metrics").text.splitlines()
                 if line.startswith(key)), 0.0)


def check(case, indices: list[int], scores: list[float], raw: bool = True, n: int = TOP) -> None:
    """``indices`` are the ensemble's top ``n`` in order; ``scores`` its logits (or their sigmoid)."""
    _, _, logits, order = case
    assert indices == order[:n]
    expected = logits[indices] if raw else sigmoid(logits[indices])
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float64), expected, rtol=1e-4, atol=1e-4)


# --- NIM clients -------------------------------------------------------------------------------------

def test_langchain_sync_and_async(gateway, case):
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    query, passages, _, _ = case
    documents = [Document(page_content=p, metadata={"i": i}) for i, p in enumerate(passages)]
    reranker = NVIDIARerank(base_url=gateway.url + "/v1", model=MODEL, top_n=TOP, truncate="END")
    for call in (lambda: reranker.compress_documents(documents, query),
                 lambda: asyncio.run(reranker.acompress_documents(documents, query))):
        before = ranking_posts(gateway)
        result = call()
        assert ranking_posts(gateway) - before == 3, "70 passages in batches of 32, merged by logit"
        check(case, [d.metadata["i"] for d in result], [d.metadata["relevance_score"] for d in result])


def test_langchain_default_model_from_v1_models(gateway, case):
    """Without a model, LangChain takes the first one /v1/models lists."""
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    query, passages, _, _ = case
    with pytest.warns(UserWarning, match="Default model is set as"):
        reranker = NVIDIARerank(base_url=gateway.url, top_n=TOP)  # the root: the client appends /v1
    result = reranker.compress_documents([Document(page_content=p, metadata={"i": i})
                                          for i, p in enumerate(passages)], query)
    check(case, [d.metadata["i"] for d in result], [d.metadata["relevance_score"] for d in result])


def test_langchain_shows_our_error_message(gateway):
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    reranker = NVIDIARerank(base_url=gateway.url + "/v1", model=MODEL, truncate="NONE")
    with pytest.raises(Exception, match=r"\[422\] Input length \d+ exceeds maximum allowed token size 8192"):
        reranker.compress_documents([Document(page_content="word " * 9000)], "q")


@pytest.mark.parametrize("model", [MODEL, NEMOTRON])
def test_llamaindex(gateway, case, model):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.nvidia_rerank import NVIDIARerank

    query, passages, _, _ = case
    reranker = NVIDIARerank(model=model, base_url=gateway.url + "/v1", top_n=TOP, truncate="END")
    nodes = [NodeWithScore(node=TextNode(text=p, id_=str(i))) for i, p in enumerate(passages)]
    before = ranking_posts(gateway)
    result = reranker.postprocess_nodes(nodes, query_str=query)
    assert ranking_posts(gateway) - before == 2, "70 passages in batches of 64, merged by logit"
    check(case, [int(n.node.node_id) for n in result], [n.score for n in result])


def test_haystack_without_a_model(gateway, case):
    """Haystack sends ``"model": null`` when no model is given, and everything in one request."""
    from haystack import Document
    from haystack_integrations.components.rankers.nvidia import NvidiaRanker

    query, passages, _, _ = case
    ranker = NvidiaRanker(model=None, api_url=gateway.url + "/v1", api_key=None, top_k=TOP)
    result = ranker.run(query=query, documents=[Document(content=p, id=str(i)) for i, p in enumerate(passages)])
    documents = result["documents"]
    check(case, [int(d.id) for d in documents], [d.score for d in documents])


# --- Cohere SDK --------------------------------------------------------------------------------------

def test_cohere_sdk_v2_and_v1(gateway, case):
    import cohere

    query, passages, _, _ = case
    v2 = cohere.ClientV2(base_url=gateway.url, api_key="not-checked").rerank(
        model=MODEL, query=query, documents=passages, top_n=TOP)
    check(case, [r.index for r in v2.results], [r.relevance_score for r in v2.results], raw=False)
    v1 = cohere.Client(base_url=gateway.url, api_key="not-checked").rerank(
        model=MODEL, query=query, documents=passages, top_n=TOP, return_documents=True)
    check(case, [r.index for r in v1.results], [r.relevance_score for r in v1.results], raw=False)
    assert v1.results[0].document.text == passages[v1.results[0].index]


def test_cohere_sdk_gets_typed_errors(gateway):
    import cohere

    client = cohere.ClientV2(base_url=gateway.url, api_key="x")
    with pytest.raises(cohere.errors.NotFoundError, match="not served here"):
        client.rerank(model="rerank-v3.5", query="q", documents=["d"])
    with pytest.raises(cohere.errors.BadRequestError, match="query is empty"):
        client.rerank(model=MODEL, query="", documents=["d"])


# --- LiteLLM, every provider that reaches a reranker -------------------------------------------------

@pytest.mark.parametrize("provider,api_base,raw", [
    ("nvidia_nim/ranking/" + MODEL, "", True),  # POST /v1/ranking
    ("nvidia_nim/" + MODEL, "", True),  # POST /v1/retrieval/<model>/reranking, with top_k
    ("cohere/" + MODEL, "", False),  # POST /v2/rerank
    ("hosted_vllm/" + MODEL, "/v1", False),  # POST /v1/rerank
    ("jina_ai/" + MODEL, "", False),  # POST /v1/rerank (path forced)
    ("infinity/" + MODEL, "", False),  # POST /rerank, Infinity's body
    ("huggingface/" + MODEL, "", False),  # POST /rerank, TEI's body
])
def test_litellm(gateway, case, provider, api_base, raw):
    import litellm

    query, passages, _, _ = case
    response = litellm.rerank(model=provider, query=query, documents=passages, top_n=TOP,
                              api_base=gateway.url + api_base, api_key="not-checked")
    results = response.results
    if provider.startswith("huggingface/"):
        results = results[:TOP]  # LiteLLM sends top_n to TEI but does not apply it; we do
    check(case, [r["index"] for r in results], [r["relevance_score"] for r in results], raw=raw)


def test_litellm_shows_our_error_body(gateway):
    import litellm

    with pytest.raises(litellm.BadRequestError, match="passage 1 is empty"):
        litellm.rerank(model="nvidia_nim/ranking/" + MODEL, query="q", documents=["a", ""],
                       api_base=gateway.url, api_key="x")


def test_readme_langchain_example(gateway, capsys):
    """The README's LangChain snippet, pointed at this test's gateway instead of localhost:8000."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "NVIDIARerank" in block)
    exec(compile(code.replace("http://localhost:8000", gateway.url), "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(float(line.split(" ", 1)[0]) == float(line.split(" ", 1)[0]) for line in lines)
