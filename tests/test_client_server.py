"""The client library against a real tritonserver: sync and async, gRPC and HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rerank_build.parity import rankings_agree
from rerank_build.server import Ports, TritonServer, free_ports
from rerank_build.textgen import FIXED_CASES, random_text
from rerank_client import (
    AsyncRerankClient, DeadlineExceededError, InputTooLongError, InvalidInputError, RerankClient, ServerLimits,
    ServerUnavailableError,
)
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once

from conftest import TEST_LIMITS
from triton_helpers import ensemble_answer

pytestmark = pytest.mark.server

QUERY = FIXED_CASES[0].query
PASSAGES = list(FIXED_CASES[0].passages)


def reference(server, passages, query=QUERY):
    """One raw request per passage: the ground truth the split/merge must reproduce."""
    return ensemble_answer(server, query, list(passages))


def socket_count() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed meanwhile
            pass
    return count


def test_sync_rerank(server, protocol):
    with RerankClient(server.url(protocol), protocol) as client:
        client.wait_until_ready(30)
        results = client.rerank(QUERY, PASSAGES, return_text=True)
    logits, counts = reference(server, PASSAGES)
    assert [r.index for r in results] == list(np.lexsort((np.arange(3), -logits)))
    for r in results:
        assert r.logit == pytest.approx(logits[r.index], abs=1e-4)
        assert r.token_count == counts[r.index] and r.text == PASSAGES[r.index]
        assert r.relevance_score == pytest.approx(1 / (1 + np.exp(-r.logit)), rel=1e-5)


def test_async_rerank(server, protocol):
    async def go():
        async with AsyncRerankClient(server.url(protocol), protocol) as client:
            await client.wait_until_ready(30)
            return await asyncio.gather(*(client.rerank(c.query, list(c.passages), top_n=1) for c in FIXED_CASES))

    outs = asyncio.run(go())
    for case, results in zip(FIXED_CASES, outs):
        logits, _ = reference(server, list(case.passages), case.query)
        assert len(results) == 1 and results[0].index == int(np.argmax(logits))


def test_limits_are_read_from_the_server(server):
    with RerankClient(server.grpc_url) as client:
        assert client.limits == ServerLimits(TEST_LIMITS["max_rows"], TEST_LIMITS["max_request_tokens"], 8192,
                                             (64, 128, 256, 512, 1024, 2048, 4096, 8192),
                                             TEST_LIMITS["max_request_bytes"], TEST_LIMITS["admission_passages"])


@pytest.fixture(scope="module")
def many_passages():
    rng = random.Random(11)
    return [random_text(rng, rng.choice((1, 3, 8, 20, 60, 120))) for _ in range(10_000)]


@pytest.mark.slow
def test_ten_thousand_passages_equal_one_per_request(server, many_passages):
    logits, counts = reference(server, many_passages)
    started = time.perf_counter()
    with RerankClient(server.grpc_url, max_concurrency=4, truncate="END") as client:
        results = client.rerank(QUERY, many_passages)
    print(f"10,000 passages in {time.perf_counter() - started:.1f}s")
    assert sorted(r.index for r in results) == list(range(10_000))
    got = np.empty(10_000, dtype=np.float32)
    for r in results:
        got[r.index] = r.logit
        assert r.token_count == counts[r.index]
    np.testing.assert_allclose(got, logits, atol=1e-4)
    assert rankings_agree(logits, got, 1e-4)
    order = [r.index for r in results]
    assert order == sorted(order, key=lambda i: (-got[i], i)), "sorted by logit, ties by index"


def test_top_n_is_global_across_requests(server, many_passages):
    subset = many_passages[:700]
    logits, _ = reference(server, subset)
    with RerankClient(server.grpc_url, max_rows_per_request=16, truncate="END") as client:
        top = client.rerank(QUERY, subset, top_n=5)
    assert [r.index for r in top] == list(np.lexsort((np.arange(700), -logits))[:5])


def test_requests_the_server_finds_too_large_are_split(server, protocol):
    passages = ["word " * 300] * 40  # 40 x 512 padded tokens > the server's 16384
    with RerankClient(server.url(protocol), protocol, max_rows_per_request=None) as client:
        client._limits = ServerLimits(max_rows=64, max_tokens=None)  # as if the server published no budget
        results = client.rerank(QUERY, passages)
    assert len(results) == 40 and len({round(r.logit, 4) for r in results}) == 1


def test_error_types_keep_the_servers_message(server, protocol):
    with RerankClient(server.url(protocol), protocol, retries=0) as client:
        with pytest.raises(InvalidInputError, match="passage 1 is empty"):
            client.rerank(QUERY, ["fine", ""])
        with pytest.raises(InputTooLongError, match="exceeds maximum allowed token size 8192") as info:
            client.rerank(QUERY, ["hello " * 9000])
        assert info.value.status in ("StatusCode.INVALID_ARGUMENT", "400")
        assert client.rerank(QUERY, ["hello " * 9000], truncate="END")[0].token_count == 8192
        assert client.rerank(QUERY, []) == []


def test_unreachable_server_and_deadline(protocol):
    port = free_ports(1)[0]
    with RerankClient(f"127.0.0.1:{port}", protocol, retries=2, backoff_s=0.01, timeout_s=5) as client:
        with pytest.raises(ServerUnavailableError):
            client.rerank(QUERY, PASSAGES)
    with RerankClient(f"127.0.0.1:{port}", protocol, retries=100, backoff_s=0.05, timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.rerank(QUERY, PASSAGES)
        assert time.monotonic() - started < 3.0


def test_deadline_expires_on_a_slow_call(server, many_passages):
    with RerankClient(server.grpc_url, truncate="END") as client:
        client.limits  # noqa: B018 - read the limits outside the timed call
        with pytest.raises(DeadlineExceededError):
            client.rerank(QUERY, many_passages[:3000], timeout_s=0.2)
        assert len(client.rerank(QUERY, PASSAGES)) == 3, "the client stays usable"


def test_async_deadline(server, many_passages):
    async def go():
        async with AsyncRerankClient(server.http_url, "http", truncate="END") as client:
            await client.limits()
            with pytest.raises(DeadlineExceededError):
                await client.rerank(QUERY, many_passages[:3000], timeout_s=0.2)

    asyncio.run(go())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_survives_a_server_restart(tiny_repository, artifacts, protocol, mode):
    """Server down when the call starts, back 3 s later: the call retries through it and succeeds."""
    ports = Ports(*free_ports(3))
    server = TritonServer(tiny_repository, ports=ports, log_path=artifacts / "restart.log").start()
    url = server.url(protocol)
    expected = infer_once(url, protocol, DEFAULT_ENSEMBLE_NAME, QUERY, PASSAGES)
    server.stop()
    restarted = threading.Timer(3.0, server.start)
    restarted.start()
    try:
        if mode == "sync":
            with RerankClient(url, protocol, retries=50, backoff_s=0.2, max_backoff_s=1.0, timeout_s=120) as client:
                results = client.rerank(QUERY, PASSAGES)
        else:
            async def go():
                async with AsyncRerankClient(url, protocol, retries=50, backoff_s=0.2, max_backoff_s=1.0,
                                             timeout_s=120) as client:
                    return await client.rerank(QUERY, PASSAGES)

            results = asyncio.run(go())
    finally:
        restarted.join()
        server.stop()
    assert [r.index for r in results] == expected.index.tolist()
    np.testing.assert_allclose([r.logit for r in results], expected.logit, atol=1e-4)


def test_no_leaked_threads_or_connections(server, protocol, many_passages):
    threads, sockets = set(threading.enumerate()), socket_count()
    client = RerankClient(server.url(protocol), protocol, max_concurrency=4, max_rows_per_request=16,
                          truncate="END")
    client.rerank(QUERY, many_passages[:300])
    assert socket_count() > sockets
    client.close()
    time.sleep(0.5)
    leaked = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    assert not leaked, leaked
    assert socket_count() <= sockets

    async def go():
        async with AsyncRerankClient(server.url(protocol), protocol, max_rows_per_request=16,
                                     truncate="END") as aclient:
            await aclient.rerank(QUERY, many_passages[:300])
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(go()) == []
    time.sleep(0.5)
    assert socket_count() <= sockets


def test_cli(server, tmp_path):
    cli = str(Path(sys.executable).with_name("rerank-client"))
    done = subprocess.run([cli, "--url", server.grpc_url, "--query", QUERY, *sum((["--passage", p] for p in PASSAGES), []),
                           "--top-n", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["rankings"]) == 2 and set(out["rankings"][0]) == {"index", "logit"}
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": p}) for p in PASSAGES))
    done = subprocess.run([cli, "--url", server.http_url, "--protocol", "http", "--query", QUERY,
                           "--passages-file", str(jsonl), "--format", "cohere"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and len(json.loads(done.stdout)["results"]) == 3
    done = subprocess.run([cli, "--url", server.grpc_url, "--query", QUERY], input="\n".join(PASSAGES),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and len(json.loads(done.stdout)["rankings"]) == 3
    done = subprocess.run([cli, "--url", server.grpc_url, "--query", QUERY, "--passage", ""],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "InvalidInputError" in done.stderr and "passage 0 is empty" in done.stderr


def test_client_splits_by_the_published_byte_limit(server):
    """Three 800 kB passages (END) exceed one request's 2,000,000 bytes: the client splits them."""
    big = [("x " if i % 2 else "y ") * 400_000 for i in range(3)]
    with RerankClient(server.grpc_url, "grpc", truncate="END") as client:
        assert client.limits.max_bytes == TEST_LIMITS["max_request_bytes"]
        results = client.rerank(QUERY, big)
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert all(r.token_count == 8192 for r in results)
