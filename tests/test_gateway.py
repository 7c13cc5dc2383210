"""The REST gateway against the real stack: rerank-gateway (a real process) -> gRPC -> tritonserver.

Every route, limit and error of the gateway; answers are compared with the ensemble's own answer
over gRPC for the same texts.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pytest
import requests

from conftest import TEST_LIMITS
from gateway_helpers import JSON, assert_error, distinct_passages, expected_order, get, post
from triton_helpers import ensemble_answer
from rerank_build.textgen import FIXED_CASES

pytestmark = pytest.mark.server

QUERY = FIXED_CASES[1].query
PASSAGES = list(FIXED_CASES[1].passages)
LONG = "word " * 9000  # over 8,192 tokens with the template


def nim(passages=PASSAGES, query=QUERY, **extra) -> dict:
    return {"query": {"text": query}, "passages": [{"text": p} for p in passages], **extra}


def sigmoid32(x: float) -> float:
    return float(np.float32(1) / (np.float32(1) + np.exp(-np.float32(x))))


# --- NIM /v1/ranking -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", [None, "absent", "nvidia/llama-3.2-nv-rerankqa-1b-v2",
                                   "nvidia/llama-nemotron-rerank-1b-v2", "nvidia_llama_3_2_nv_rerankqa_1b_v2"])
def test_ranking_is_the_ensembles_answer_sorted(server, gateway, model):
    body = nim(model=model) if model != "absent" else nim()
    response = post(gateway, "/v1/ranking", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    logits, counts = ensemble_answer(server, QUERY, PASSAGES, truncate="NONE")
    assert [r["index"] for r in answer["rankings"]] == expected_order(logits)
    for r in answer["rankings"]:
        assert r["logit"] == pytest.approx(float(logits[r["index"]]), abs=1e-5)
    assert answer["usage"] == {"prompt_tokens": int(counts.sum()), "total_tokens": int(counts.sum())}


def test_ranking_ties_keep_the_lower_index_first(gateway):
    answer = post(gateway, "/v1/ranking", nim(["same", "other", "same", "same"])).json()
    same = [r["index"] for r in answer["rankings"] if r["index"] != 1]
    assert same == [0, 2, 3]


def test_ranking_splits_many_passages_over_several_triton_requests(server, gateway):
    query, passages = distinct_passages(3 * TEST_LIMITS["max_rows"] + 5, seed=11)  # over the ensemble's max_rows
    answer = post(gateway, "/v1/ranking", nim(passages, query)).json()
    logits, counts = ensemble_answer(server, query, passages)
    assert sorted(r["index"] for r in answer["rankings"]) == list(range(len(passages)))
    got = np.array([r["logit"] for r in sorted(answer["rankings"], key=lambda r: r["index"])], dtype=np.float32)
    np.testing.assert_allclose(got, logits, atol=1e-4)
    assert [r["logit"] for r in answer["rankings"]] == sorted(got.tolist(), reverse=True)
    assert answer["usage"]["total_tokens"] == int(counts.sum())


def test_truncate_none_end_and_nims_message(gateway):
    """NIM (since 1.9.1) answers an over-long pair under truncate NONE with 422 and this message, on both
    of its routes; the other APIs keep 400."""
    for truncate in (None, "NONE"):
        body = assert_error(post(gateway, "/v1/ranking", nim(["short", LONG], truncate=truncate)), 422,
                            "exceeds maximum allowed token size 8192")
        assert body["message"].startswith("Input length ") and body["type"] == "invalid_request_error"
    assert_error(post(gateway, "/v1/retrieval/nvidia/llama-3.2-nv-rerankqa-1b-v2/reranking", nim(["short", LONG])),
                 422, "exceeds maximum allowed token size 8192")
    answer = post(gateway, "/v1/ranking", nim(["short", LONG], truncate="END")).json()
    assert len(answer["rankings"]) == 2
    assert answer["usage"]["total_tokens"] < 8192 + 20


@pytest.mark.parametrize("body,status,fragment", [
    (nim(top_k=3), 400, "top_k: unknown field, expected one of model, query, passages, truncate"),
    ({**nim(), "passages": [{"text": "a", "title": "t"}]}, 400, "title: unknown field, expected one of text"),
    ({**nim(), "passages": [{"text": "a", "image": "data:image/png;base64,AAAA"}]}, 400,
     "passages[0].image: image passages are not supported"),
    ({"passages": [{"text": "a"}]}, 400, "query: field required"),
    ({"query": {"text": "q"}}, 400, "passages: field required"),
    ({"query": "q", "passages": [{"text": "a"}]}, 400, "query"),
    ({"query": {"text": "q"}, "passages": "a"}, 400, "passages"),
    ({"query": {"text": "q"}, "passages": [{"text": 3}]}, 400, "passages[0].text"),
    (nim([]), 400, "No passages to rank"),
    (nim(["a"], query=""), 400, "query is empty"),
    (nim(["a", ""]), 400, "passage 1 is empty"),
    (nim(truncate="START"), 400, "Invalid truncate value 'START'"),
    (nim(model="rerank-english-v3.0"), 404, "Model 'rerank-english-v3.0' is not served here"),
    ([1, 2], 400, "Request body must be a JSON object"),
])
def test_ranking_bad_input(gateway, body, status, fragment):
    assert_error(post(gateway, "/v1/ranking", body), status, fragment)


def test_malformed_bodies(gateway):
    assert_error(post(gateway, "/v1/ranking", data=b'{"query": {"text": "q"}, "passages": ['), 400,
                 "Request body is not valid JSON")
    response = requests.post(gateway.url + "/v1/ranking", data=json.dumps(nim()),
                             headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert_error(response, 415, "Content-Type: application/json")
    assert_error(post(gateway, "/v1/ranking", data=b'{"query": {"text": "\\ud800"}, "passages": [{"text": "a"}]}'),
                 400)


def test_bad_requests_do_not_disturb_good_ones(server, gateway):
    """Bad requests among good ones, concurrently: every good one gets its right answer."""
    logits, _ = ensemble_answer(server, QUERY, PASSAGES, truncate="NONE")
    bad = [nim(["a", ""]), nim(top_k=1), nim(["short", LONG]), nim(truncate="X")]

    def one(i: int):
        if i % 2:
            return post(gateway, "/v1/ranking", bad[(i // 2) % len(bad)]).status_code
        answer = post(gateway, "/v1/ranking", nim()).json()
        return [r["index"] for r in answer["rankings"]]

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(40)))
    assert outcomes[0::2] == [expected_order(logits)] * 20
    assert set(outcomes[1::2]) == {400, 422}  # 422: the over-long pair (NIM's status for it)


# --- NIM's hosted route ----------------------------------------------------------------------------

@pytest.mark.parametrize("path_model", ["nvidia/llama-3.2-nv-rerankqa-1b-v2", "nvidia/llama-3_2-nv-rerankqa-1b-v2",
                                        "nvidia/llama-nemotron-rerank-1b-v2"])
def test_retrieval_route_with_top_k(server, gateway, path_model):
    response = post(gateway, f"/v1/retrieval/{path_model}/reranking", nim(model=path_model, top_k=2))
    assert response.status_code == 200, response.text
    logits, _ = ensemble_answer(server, QUERY, PASSAGES, truncate="NONE")
    assert [r["index"] for r in response.json()["rankings"]] == expected_order(logits)[:2]


def test_retrieval_route_errors(gateway):
    assert_error(post(gateway, "/v1/retrieval/acme/other-model/reranking", nim()), 404, "acme/other-model")
    assert_error(post(gateway, "/v1/retrieval/nvidia/llama-3.2-nv-rerankqa-1b-v2/reranking", nim(top_k=0)), 400,
                 "top_k")


# --- Cohere / Jina / vLLM ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_cohere_rerank(server, gateway, path):
    documents = [PASSAGES[0], {"text": PASSAGES[1]}, PASSAGES[2], PASSAGES[3]]
    answer = post(gateway, path, {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "query": QUERY,
                                  "documents": documents, "top_n": 3, "return_documents": True}).json()
    logits, counts = ensemble_answer(server, QUERY, PASSAGES)
    order = expected_order(logits)[:3]
    assert [r["index"] for r in answer["results"]] == order
    for r in answer["results"]:
        assert r["relevance_score"] == pytest.approx(sigmoid32(logits[r["index"]]), rel=1e-5)
        assert 0 <= r["relevance_score"] <= 1
        assert r["document"] == {"text": PASSAGES[r["index"]]}
    assert answer["id"] and answer["meta"]["api_version"]["version"] == path[2]
    assert answer["meta"]["tokens"]["input_tokens"] == int(counts.sum())
    plain = post(gateway, path, {"query": QUERY, "documents": PASSAGES}).json()
    assert [r["index"] for r in plain["results"]] == expected_order(logits)
    assert all("document" not in r for r in plain["results"])


def test_cohere_long_documents_are_cut_and_rank_fields(gateway):
    answer = post(gateway, "/v2/rerank", {"query": QUERY, "documents": ["short", LONG], "max_tokens_per_doc": 4096})
    assert answer.status_code == 200, answer.text
    fields = post(gateway, "/v1/rerank", {"query": QUERY, "documents": [{"title": "a", "body": "b"}],
                                          "rank_fields": ["title", "body"]})
    assert fields.status_code == 200, fields.text


@pytest.mark.parametrize("body,fragment", [
    ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0]: an object document needs a string 'text'"),
    ({"query": QUERY, "documents": [{"title": "a"}], "rank_fields": ["body"]}, "no field 'body'"),
    ({"query": QUERY, "documents": PASSAGES, "top_n": 0}, "top_n"),
    ({"query": QUERY, "documents": []}, "No passages to rank"),
    ({"documents": PASSAGES}, "query: field required"),
])
def test_cohere_bad_input(gateway, body, fragment):
    assert_error(post(gateway, "/v2/rerank", body), 400, fragment)


# --- TEI and Infinity on /rerank ---------------------------------------------------------------------

def test_tei_rerank(server, gateway):
    logits, _ = ensemble_answer(server, QUERY, PASSAGES, truncate="NONE")
    answer = post(gateway, "/rerank", {"query": QUERY, "texts": PASSAGES, "return_text": True}).json()
    assert isinstance(answer, list) and [r["index"] for r in answer] == expected_order(logits)
    for r in answer:
        assert r["score"] == pytest.approx(sigmoid32(logits[r["index"]]), rel=1e-5)
        assert r["text"] == PASSAGES[r["index"]]
    raw = post(gateway, "/rerank", {"query": QUERY, "texts": PASSAGES, "raw_scores": True, "top_n": 2}).json()
    assert [r["index"] for r in raw] == expected_order(logits)[:2] and "text" not in raw[0]
    assert raw[0]["score"] == pytest.approx(float(logits[raw[0]["index"]]), abs=1e-5)
    assert_error(post(gateway, "/rerank", {"query": QUERY, "texts": ["a", LONG]}), 400, "exceeds maximum allowed")
    assert post(gateway, "/rerank", {"query": QUERY, "texts": ["a", LONG], "truncate": True}).status_code == 200
    assert_error(post(gateway, "/rerank", {"query": QUERY, "texts": PASSAGES, "truncation_direction": "Left"}), 400,
                 "truncation_direction 'Left' is not supported")


def test_infinity_rerank(server, gateway):
    logits, counts = ensemble_answer(server, QUERY, PASSAGES)
    answer = post(gateway, "/rerank", {"query": QUERY, "documents": PASSAGES, "top_n": 2,
                                       "return_documents": True}).json()
    assert answer["object"] == "rerank" and answer["id"] and answer["created"] > 0
    assert [r["index"] for r in answer["results"]] == expected_order(logits)[:2]
    assert all(r["document"] == PASSAGES[r["index"]] for r in answer["results"])
    assert answer["usage"]["total_tokens"] == int(counts.sum())
    assert_error(post(gateway, "/rerank", {"query": QUERY, "documents": PASSAGES, "model": "other"}), 404)


@pytest.mark.parametrize("body", [{"query": QUERY}, {"query": QUERY, "texts": PASSAGES, "documents": PASSAGES},
                                  ["not", "an", "object"]])
def test_root_rerank_needs_texts_or_documents(gateway, body):
    assert_error(post(gateway, "/rerank", body), 400)


# --- discovery, health, metadata, metrics ------------------------------------------------------------

def test_models_health_metadata_and_docs(server, gateway):
    models = get(gateway, "/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["nvidia/llama-3.2-nv-rerankqa-1b-v2",
                                                 "nvidia/llama-nemotron-rerank-1b-v2"]
    assert all(m["object"] == "model" and m["root"] == m["id"] for m in models["data"])
    assert get(gateway, "/v1/health/live").json() == {"object": "health.response", "message": "Service is live.",
                                                      "status": "live"}
    assert get(gateway, "/v1/health/ready").json()["status"] == "ready"
    meta = get(gateway, "/v1/metadata").json()
    assert meta["modelInfo"][0]["shortName"] == "nvidia/llama-3.2-nv-rerankqa-1b-v2" and meta["version"]
    for path in ("/v1/metadata", "/v1/health/ready"):  # unauthenticated: Triton's address is not published
        assert server.grpc_url not in get(gateway, path).text and str(server.ports.grpc) not in get(gateway, path).text
    assert meta["limits"]["max_passages_per_request"] == 1000
    assert meta["limits"]["max_rows_per_request"] == TEST_LIMITS["max_rows"]
    openapi = get(gateway, "/openapi.json").json()
    assert {"/v1/ranking", "/v1/retrieval/{model}/reranking", "/v1/rerank", "/v2/rerank", "/rerank", "/v1/models",
            "/v1/health/live", "/v1/health/ready", "/v1/metadata", "/metrics"} <= set(openapi["paths"])
    assert get(gateway, "/docs").status_code == 200


def test_unknown_routes_and_methods_answer_json(gateway):
    assert_error(get(gateway, "/v1/nothing-here"), 404, "/v1/nothing-here")
    assert_error(get(gateway, "/v1/ranking"), 405, "GET")


def test_metrics(gateway):
    post(gateway, "/v1/ranking", nim())
    post(gateway, "/v1/ranking", nim(["a", ""]))
    text = get(gateway, "/metrics").text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['rerank_gateway_requests_total{route="/v1/ranking",status="200"}'] >= 1
    assert samples['rerank_gateway_requests_total{route="/v1/ranking",status="400"}'] >= 1
    assert samples['rerank_gateway_errors_total{kind="invalid_request_error"}'] >= 1
    assert samples['rerank_gateway_passages_total{route="/v1/ranking"}'] >= len(PASSAGES)
    assert samples['rerank_gateway_tokens_total{route="/v1/ranking"}'] > 0
    assert samples['rerank_gateway_request_duration_seconds_count{route="/v1/ranking"}'] >= 2
    assert 'rerank_gateway_request_duration_seconds_bucket{le="0.1",route="/v1/ranking"}' in samples
    assert samples["rerank_gateway_requests_in_flight"] >= 1  # this scrape itself


# --- limits, auth, CORS, workers, Triton unavailable, deadline (gateways with other settings) ----------

def test_limits_answer_413_naming_the_limit(start_gateway):
    small = start_gateway("--max-passages", "10", "--max-body-bytes", "4000")
    assert post(small, "/v1/ranking", nim(["p"] * 10)).status_code == 200
    assert_error(post(small, "/v1/ranking", nim(["p"] * 11)), 413,
                 "11 passages, more than the limit of 10 per request (max_passages_per_request)")
    assert_error(post(small, "/v2/rerank", {"query": "q", "documents": ["d"] * 11}), 413, "max_passages_per_request")
    assert_error(post(small, "/v1/ranking", nim(["x" * 5000])), 413,
                 "more than the limit of 4000 bytes (max_body_bytes)")

    def chunks():
        yield b'{"query": {"text": "q"}, "passages": ['
        for _ in range(100):
            yield b'{"text": "' + b"y" * 100 + b'"},'
        yield b'{"text": "z"}]}'

    chunked = requests.post(small.url + "/v1/ranking", data=chunks(), headers=JSON, timeout=30)  # no Content-Length
    assert_error(chunked, 413, "max_body_bytes")
    assert post(small, "/v1/ranking", nim(["p"])).status_code == 200, "keeps serving"


def test_admission_and_the_deadline_against_a_triton_that_never_answers(artifacts):
    """A budget of 8 passages. Triton accepts and never answers (controlled slowness), so a request of 8
    holds the budget until the gateway's deadline: the next request is told at once to retry (503,
    Retry-After); the held one ends at the deadline with a 504; then a request larger than the whole
    budget is admitted alone (and meets the deadline too)."""
    from threads import Worker

    with silent_gateway(artifacts, "silent", "--admission-passages", "8", "--timeout-s", "1") as gw:
        held = Worker(post, gw, "/v1/ranking", nim(["p"] * 8), name="held")
        held.start()
        wait_for_metric(gw, "rerank_gateway_passages_in_flight", 8)
        assert metric_samples(gw)["rerank_gateway_passages_in_flight"] == 8, "the first request was never admitted"
        refused = post(gw, "/v1/ranking", nim(["q"]))
        assert_error(refused, 503, "8 passages are in flight here, the budget is 8 (max_passages_in_flight)")
        assert int(refused.headers["Retry-After"]) >= 1
        assert_error(held.check(30), 504, "did not answer in time")
        samples = metric_samples(gw)
        assert samples['rerank_gateway_admission_rejected_total{budget="passages"}'] == 1
        assert samples["rerank_gateway_passages_in_flight"] == 0
        assert_error(post(gw, "/v1/ranking", nim(["p"] * 24)), 504, "did not answer in time")  # admitted: not 503
        assert metric_samples(gw)['rerank_gateway_admission_rejected_total{budget="passages"}'] == 1


def test_admission_by_tokens_against_a_triton_that_never_answers(artifacts):
    """A budget of 100 passages and 2,000 tokens. One request of two long passages (about 2,700 estimated
    tokens: over the whole token budget, so charged all of it) is admitted and held by a Triton that
    never answers; a request of one short passage, well within the passage budget, is refused at once
    for tokens (503, Retry-After), and counted under budget="tokens"."""
    from threads import Worker

    with silent_gateway(artifacts, "tokens", "--admission-passages", "100", "--admission-tokens", "2000",
                        "--timeout-s", "2") as gw:
        held = Worker(post, gw, "/v1/ranking", nim(["word " * 800] * 2), name="held")
        held.start()
        wait_for_metric(gw, "rerank_gateway_tokens_in_flight", 2000)
        samples = metric_samples(gw)
        assert samples["rerank_gateway_passages_in_flight"] == 2, "the long request was never admitted"
        assert samples["rerank_gateway_tokens_in_flight"] > 2000, "its estimated tokens, over the budget"
        refused = post(gw, "/v1/ranking", nim(["a short passage"]))
        assert_error(refused, 503, "2000 tokens are in flight here, the budget is 2000 (admission_tokens)")
        assert int(refused.headers["Retry-After"]) >= 1
        assert_error(held.check(30), 504, "did not answer in time")
        samples = metric_samples(gw)
        assert samples['rerank_gateway_admission_rejected_total{budget="tokens"}'] == 1
        assert samples.get('rerank_gateway_admission_rejected_total{budget="passages"}', 0) == 0
        assert samples["rerank_gateway_tokens_in_flight"] == 0


@contextlib.contextmanager
def silent_gateway(artifacts, name: str, *args: str) -> Iterator:
    """A gateway (with ``args``) in front of a Triton that accepts and never answers: controlled slowness."""
    from rerank_serving.server import free_ports
    from rerank_serving.stack import GatewayProcess
    from silent import SilentServer

    with SilentServer() as silent, GatewayProcess(silent.url, port=free_ports(1)[0],
                                                  log_path=artifacts / f"gateway-{name}.log", extra_args=list(args)) as gw:
        yield gw


def wait_for_metric(gw, name: str, at_least: float, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_samples(gw)[name] < at_least and time.monotonic() < deadline:
        time.sleep(0.02)


def metric_samples(gw) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in get(gw, "/metrics").text.splitlines()
            if line and not line.startswith("#")}


def test_auth_off_accepts_any_authorization(gateway):
    for value in ("Bearer **********", "Bearer NO_API_KEY_PROVIDED", "Bearer fake-api-key", "Bearer None", "junk"):
        assert post(gateway, "/v1/ranking", nim(), headers={"Authorization": value}).status_code == 200, value


def test_auth_with_keys(start_gateway):
    secured = start_gateway("--api-key", "k1", "--api-key", "k2")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}):
        response = post(secured, "/v1/ranking", nim(), headers=headers)
        assert_error(response, 401, "API key")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    for key in ("k1", "k2"):
        assert post(secured, "/v2/rerank", {"query": "q", "documents": ["d"]},
                    headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for path in ("/v1/models", "/v1/health/ready", "/v1/metadata", "/metrics"):
        assert get(secured, path).status_code == 200, path


def test_cors_off_by_default_and_configurable(gateway, start_gateway):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    assert "access-control-allow-origin" not in requests.options(gateway.url + "/v1/ranking", headers=preflight,
                                                                 timeout=30).headers
    cors = start_gateway("--cors-origin", "https://app.example")
    answer = requests.options(cors.url + "/v1/ranking", headers=preflight, timeout=30)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    posted = post(cors, "/v1/ranking", nim(), headers={"Origin": "https://app.example"})
    assert posted.headers["access-control-allow-origin"] == "https://app.example"


def worker_counts(metrics_dir) -> dict[str, float]:
    """Each worker's own count of answered /v1/ranking requests, from its prometheus-client file."""
    from prometheus_client.mmap_dict import MmapedDict

    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        counts[path.stem] = sum(value for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))
                                if json.loads(key)[1] == "rerank_gateway_requests_total"
                                and json.loads(key)[2].get("route") == "/v1/ranking")
    return counts


def test_several_workers_share_one_metrics_view(server, artifacts, tmp_path, monkeypatch):
    """Two workers: requests go on until both have answered some (their own files say so); one scrape,
    answered by one worker, must count every request, which only summing both workers' files gives.
    The metrics directory the gateway made is gone once it stops."""
    from rerank_serving.server import free_ports
    from rerank_serving.stack import GatewayProcess

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the gateway makes its metrics directory
    multi = GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=artifacts / "gateway-workers.log",
                           extra_args=["--workers", "2", "--no-access-log"])
    with multi:
        multi.wait_ready(60)
        (metrics_dir,) = tmp_path.glob("rerank-gateway-metrics-*")
        sent = 0
        with ThreadPoolExecutor(4) as pool:  # a fresh connection per request: the kernel picks the worker
            while sent < 400 and sum(1 for n in worker_counts(metrics_dir).values() if n > 0) < 2:
                assert set(pool.map(lambda _: post(multi, "/v1/ranking", nim()).status_code, range(8))) == {200}
                sent += 8
        # A worker counts a request once its answer is sent, so the last counts may trail the answers.
        deadline = time.monotonic() + 10
        while sum(worker_counts(metrics_dir).values()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        per_worker = worker_counts(metrics_dir)
        assert sum(1 for n in per_worker.values() if n > 0) == 2, per_worker
        assert sum(per_worker.values()) == sent
        line = next(x for x in get(multi, "/metrics").text.splitlines()
                    if x.startswith('rerank_gateway_requests_total{route="/v1/ranking"'))
        assert float(line.rsplit(" ", 1)[1]) == sent, (line, per_worker)
    assert not metrics_dir.exists(), "the gateway removes the metrics directory it made"


def test_triton_unavailable_gives_503_with_retry_after(artifacts):
    import time

    from rerank_serving.server import free_ports
    from rerank_serving.stack import GatewayProcess

    dead = f"127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    with GatewayProcess(dead, port=free_ports(1)[0], log_path=artifacts / "gateway-dead.log") as gw:
        started = time.monotonic()
        ready = get(gw, "/v1/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"
        assert ready.headers["Retry-After"] == "1"
        assert get(gw, "/v1/health/live").status_code == 200
        meta = get(gw, "/v1/metadata").json()  # the gateway's own limits, without waiting for Triton
        assert "max_passages_per_request" in meta["limits"] and "max_rows_per_request" not in meta["limits"]
        assert time.monotonic() - started < 10, "probes and metadata do not wait out the ride-through"
    with GatewayProcess(dead, port=free_ports(1)[0], log_path=artifacts / "gateway-dead-2.log",
                        extra_args=["--ride-through-s", "1"]) as gw:
        response = post(gw, "/v1/ranking", nim())
        assert assert_error(response, 503, "unavailable")["type"] == "service_unavailable"
        assert response.headers["Retry-After"] == "1"


def test_truncated_body_over_a_raw_socket(gateway):
    """A body cut short of its Content-Length, as a raw HTTP client sends it: a JSON 400."""
    with socket.create_connection((gateway.url.split("//")[1].split(":")[0], int(gateway.url.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/ranking HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5\r\n\r\n{\"a\":")
        s.settimeout(30)
        reply = b""
        while b'"code":400}' not in reply:
            chunk = s.recv(65536)
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b'"object":"error"' in reply


def test_many_clients_at_once(server, gateway):
    query, passages = distinct_passages(24, seed=5)
    logits, _ = ensemble_answer(server, query, passages)
    results, lock = [], threading.Lock()

    def one(_):
        answer = post(gateway, "/v1/ranking", nim(passages, query)).json()
        with lock:
            results.append([r["index"] for r in answer["rankings"]])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(16)))
    assert results == [expected_order(logits)] * 16


def test_readme_rest_examples(gateway):
    """The curl examples of the README (/v1/ranking) and docs/api.md (/v1/ranking, /v2/rerank), posted as
    curl would."""
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = r"curl -s localhost:8000(/\S+) -H 'Content-Type: application/json' -d '(\{.*?\})'"
    readme = re.findall(pattern, (root / "README.md").read_text(), flags=re.S)
    examples = readme + re.findall(pattern, (root / "docs" / "api.md").read_text(), flags=re.S)
    assert [path for path, _ in readme] == ["/v1/ranking"], "the README's one curl"
    assert {path for path, _ in examples} >= {"/v1/ranking", "/v2/rerank"}, "docs/api.md lost its REST examples"
    for path, payload in examples:
        answer = post(gateway, path, json.loads(payload))
        assert answer.status_code == 200, (path, answer.text)
        results = answer.json().get("rankings") or answer.json().get("results")
        assert results and results[0]["index"] in (0, 1)
