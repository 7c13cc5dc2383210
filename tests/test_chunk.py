"""truncate=CHUNK: long passages scored as windows, the best window counts.

The rule (rerank_contract.prompt) is tested on its own, then against a real tritonserver serving the
tiny preset with ``max_sequence_length`` 64 (so that windows are cheap), over gRPC and KServe HTTP,
through the client library and through the REST gateway. Every window's score is compared with the
reference model scoring that window alone.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TEST_LIMITS
from gateway_helpers import assert_error, post
from triton_helpers import expect_invalid, infer_raw, texts
from rerank_build.textgen import random_text
from rerank_client import RerankClient
from rerank_client.core import estimated_windows, plan_requests, ServerLimits
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once
from rerank_contract import prompt as rp

MAX_LEN = 64
OVERLAP = 8
QUERY = "which passage mentions the lighthouse keeper?"


@pytest.fixture(scope="module")
def short_encoder(tokenizer):
    return rp.PairEncoder(tokenizer, max_length=MAX_LEN)


def long_text(seed: int, words: int) -> str:
    import random

    return random_text(random.Random(seed), words)


# --- the rule ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body_len", [1, 10, 11, 30, 31, 40, 43, 50, 51, 92, 93, 97, 134, 135])
def test_windows_cover_the_passage_with_the_overlap(short_encoder, body_len):
    """Synthetic ids: Q of 14 tokens, so W = 50; windows start at 0, 42, 84, ... A body of up to W tokens
    fits (one window, the pair itself); edges past it: W + 1 = 51, 2W - overlap = 92 (two windows exactly),
    93, 3W - 2 overlap = 134 (three exactly), 135."""
    q = 14
    ids = list(range(1000, 1000 + q)) + list(range(5000, 5000 + body_len))
    windows = short_encoder._windows(ids, q, OVERLAP)
    width = MAX_LEN - q
    if q + body_len <= MAX_LEN:  # a pair that fits is one window: itself
        assert windows == [ids]
        assert estimated_windows(q + body_len, MAX_LEN, q, OVERLAP) == 1
        return
    assert len(windows) == 1 + math.ceil((body_len - width) / (width - OVERLAP))
    assert windows[0] == ids[:MAX_LEN], "window 0 is exactly what END scores"
    assert all(w[:q] == ids[:q] and len(w) <= MAX_LEN for w in windows)
    bodies = [w[q:] for w in windows]
    for a, b in zip(bodies, bodies[1:]):
        assert a[-OVERLAP:] == b[:OVERLAP], "consecutive windows share exactly the overlap"
    assert bodies[-1][-1] == ids[-1], "the last window reaches the end"
    assert estimated_windows(q + body_len, MAX_LEN, q, OVERLAP) == len(windows), "the client's estimate agrees"


def test_edges_exactly_w_and_w_plus_one(short_encoder):
    q, width = 14, MAX_LEN - 14
    exact = list(range(q + width))
    assert short_encoder._windows(exact, q, OVERLAP) == [exact]
    one_more = list(range(q + width + 1))
    second = short_encoder._windows(one_more, q, OVERLAP)[1]
    assert second == one_more[:q] + one_more[q + width - OVERLAP:], "W + 1: a second window of overlap + 1 tokens"


def test_query_part_is_split_by_offsets_with_multibyte_text(short_encoder, tokenizer):
    """Emoji and CJK in the query and across window edges: windows are token slices of one tokenization,
    so nothing is decoded or re-tokenized, and together they hold every token of the pair."""
    query = "héllo 🤖 wörld"
    passage = " ".join(f"{long_text(i, 3)} 🤖日本語{i}" for i in range(30))
    windows, short = short_encoder.windows(query, [passage, "short"], "CHUNK", OVERLAP)
    full = tokenizer.encode(rp.format_pair(query, passage)).ids
    q = 0
    while windows[0][q] == windows[1][q]:
        q += 1
    assert tokenizer.decode(full[1:q]).startswith("question:héllo 🤖 wörld \n \n passage")
    assert all(w[:q] == full[:q] for w in windows)
    body = windows[0][q:] + [t for w in windows[1:] for t in w[q + OVERLAP:]]
    assert full == full[:q] + body, "the windows hold every passage token once, overlaps aside"
    assert short == [tokenizer.encode(rp.format_pair(query, "short")).ids]


def test_query_too_long_for_any_window(short_encoder):
    with pytest.raises(rp.ChunkError, match=r"leaves \d+ tokens of passage per window of 64, not more than "
                                            r"chunk_overlap \(8\)"):
        short_encoder.windows("word " * 60, ["passage " * 40], "CHUNK", OVERLAP)
    assert short_encoder.windows("word " * 60, ["p"], "END") == [[short_encoder.encode("word " * 60, ["p"], "END")[0]]]


@pytest.mark.parametrize("value,expected", [(None, 16), ("", 16), (0, 0), (8, 8), ("12", 12), (b"3", 3)])
def test_overlap_parsing(value, expected):
    assert rp.parse_overlap(value, MAX_LEN) == expected
    assert rp.parse_overlap(None, 8192) == 256


@pytest.mark.parametrize("value", [-1, "x", 1.5, True, "-3"])
def test_bad_overlap_is_refused(value):
    with pytest.raises(rp.ChunkError, match="chunk_overlap must be a whole number"):
        rp.parse_overlap(value, MAX_LEN)


def test_client_plans_windows_within_the_row_limit():
    limits = ServerLimits(max_rows=8, max_tokens=None, max_sequence_length=MAX_LEN, buckets=(32, 64))
    lengths = [200] * 3 + [20] * 5  # three passages of 4 windows each (q = 14, W = 50, overlap 8)
    plan = plan_requests(lengths, limits, truncate="CHUNK", overlap=OVERLAP, query_tokens=14)
    assert sorted(i for p in plan for i in p) == list(range(8))
    for part in plan:
        assert sum(4 if lengths[i] > MAX_LEN else 1 for i in part) <= 8


# --- against the real server (every test below starts or uses one) ---------------------------------------

@pytest.fixture(scope="module")
def chunk_server(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    from rerank_build.repository import RepositorySettings, build_repository
    from rerank_serving.server import TritonServer

    repo = build_repository(tiny_checkpoint, artifacts / "repo-chunk",
                            RepositorySettings(**{**TEST_LIMITS, "max_sequence_length": MAX_LEN}), onnx=tiny_onnx_fp32)
    server = TritonServer(repo, log_path=artifacts / "tritonserver-chunk.log")
    server.start(timeout_s=180)
    yield server
    server.stop()


def reference_logits(model, rows: list[list[int]]) -> list[float]:
    with torch.no_grad():
        return [float(model(torch.tensor([r], dtype=torch.int32), torch.ones((1, len(r)), dtype=torch.int32))[0, 0])
                for r in rows]


@pytest.mark.server
def test_repository_with_a_small_max_sequence_length(chunk_server):
    from rerank_client.tensors import protocol_module

    client = protocol_module("grpc").InferenceServerClient(chunk_server.grpc_url)
    try:
        config = client.get_model_config(DEFAULT_ENSEMBLE_NAME, as_json=True)["config"]
        engine = client.get_model_config("engine", as_json=True)["config"]
    finally:
        client.close()
    assert config["parameters"]["max_sequence_length"]["string_value"] == "64"
    assert config["parameters"]["length_buckets"]["string_value"] == "64"
    assert engine["parameters"]["max_width"]["string_value"] == "64", "no row is ever wider"


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_each_window_scores_as_the_reference_and_the_best_counts(chunk_server, protocol, short_encoder, tiny_model):
    passages = [long_text(1, 120), "a short passage that fits", long_text(2, 60), "🤖 " * 70 + "日本語 " * 30]
    result = infer_once(chunk_server.url(protocol), protocol, DEFAULT_ENSEMBLE_NAME, QUERY, passages,
                        truncate="CHUNK", chunk_overlap=OVERLAP)
    windows = short_encoder.windows(QUERY, passages, "CHUNK", OVERLAP)
    by_index = {int(i): k for k, i in enumerate(result.index)}
    assert [len(w) for w in windows][1] == 1 and all(len(w) > 1 for k, w in enumerate(windows) if k != 1)
    for i, rows in enumerate(windows):
        k = by_index[i]
        scores = reference_logits(tiny_model, rows)
        assert result.logit[k] == pytest.approx(max(scores), abs=1e-4), (i, scores)
        assert result.chunks[k] == len(rows)
        assert result.token_count[k] == sum(len(r) for r in rows)
    assert list(result.logit) == sorted(result.logit, reverse=True)


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_fitting_passages_score_as_end_and_window_zero_is_end(chunk_server, protocol):
    passages = ["fits easily", "also short", long_text(3, 90)]
    url = chunk_server.url(protocol)
    chunk = infer_once(url, protocol, DEFAULT_ENSEMBLE_NAME, QUERY, passages, truncate="CHUNK", chunk_overlap=OVERLAP)
    end = infer_once(url, protocol, DEFAULT_ENSEMBLE_NAME, QUERY, passages, truncate="END")
    c = dict(zip(chunk.index.tolist(), chunk.logit.tolist()))
    e = dict(zip(end.index.tolist(), end.logit.tolist()))
    assert c[0] == e[0] and c[1] == e[1], "a pair that fits is today's row, bit for bit"
    assert c[2] >= e[2], "the best window is at least window 0, which END scores"


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_chunk_errors(chunk_server, protocol):
    q, p = texts([QUERY]), texts([long_text(4, 100)])
    message = expect_invalid(chunk_server, protocol, {"query": texts(["word " * 60]), "passage": p},
                             {"truncate": "CHUNK", "chunk_overlap": 8})
    assert "not more than chunk_overlap (8)" in message
    message = expect_invalid(chunk_server, protocol, {"query": q, "passage": p}, {"truncate": "CHUNK",
                                                                                    "chunk_overlap": "many"})
    assert "chunk_overlap must be a whole number" in message
    many = texts([long_text(5, 400)] * 6)  # about 20 windows each: more than the 64 rows per request
    message = expect_invalid(chunk_server, protocol, {"query": texts([QUERY] * 6), "passage": many},
                             {"truncate": "CHUNK", "chunk_overlap": 8})
    assert "windows (truncate=CHUNK), more than the limit of 64 rows per request (max_rows_per_request)" in message
    ok = infer_raw(chunk_server, protocol, {"query": q, "passage": p}, {"truncate": "CHUNK"})
    assert ok.as_numpy("index").shape == (1, 1), "still serving"


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_splits_a_long_list_with_long_passages(chunk_server, protocol):
    passages = [long_text(10 + i, 150 if i % 7 == 0 else 12) for i in range(60)]
    with RerankClient(chunk_server.url(protocol), protocol, truncate="CHUNK", chunk_overlap=OVERLAP) as client:
        results = client.rerank(QUERY, passages)
    assert sorted(r.index for r in results) == list(range(60))
    expected = {}
    for i, passage in enumerate(passages):
        one = infer_once(chunk_server.url(protocol), protocol, DEFAULT_ENSEMBLE_NAME, QUERY, [passage],
                         truncate="CHUNK", chunk_overlap=OVERLAP)
        expected[i] = (float(one.logit[0]), int(one.chunks[0]), int(one.token_count[0]))
    for r in results:
        assert (r.logit, r.chunks, r.token_count) == pytest.approx(expected[r.index], abs=1e-5)
    assert any(r.chunks > 1 for r in results)


@pytest.mark.server
def test_gateway_and_cli_pass_chunk_through(chunk_server, artifacts, capsys):
    from rerank_serving.server import free_ports
    from rerank_serving.stack import GatewayProcess
    from rerank_client.cli import main as cli_main

    passages = [long_text(20, 120), "short"]
    truth = infer_once(chunk_server.grpc_url, "grpc", DEFAULT_ENSEMBLE_NAME, QUERY, passages, truncate="CHUNK",
                       chunk_overlap=OVERLAP)
    with GatewayProcess(chunk_server.grpc_url, port=free_ports(1)[0], log_path=artifacts / "gateway-chunk.log") as gw:
        gw.wait_ready(60)
        body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in passages], "truncate": "CHUNK",
                "chunk_overlap": OVERLAP}
        answer = post(gw, "/v1/ranking", body).json()
        assert [(r["index"], r["chunks"]) for r in answer["rankings"]] == list(zip(truth.index.tolist(),
                                                                                     truth.chunks.tolist()))
        assert answer["usage"]["total_tokens"] == int(truth.token_count.sum())
        plain = post(gw, "/v1/ranking", {**body, "truncate": "END", "chunk_overlap": None}).json()
        assert "chunks" not in plain["rankings"][0], "NIM's body unless CHUNK was asked for"
        assert_error(post(gw, "/v1/ranking", {**body, "chunk_overlap": -1}), 400, "chunk_overlap")
    assert cli_main(["--url", chunk_server.grpc_url, "--query", QUERY, "--truncate", "CHUNK", "--chunk-overlap",
                     str(OVERLAP), *sum((["--passage", p] for p in passages), [])]) == 0
    import json

    printed = json.loads(capsys.readouterr().out)
    assert [r["chunks"] for r in printed["rankings"]] == truth.chunks.tolist()
