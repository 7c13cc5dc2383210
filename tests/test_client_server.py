"""The client library against a real tritonserver: sync and async, gRPC and HTTP."""

from __future__ import annotations

import asyncio
import gc
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
from rerank_serving.server import TritonServer, free_ports, free_stack_ports
from rerank_build.textgen import FIXED_CASES, random_text
from rerank_client import (
    AsyncRerankClient, DeadlineExceededError, InputTooLongError, InvalidInputError, RerankClient, ServerLimits,
    ServerUnavailableError,
)
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once

from conftest import TEST_LIMITS
from threads import Worker, run_all
from triton_helpers import ensemble_answer

pytestmark = pytest.mark.server

QUERY = FIXED_CASES[0].query
PASSAGES = list(FIXED_CASES[0].passages)


def reference(server, passages, query=QUERY):
    """One raw request per passage: the ground truth the split/merge must reproduce."""
    return ensemble_answer(server, query, list(passages))


def socket_count(pid: int | str = "self") -> int:
    """Open sockets of a process (this one by default), from /proc."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
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
        limits = client.limits
    fingerprint = limits.model_fingerprint
    assert limits == ServerLimits(TEST_LIMITS["max_rows"], TEST_LIMITS["max_tokens_per_request"], 8192,
                                  (64, 128, 256, 512, 1024, 2048, 4096, 8192),
                                  TEST_LIMITS["max_bytes_per_request"], TEST_LIMITS["admission_passages"], fingerprint,
                                  stage_timings=True)  # the ensemble returns stage_ns
    assert fingerprint and len(fingerprint) == 32 and int(fingerprint, 16) >= 0, "the served model's identity"


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


def test_unreachable_server_runs_out_of_retries(protocol):
    """Refused connections are retried ``retries`` times, then the call fails as unavailable (the deadline
    bounding the retries: test_client_deadlines.py)."""
    port = free_ports(1)[0]
    with RerankClient(f"127.0.0.1:{port}", protocol, retries=2, backoff_s=0.01, timeout_s=5) as client:
        with pytest.raises(ServerUnavailableError):
            client.rerank(QUERY, PASSAGES)


class Loop:
    """An event loop in its own thread, for async clients that live across several steps of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def live_channels() -> int:
    """gRPC channels alive in this process (sync and aio)."""
    import grpc
    import grpc.aio

    gc.collect()
    return sum(issubclass(type(o), (grpc.Channel, grpc.aio.Channel)) for o in gc.get_objects())


@pytest.mark.slow
def test_clients_and_gateway_ride_through_repeated_triton_restarts(tiny_repository, artifacts):
    """Triton stopped and started again three times on its ports, with the gateway in front of it and
    long-lived clients of every kind (sync and async, gRPC and HTTP, and the gateway's own Scorer):
    calls made while it is down succeed once it is back; the gateway stays ready through each gap
    (the ride-through); and the clients' channels and sockets, and the gateway's sockets, stay flat
    across the restarts (retired channels used to pile up, one per failed attempt)."""
    from rerank_serving.stack import GatewayProcess
    from rerank_gateway.scoring import Scorer
    from rerank_gateway.settings import GatewaySettings
    import requests

    server = TritonServer(tiny_repository, ports=free_stack_ports(), log_path=artifacts / "restarts.log").start()
    expected = infer_once(server.grpc_url, "grpc", DEFAULT_ENSEMBLE_NAME, QUERY, PASSAGES)
    order = expected.index.tolist()
    # Its ride-through (120 s) outlasts any restart on a loaded CI machine: readiness must not race a clock.
    gateway = GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=artifacts / "gateway-restarts.log",
                             extra_args=["--no-access-log", "--ride-through-s", "120"])
    # A second gateway whose ride-through (1 s) is shorter than the gap: it must say "not ready" then.
    hurried = GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=artifacts / "gateway-hurried.log",
                             extra_args=["--no-access-log", "--ride-through-s", "1"])
    options = dict(retries=10**6, backoff_s=0.1, max_backoff_s=1.0, timeout_s=120)
    sync = {p: RerankClient(server.url(p), p, **options) for p in ("grpc", "http")}
    loop = Loop()
    aclients = {p: AsyncRerankClient(server.url(p), p, **options) for p in ("grpc", "http")}
    scorer = Scorer(GatewaySettings(triton=server.grpc_url, timeout_s=120, ride_through_s=60))

    def calls() -> list:
        body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]}
        return [
            *[lambda c=c: [r.index for r in c.rerank(QUERY, PASSAGES)] for c in sync.values()],
            *[lambda c=c: [r.index for r in loop.run(c.rerank(QUERY, PASSAGES))] for c in aclients.values()],
            lambda: [r.index for r in loop.run(scorer.rank("/test", None, QUERY, PASSAGES, None)).results],
            lambda: [r["index"] for r in requests.post(gateway.url + "/v1/ranking", json=body, timeout=120).json()[
                "rankings"]],
        ]

    def counts() -> dict[str, int]:
        return {"channels": live_channels(), "sockets": socket_count(), "gateway sockets": socket_count(
            gateway.process.pid), "gateway threads": len(os.listdir(f"/proc/{gateway.process.pid}/task"))}

    try:
        gateway.start(60)
        hurried.start(60)
        gateway.wait_ready(60)
        hurried.wait_ready(60)
        assert run_all(calls()) == [order] * 6
        seen = []
        for cycle in range(3):
            # SIGKILL after 1 s: with clients connected tritonserver takes ~20 s to finish a SIGTERM.
            server.stop(timeout_s=1.0)
            probes: list[int | None] = []
            stop = threading.Event()

            def probe() -> None:
                while not stop.is_set():
                    probes.append(gateway.status("/v1/health/ready"))
                    time.sleep(0.1)

            prober = Worker(probe, name="probe")
            prober.start()
            answers = [Worker(call, name=f"call-{i}") for i, call in enumerate(calls())]
            for w in answers:
                w.start()
            # Triton stays down until the hurried gateway (1 s ride-through) has said it is not ready:
            # the gap is made longer than its ride-through, not guessed.
            deadline = time.monotonic() + 30
            while hurried.status("/v1/health/ready") != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert hurried.status("/v1/health/ready") == 503, "past its ride-through a gateway is not ready"
            server.start(120)
            assert [w.check(120) for w in answers] == [order] * 6, f"cycle {cycle}"
            stop.set()
            prober.check(10)
            assert probes and set(probes) == {200}, f"the gateway left its Service during the restart: {probes}"
            hurried.wait_ready(30)
            seen.append(counts())
        print(f"\n[restarts] after each: {seen}")
        for key in seen[0]:
            assert [c[key] for c in seen[1:]] == [seen[0][key]] * 2, (key, seen)
    finally:
        for c in sync.values():
            c.close()
        for c in aclients.values():
            loop.run(c.close())
        loop.run(scorer.close())
        loop.close()
        hurried.stop()
        gateway.stop()
        server.stop()


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


def test_threads_that_come_and_go_leave_no_connections_behind(server, protocol):
    """One client shared by threads that each make a call and end (a web server's request threads): it
    holds one channel (gRPC) or one connection per pool thread (HTTP), never one per caller thread."""
    expected = [int(i) for i in np.lexsort((np.arange(3), -reference(server, PASSAGES)[0]))]
    with RerankClient(server.url(protocol), protocol, max_concurrency=2) as client:
        with pytest.raises(DeadlineExceededError):
            client.rerank(QUERY, PASSAGES, timeout_s=1e-6)  # passes before anything is sent
        assert [r.index for r in client.rerank(QUERY, PASSAGES)] == expected, "usable after a deadline"
        sockets, channels = socket_count(), live_channels()
        for _ in range(4):  # 16 caller threads, 4 at a time, each gone after its call
            assert run_all([lambda: [r.index for r in client.rerank(QUERY, PASSAGES)]] * 4) == [expected] * 4
        sockets, channels = socket_count() - sockets, live_channels() - channels
    # gRPC shares one connection between channels to the same address, so count channels too.
    assert channels == 0, f"{channels} more gRPC channels"
    assert sockets <= (client.max_concurrency - 1 if protocol == "http" else 0), f"{sockets} more sockets"


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
        assert client.limits.max_bytes == TEST_LIMITS["max_bytes_per_request"]
        results = client.rerank(QUERY, big)
    assert sorted(r.index for r in results) == [0, 1, 2]
    assert all(r.token_count == 8192 for r in results)
