"""The client's deadline, threads and connections, against servers that never answer or are not there.

A listener that accepts and never answers (``silent.py``) is the controlled slowness: a call against
it can only end by its deadline, so none of these tests races real work.

The one timing assertion here is the contract itself (README, "Python client"): a call's
``timeout_s`` bounds the whole call, and the call ends within that deadline plus at most 1 s of
slack (``SLACK_S``: thread wake-ups, closing a connection, a loaded 2-core machine). Broken, the
call takes the client's construction-time ``timeout_s`` (30 s here) instead, which this tells apart.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from rerank_client import (
    AsyncRerankClient, ClientClosedError, DeadlineExceededError, RerankClient, ServerLimits, ServerUnavailableError,
)
from rerank_serving.server import free_ports
from silent import SilentServer
from threads import Worker, run_all

PASSAGES = [f"passage {i} about the lighthouse" for i in range(24)]
DEADLINE_S = 1.0
SLACK_S = 1.0
#: Long enough that only a per-call deadline that holds can end these calls in time.
CLIENT_TIMEOUT_S = 30.0


def timed_call(mode: str, url: str, protocol: str, split: bool, **extra) -> tuple[float, BaseException | None]:
    """One rerank with ``timeout_s=DEADLINE_S``; (seconds it took, what it raised)."""
    # Retries without end (a gRPC channel gives up connecting to a silent peer after a few hundred ms,
    # UNAVAILABLE, which is retried): only the deadline may end the call.
    options = dict(timeout_s=CLIENT_TIMEOUT_S, max_rows_per_request=4 if split else None, retries=10**6,
                   backoff_s=0.05, max_backoff_s=0.2, **extra)
    # Split: the limits are known, so the call is 6 requests sent at once. Single: the call's first
    # step is reading the limits, which the deadline bounds too.
    limits = ServerLimits() if split else None
    started = time.monotonic()
    try:
        if mode == "sync":
            with RerankClient(url, protocol, **options) as client:
                client._limits = limits
                client.rerank("q", PASSAGES, timeout_s=DEADLINE_S)
        else:
            async def go() -> None:
                async with AsyncRerankClient(url, protocol, **options) as client:
                    client._limits = limits
                    await client.rerank("q", PASSAGES, timeout_s=DEADLINE_S)

            asyncio.run(go())
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


@pytest.mark.parametrize("split", [False, True], ids=["single", "split"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_per_call_timeout_holds_against_a_silent_server(protocol, mode, split):
    with SilentServer() as silent:
        elapsed, error = timed_call(mode, silent.url, protocol, split)
    assert isinstance(error, DeadlineExceededError), repr(error)
    assert elapsed < DEADLINE_S + SLACK_S, f"timeout_s={DEADLINE_S} took {elapsed:.2f}s"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_per_call_timeout_bounds_the_retries(protocol, mode):
    """Nothing listens: every attempt is refused at once and retried; the deadline ends the retrying."""
    url = f"127.0.0.1:{free_ports(1)[0]}"
    elapsed, error = timed_call(mode, url, protocol, split=False)
    assert isinstance(error, DeadlineExceededError), repr(error)
    assert elapsed < DEADLINE_S + SLACK_S, f"timeout_s={DEADLINE_S} took {elapsed:.2f}s"


@pytest.mark.parametrize("split", [False, True], ids=["single", "split"])
def test_close_racing_a_call_raises_the_clients_own_error(protocol, split):
    with SilentServer() as silent:
        client = RerankClient(silent.url, protocol, timeout_s=CLIENT_TIMEOUT_S, max_rows_per_request=4)
        client._limits = ServerLimits(max_rows=64 if split else len(PASSAGES))
        call = Worker(client.rerank, "q", PASSAGES if split else PASSAGES[:4], name="rerank")
        call.start()
        deadline = time.monotonic() + 10
        while not silent.connections and time.monotonic() < deadline:  # the request is in flight
            time.sleep(0.01)
        assert silent.connections, "the call never reached the server"
        client.close()
        call.join(10)
        assert not call.is_alive(), "close() left the call waiting"
        assert isinstance(call.error, ClientClosedError), repr(call.error)
        with pytest.raises(ClientClosedError, match="closed"):
            client.rerank("q", PASSAGES[:1])


def test_pool_is_made_once_by_concurrent_first_calls(monkeypatch):
    """The worker pool is lazy; eight threads making their first split call at once must share one.
    A slow pool constructor (controlled slowness) widens the window in which an unlocked check races."""
    import rerank_client.sync as sync_module

    made = []

    class SlowPool(sync_module.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            made.append(self)
            time.sleep(0.1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sync_module, "ThreadPoolExecutor", SlowPool)
    before = set(threading.enumerate())
    with SilentServer() as silent:
        client = RerankClient(silent.url, "grpc", timeout_s=CLIENT_TIMEOUT_S, max_rows_per_request=4,
                              max_concurrency=2)
        client._limits = ServerLimits()
        barrier = threading.Barrier(8)

        def first_call() -> type:
            barrier.wait()
            try:
                client.rerank("q", PASSAGES, timeout_s=0.5)
            except DeadlineExceededError as exc:
                return type(exc)
            except ServerUnavailableError as exc:  # gRPC may end its connect attempt at that same deadline
                return type(exc)
            return type(None)

        try:
            failed = run_all([first_call] * 8)
        finally:
            client.close()
        assert len(failed) == 8 and set(failed) <= {DeadlineExceededError, ServerUnavailableError}, failed
    assert len(made) == 1, f"{len(made)} pools made"
    time.sleep(0.2)
    leaked = [t for t in threading.enumerate() if t not in before and t.name.startswith("rerank-client")]
    assert not leaked, leaked


def live(kind: type) -> int:
    gc.collect()
    return sum(issubclass(type(o), kind) for o in gc.get_objects())  # type(): no lazy attribute lookups


def test_retries_keep_one_channel(protocol):
    """Nothing listens for 1.5 s of retries: one gRPC channel (or aiohttp session) all along, which gRPC
    reconnects itself; no channel is retired per failure (it was 22 per 2 s, each kept until close())."""
    import tritonclient.grpc as grpc_sync
    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    url = f"127.0.0.1:{free_ports(1)[0]}"
    kind = grpc_aio.InferenceServerClient if protocol == "grpc" else http_aio.InferenceServerClient
    before = live(kind)

    async def go() -> int:
        async with AsyncRerankClient(url, protocol, retry_window_s=1.5, backoff_s=0.02, max_backoff_s=0.05) as client:
            with pytest.raises(ServerUnavailableError):
                await client.rerank("q", PASSAGES[:2])
            return live(kind) - before

    assert asyncio.run(go()) == 1
    if protocol == "grpc":  # the sync client too (over HTTP it replaces a failed connection: tested elsewhere)
        made = []
        with RerankClient(url, "grpc", retry_window_s=1.5, backoff_s=0.02, max_backoff_s=0.05) as client:
            original = client.settings.sync_client
            client.settings.sync_client = lambda: made.append(1) or original()  # type: ignore[method-assign]
            with pytest.raises(ServerUnavailableError):
                client.rerank("q", PASSAGES[:2])
        assert len(made) == 1, f"{len(made)} gRPC clients made for one call's retries"
        assert live(grpc_sync.InferenceServerClient) == 0, "closed with the client"


def test_a_missing_certificate_file_fails_at_once():
    with pytest.raises(ValueError, match="root_certificates file '/nonexistent/ca.pem' does not exist"):
        RerankClient("127.0.0.1:1", "grpc", ssl=True, root_certificates="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="certificate_chain file"):
        AsyncRerankClient("127.0.0.1:1", "http", ssl=True, certificate_chain="/nonexistent/chain.pem")
