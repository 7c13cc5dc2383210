"""Client logic without a server: limits, planning, merging, scores, formats, errors, CLI input."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from rerank_client import (
    DeadlineExceededError, InputTooLongError, InvalidInputError, RerankError, RerankResult, ServerLimits,
    ServerUnavailableError,
    to_cohere, to_nim,
)
from rerank_client.cli import read_passages
from rerank_client.core import RetryPolicy, TokenEstimator, is_too_large, merge, plan_requests, sigmoid32
from rerank_client.errors import classify
from rerank_client.tensors import RawResult

CONFIG = {"max_batch_size": 64, "parameters": {
    "max_rows_per_request": {"string_value": "64"}, "max_tokens_per_request": {"string_value": "16384"},
    "max_sequence_length": {"string_value": "8192"}, "length_buckets": {"string_value": "64,128,256,512,8192"}}}


def test_limits_from_config():
    limits = ServerLimits.from_config(CONFIG)
    assert limits == ServerLimits(64, 16384, 8192, (64, 128, 256, 512, 8192))
    assert ServerLimits.from_config({"config": {"max_batch_size": 32}}) == ServerLimits(32, None, 8192, None)
    published = {"parameters": {**CONFIG["parameters"], "max_passages_in_flight": {"string_value": "256"}}}
    assert ServerLimits.from_config(published).max_in_flight == 256


def test_plan_groups_similar_lengths_within_limits():
    limits = ServerLimits.from_config(CONFIG)
    lengths = [500, 20, 480, 30, 25, 490] + [60] * 200
    chunks = plan_requests(lengths, limits)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        width = limits.padded(max(lengths[i] for i in chunk))
        assert len(chunk) <= 64 and len(chunk) * width <= 16384
    long_chunk = next(c for c in chunks if 0 in c)
    assert set(long_chunk) == {0, 2, 5}, "the long passages travel together"


def test_plan_respects_a_smaller_client_row_cap_and_end_truncation():
    limits = ServerLimits.from_config(CONFIG)
    assert max(len(c) for c in plan_requests([10] * 100, limits, max_rows=16)) == 16
    # with END a 20,000-token estimate is capped at 8192: one row per request still fits 16384
    assert plan_requests([20000, 20000], limits, truncate="END") == [[0, 1]]


def test_estimates_are_exact_with_a_tokenizer_and_safe_without(tiny_checkpoint, encoder):
    passages = ["two roads diverged in a yellow wood", "東京の人口は約1400万人", "🙂" * 5, "x"]
    exact = TokenEstimator(str(tiny_checkpoint)).estimate("which way?", passages)
    assert exact == [len(r) for r in encoder.encode("which way?", passages)]
    guess = TokenEstimator().estimate("which way?", passages)
    assert all(g >= e for g, e in zip(guess, exact))


def test_merge_maps_indices_and_applies_top_n_globally():
    chunks = [[4, 1], [0, 3, 2]]
    results = [RawResult(np.array([1, 0]), np.array([3.0, -1.0], np.float32), np.array([7, 8])),
               RawResult(np.array([2, 0, 1]), np.array([5.0, 3.0, 0.0], np.float32), np.array([9, 10, 11]))]
    merged = merge(chunks, results, ["p0", "p1", "p2", "p3", "p4"], top_n=3, return_text=True)
    assert [(r.index, r.logit, r.token_count, r.text) for r in merged] == [
        (2, 5.0, 9, "p2"), (0, 3.0, 10, "p0"), (1, 3.0, 7, "p1")]  # tie at 3.0: lower index first


def test_sigmoid_is_fp32_and_stable():
    out = sigmoid32(np.array([-1000.0, -20.0, 0.0, 20.0, 1000.0]))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert out[2] == np.float32(0.5) and out[0] == 0.0 and out[-1] == 1.0
    np.testing.assert_allclose(out[1], 1 / (1 + np.exp(20.0)), rtol=1e-6)


def test_formats():
    results = [RerankResult(2, 1.5, 0.8176, 12, "b"), RerankResult(0, -3.0, 0.0474, 10)]
    assert to_nim(results) == {"rankings": [{"index": 2, "logit": 1.5, "text": "b"}, {"index": 0, "logit": -3.0}],
                               "usage": {"prompt_tokens": 22, "total_tokens": 22}}
    assert to_cohere(results) == {"results": [{"index": 2, "relevance_score": 0.8176, "document": {"text": "b"}},
                                              {"index": 0, "relevance_score": 0.0474}]}


@pytest.mark.parametrize("status,message,expected", [
    ("StatusCode.INVALID_ARGUMENT", "query is empty", InvalidInputError),
    ("400", "Input length 9000 exceeds maximum allowed token size 8192", InputTooLongError),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
    ("503", "exceeds maximum queue size", ServerUnavailableError),
    ("StatusCode.RESOURCE_EXHAUSTED", "too big", ServerUnavailableError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceededError),
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'm' has no available versions", ServerUnavailableError),
    ("404", "Request for unknown model: 'm' is not found", RerankError),
    ("StatusCode.INTERNAL", "Stub process 'engine_0_0' is not healthy.", ServerUnavailableError),  # the watchdog restarts it
    ("500", "Stub process 'tokenizer_0_1' is not healthy.", ServerUnavailableError),
    ("StatusCode.INTERNAL", "engine failed: out of memory", RerankError),
])
def test_classify_keeps_the_message(status, message, expected):
    error = classify(InferenceServerException(message, status=status))
    assert type(error) is expected and error.message == message and error.status == status
    assert error.retryable == (expected is ServerUnavailableError)


def test_connection_errors_are_retryable_and_nothing_else():
    """Retried: a connection refused, reset or dropped, or a name that did not resolve. Not retried: other
    OSErrors (a missing certificate file fails the same way every time), certificate errors, and
    tritonclient's own refusals of a call (no status)."""
    import errno
    import socket
    import ssl

    from geventhttpclient.response import HTTPConnectionClosed

    for exc in (ConnectionRefusedError("refused"), ConnectionResetError("reset"), BrokenPipeError(),
                OSError(errno.EHOSTUNREACH, "No route to host"), socket.gaierror(-2, "Name or service not known"),
                ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), HTTPConnectionClosed("connection closed.")):
        assert isinstance(classify(exc), ServerUnavailableError), exc
    for exc in (FileNotFoundError(2, "No such file or directory", "/etc/certs/ca.pem"), PermissionError(13, "denied"),
                ssl.SSLCertVerificationError(1, "certificate verify failed"), InferenceServerException("bad argument"),
                ValueError("x")):
        error = classify(exc)
        assert not error.retryable, (exc, error)
    assert isinstance(classify(TimeoutError()), DeadlineExceededError)


def server_refusal(encoder, passages, limits, truncate="END", overlap=None) -> InvalidInputError:
    """The server's own refusal text (the tokenizer step's ``encode_request``), as the client receives it."""
    from rerank_contract import prompt as rp

    with pytest.raises(rp.RerankInputError) as refused:
        rp.encode_request(encoder, ["q"] * len(passages), passages, truncate, limits, overlap=overlap)
    return InvalidInputError(str(refused.value), "StatusCode.INVALID_ARGUMENT")


def test_too_large_refusals_are_recognised_by_the_limit_they_name(encoder):
    """Every refusal a smaller request avoids names its limit; the client splits on exactly those."""
    from rerank_contract import prompt as rp

    limits = rp.RequestLimits(max_rows=4, max_tokens=256, buckets=(64, 128, 8192), max_bytes=1000)
    splittable = {
        "rows": server_refusal(encoder, ["p"] * 5, limits),
        "windows": server_refusal(encoder, ["word " * 60000], rp.RequestLimits(max_rows=4, max_bytes=10**6), "CHUNK", 0),
        "padded tokens": server_refusal(encoder, ["word " * 100] * 3, limits),
        "bytes": server_refusal(encoder, ["x" * 600] * 2, limits),
    }
    for kind, error in splittable.items():
        assert is_too_large(error), (kind, error.message)
    # Refusals no split avoids, some with the words the old substring rule looked for.
    for message in ["passage 1 is empty", "Input length 9000 exceeds maximum allowed token size 8192",
                    "Request has 11 passages, more than the limit of 10 per request (max_passages_per_request)",
                    "chunk_overlap leaves 3 padded tokens of passage per request window: passages bytes"]:
        assert not is_too_large(InvalidInputError(message)), message


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(retries=10, base_s=0.1, max_s=1.0)
    assert all(0 <= policy.delay(a) <= min(1.0, 0.1 * 2 ** a) for a in range(10) for _ in range(20))


def test_backoff_decides_between_retry_and_raise():
    policy = RetryPolicy(retries=2, base_s=0.01, max_s=0.01)
    busy, bad = ServerUnavailableError("busy", "UNAVAILABLE"), InvalidInputError("passage 1 is empty")
    cause = RuntimeError("transport")
    far = time.monotonic() + 60
    assert 0 <= policy.backoff(busy, cause, 0, far) <= 0.01
    with pytest.raises(InvalidInputError) as refused:
        policy.backoff(bad, cause, 0, far)
    assert refused.value.__cause__ is cause
    with pytest.raises(ServerUnavailableError):
        policy.backoff(busy, cause, 2, far)
    with pytest.raises(DeadlineExceededError, match="while retrying: busy"):
        policy.backoff(busy, cause, 0, time.monotonic())


def test_cli_reads_jsonl_and_plain_lines():
    assert read_passages(io.StringIO('{"text": "a"}\n\nplain line\n{"text": "c", "id": 3}\n')) == [
        "a", "plain line", "c"]
    with pytest.raises(SystemExit, match="line 1"):
        read_passages(io.StringIO('{"txt": "a"}\n'))


def test_default_urls_follow_nims_port_layout():
    from rerank_client import RerankClient

    assert RerankClient().settings.url == "localhost:8001"
    assert RerankClient(protocol="http").settings.url == "localhost:8003", "8000 is the REST gateway's"


def test_retry_window_replaces_the_count():
    """With a window, a request retries for that long after its first failure, whatever the count."""
    policy = RetryPolicy(retries=0, base_s=0.01, max_s=0.01, window_s=5.0)
    busy, cause, far = ServerUnavailableError("busy", "UNAVAILABLE"), RuntimeError("transport"), time.monotonic() + 60
    assert policy.backoff(busy, cause, 50, far, first_failure=time.monotonic() - 4.0) <= 0.01
    with pytest.raises(ServerUnavailableError):
        policy.backoff(busy, cause, 1, far, first_failure=time.monotonic() - 5.0)


def test_ensemble_prefix_is_dropped_from_messages():
    error = classify(InferenceServerException("in ensemble 'nvidia_llama_3_2_nv_rerankqa_1b_v2', passage 1 is empty",
                                              status="StatusCode.INVALID_ARGUMENT"))
    assert error.message == "passage 1 is empty"


def test_plan_keeps_requests_under_the_byte_limit():
    limits = ServerLimits(max_rows=512, max_bytes=1000)
    sizes = [400, 400, 400, 1500, 10]
    chunks = plan_requests([20] * 5, limits, sizes=sizes)
    assert sorted(i for c in chunks for i in c) == list(range(5))
    assert all(sum(sizes[i] for i in c) <= 1000 or len(c) == 1 for c in chunks)


def test_several_grpc_endpoints_make_one_round_robin_target():
    from rerank_client.connection import ConnectionSettings, grpc_target

    assert grpc_target("localhost:8001") == "localhost:8001", "one endpoint: unchanged"
    assert grpc_target("localhost:8001, 127.0.0.1:9001") == "ipv4:127.0.0.1:8001,127.0.0.1:9001"
    assert grpc_target("dns:///triton-headless.rerank.svc:8001") == "dns:///triton-headless.rerank.svc:8001"
    settings = ConnectionSettings("grpc://localhost:8001,localhost:8011", "grpc")
    assert settings.url == "ipv4:127.0.0.1:8001,127.0.0.1:8011"
    config = json.loads(dict(settings._grpc_channel_args())["grpc.service_config"])
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}
    with pytest.raises(ValueError, match="not HOST:PORT"):
        grpc_target("localhost:8001,localhost")
    with pytest.raises(ValueError, match="several endpoints need protocol='grpc'"):
        ConnectionSettings("localhost:8003,localhost:8013", "http")


# --- deadlines: the caller stops waiting, the RPC is left to the server's answer ------------------

def test_classify_treats_a_drop_at_the_deadline_as_deadline_exceeded():
    """Our tokenizer's and engine's drops say Triton's own phrase, behind the ensemble's prefix."""
    from rerank_contract import deadline

    dropped = InferenceServerException(f"in ensemble 'x', {deadline.expired_message('engine', 1, 2)}",
                                       "StatusCode.UNAVAILABLE")
    assert isinstance(classify(dropped), DeadlineExceededError) and not classify(dropped).retryable


@pytest.mark.timeout(30)
def test_sync_grpc_stops_waiting_at_the_deadline_without_cancelling_the_rpc():
    """The RPC's own deadline is RPC_GRACE_S past the call's, and carries the deadline's instant; the
    caller gets DeadlineExceededError at its deadline and the RPC is left to end with the server's answer
    (a cancellation at that instant crashes Triton 2.51)."""
    from rerank_client import RerankClient
    from rerank_client.tensors import RPC_GRACE_S, Truncation

    calls = []

    class Transport:  # answers only when the test calls back; has nothing a client could cancel
        def async_infer(self, model, inputs, callback, outputs=None, client_timeout=None, **kwargs):
            calls.append((client_timeout, kwargs, callback))

    client = RerankClient("localhost:1", "grpc")
    try:
        sent = time.time_ns()
        with pytest.raises(DeadlineExceededError):
            client._infer(Transport(), "q", ["p"], Truncation("END"), 0.2)
        [(client_timeout, kwargs, callback)] = calls
        assert client_timeout == pytest.approx(0.2 + RPC_GRACE_S)
        assert kwargs["timeout"] == 200_000
        assert sent + 2 * 10**8 <= kwargs["parameters"]["deadline_ns"] <= time.time_ns() + 2 * 10**8
        assert kwargs["parameters"]["truncate"] == "END"
        callback(None, InferenceServerException("Request timeout expired: dropped by the engine"))  # later: ignored
    finally:
        client.close()


def stub_async_client(protocol: str, infer, **options):
    """An AsyncRerankClient with known limits whose requests go to ``infer`` (no server, no connection)."""
    from rerank_client import AsyncRerankClient

    client = AsyncRerankClient("localhost:1", protocol, **options)
    client._limits = ServerLimits.from_config(CONFIG)
    client._connection = lambda: None  # type: ignore[method-assign]
    client._infer = infer  # type: ignore[method-assign]
    return client


async def answer_when(release, outcomes: list[str]) -> RawResult:
    """A request the server answers once ``release`` is set; ``outcomes`` says whether it was answered or
    cancelled first."""
    import asyncio

    try:
        await release.wait()
        outcomes.append("answered")
    except asyncio.CancelledError:
        outcomes.append("cancelled")
        raise
    return RawResult(np.zeros(1, np.int32), np.zeros(1, np.float32), np.ones(1, np.int32))


async def until(condition) -> None:
    """Poll ``condition`` on the event loop (the caller bounds the wait)."""
    import asyncio

    while not condition():
        await asyncio.sleep(0.01)


@pytest.mark.timeout(30)
def test_async_rerank_keeps_the_servers_deadline_message_and_cancels_no_other_request():
    """One of a call's requests dropped by the server at its deadline (the engine predicts it late) ends
    the call with the server's own message, at once; the call's other requests are not cancelled (they
    end by the same deadline: cancelling them could race Triton's answers)."""
    import asyncio


    async def scenario() -> tuple[str, list[str]]:
        release, outcomes, calls = asyncio.Event(), [], []

        async def infer(_transport, _query, texts, _truncate, _left, headers=None, stages=False):
            calls.append(texts)
            if len(calls) == 1:
                raise InferenceServerException("in ensemble 'x', Request timeout expired: the deadline is 80 ms away "
                                               "and the engine's batch would take about 300 ms; dropped by the engine "
                                               "before computing", "StatusCode.UNAVAILABLE")
            return await answer_when(release, outcomes)

        client = stub_async_client("grpc", infer, max_rows_per_request=1, max_concurrency=4)
        with pytest.raises(DeadlineExceededError) as raised:
            await client.rerank("q", ["a", "b", "c"], timeout_s=30.0)
        await asyncio.wait_for(until(lambda: len(calls) == 3), 5)
        release.set()
        await asyncio.wait_for(until(lambda: len(outcomes) == 2), 5)
        return str(raised.value), outcomes

    message, others = asyncio.run(scenario())
    assert "dropped by the engine" in message
    assert others == ["answered", "answered"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("protocol,left_running", [("grpc", True), ("http", False)])
def test_async_rerank_leaves_a_grpc_rpc_to_the_server_at_the_deadline(protocol, left_running):
    """``rerank()`` raises DeadlineExceededError at the deadline; over gRPC its RPC runs on until the server
    answers (released here by the test, no timing), over HTTP, where Triton cancels nothing, it is cancelled
    as before. A caller that is itself cancelled (a REST client that hung up) cancels the RPC either way."""
    import asyncio


    async def scenario() -> tuple[list[str], list[str]]:
        release, started, outcomes = asyncio.Event(), asyncio.Event(), []

        async def infer(_transport, _query, _texts, _truncate, _left, headers=None, stages=False):
            started.set()
            return await answer_when(release, outcomes)

        client = stub_async_client(protocol, infer)
        with pytest.raises(DeadlineExceededError):
            await client.rerank("q", ["p"], timeout_s=0.1)
        release.set()
        await asyncio.wait_for(until(lambda: outcomes), 5)
        first = list(outcomes)
        outcomes.clear()
        release.clear()
        started.clear()
        caller = asyncio.ensure_future(client.rerank("q", ["p"], timeout_s=30.0))
        await started.wait()  # the request is waiting on the server
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait_for(until(lambda: outcomes), 5)
        return first, list(outcomes)

    deadline_outcome, cancelled_outcome = asyncio.run(scenario())
    assert deadline_outcome == (["answered"] if left_running else ["cancelled"])
    assert cancelled_outcome == ["cancelled"]


@pytest.mark.timeout(30)
def test_sync_rerank_over_grpc_leaves_the_rpc_to_the_server_at_the_deadline():
    """The same through the sync client's ``rerank()``: DeadlineExceededError at the deadline, the RPC's
    own deadline RPC_GRACE_S later, and nothing cancels it (the transport has nothing to cancel with)."""
    from rerank_client import RerankClient
    from rerank_client.tensors import RPC_GRACE_S

    calls = []

    class Transport:
        def async_infer(self, model, inputs, callback, outputs=None, client_timeout=None, **kwargs):
            calls.append((client_timeout, callback))

    client = RerankClient("localhost:1", "grpc")
    client._limits = ServerLimits.from_config(CONFIG)
    client._grpc_client = Transport  # type: ignore[method-assign]
    try:
        with pytest.raises(DeadlineExceededError):
            client.rerank("q", ["p"], timeout_s=0.2)
        [(client_timeout, callback)] = calls
        assert client_timeout == pytest.approx(0.2 + RPC_GRACE_S, abs=0.05), "the call's deadline plus the grace"
        callback(None, InferenceServerException("Request timeout expired: dropped by the engine"))  # later
    finally:
        client.close()
