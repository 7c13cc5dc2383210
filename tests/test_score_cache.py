"""The gateway's exact score cache: unit rules, then against the real stack (gateway -> gRPC -> tritonserver).

What a cache must never do is answer with a score the model would not give now: every key field is
tested to separate entries (model identity, truncation mode, CHUNK's overlap, query, passage), a hit is
compared bit for bit with the fresh score, and a server restarted with another checkpoint is asked the
same question again.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway_helpers import distinct_passages, get, post
from rerank_gateway.score_cache import ENTRY_BYTES, Entry, ScoreCache, request_keys

QUERY = "how much protein should a female eat?"


def nim(passages, query=QUERY, **extra) -> dict:
    return {"query": {"text": query}, "passages": [{"text": p} for p in passages], **extra}


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def cache_counts(gw) -> tuple[float, float, float, float]:
    """(hits, misses, entries, bytes) from the gateway's /metrics."""
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in get(gw, "/metrics").text.splitlines()
               if line and not line.startswith("#")}
    return (samples.get("rerank_gateway_cache_hits_total", 0.0), samples.get("rerank_gateway_cache_misses_total", 0.0),
            samples["rerank_gateway_cache_entries"], samples["rerank_gateway_cache_bytes"])


def by_index(answer: dict) -> dict[int, float]:
    return {r["index"]: r["logit"] for r in answer["rankings"]}


# --- unit: keys, values, bound -------------------------------------------------------------------

def test_an_entry_keeps_every_float32_bit():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(1000).astype(np.float32) * 30,
                             np.array([0.0, -0.0, 1e-45, -3.4e38, 3.4e38], dtype=np.float32)])
    for v in values:
        entry = Entry(float(v), float(np.float32(0.25)), 8192, 3)
        back = Entry.unpack(entry.pack())
        assert bits(back.logit) == bits(float(v)) and back == entry


def test_every_field_of_the_key_separates_entries():
    base = dict(identity="a" * 32, truncate="END", chunk_overlap=None, query="q", passages=["p"])
    variants = [dict(identity="b" * 32), dict(truncate="NONE"), dict(truncate="CHUNK", chunk_overlap=256),
                dict(truncate="CHUNK", chunk_overlap=255), dict(query="q "), dict(passages=["p "])]
    keys = {request_keys(**base)[0]} | {request_keys(**{**base, **v})[0] for v in variants}
    assert len(keys) == 1 + len(variants)
    # Length-prefixed fields: moving a character between query and passage is another key.
    assert request_keys("x", "END", None, "ab", ["c"]) != request_keys("x", "END", None, "a", ["bc"])
    assert request_keys(**base) == request_keys(**base), "deterministic"


def test_least_recently_used_goes_first_and_the_bound_holds():
    cache = ScoreCache(3 * ENTRY_BYTES)
    keys = request_keys("m", "END", None, "q", [str(i) for i in range(5)])
    for i in range(3):
        cache.put(keys[i], Entry(float(i), 0.5, 10, 1))
    assert cache.get(keys[0]) is not None  # 0 is now the most recent: 1 goes first
    cache.put(keys[3], Entry(3.0, 0.5, 10, 1))
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    for key in keys:
        cache.put(key, Entry(1.0, 0.5, 10, 1))
        assert len(cache) <= 3 and cache.bytes <= 3 * ENTRY_BYTES
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    with pytest.raises(ValueError, match="at least"):
        ScoreCache(ENTRY_BYTES - 1)


def test_the_accounted_entry_size_is_an_upper_bound_of_the_real_one():
    """tracemalloc measures what an entry really costs; ENTRY_BYTES must not undercount it, or the
    byte bound would not hold."""
    n = 20_000
    cache = ScoreCache(n * ENTRY_BYTES)
    passages = [f"passage {i}" for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = request_keys("m" * 32, "END", None, QUERY, passages)  # the keys the cache keeps, counted too
        for i, key in enumerate(keys):
            cache.put(key, Entry(float(i) / 7, 0.5, 1000 + i, 1))
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert len(cache) == n
    assert per_entry <= ENTRY_BYTES, f"an entry costs {per_entry:.0f} bytes, more than the {ENTRY_BYTES} accounted"


# --- against the real stack ----------------------------------------------------------------------

def wait_for_triton(gw, timeout_s: float = 60.0) -> None:
    """Until the gateway's readiness check finds Triton itself ready (not only within the ride-through):
    that check is where the gateway reads the served model's identity."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if get(gw, "/v1/health/ready").json().get("message") == "Service is ready.":
            return
        time.sleep(0.1)
    raise AssertionError("the gateway never saw Triton ready again")


@pytest.mark.server
def test_a_hit_is_the_fresh_score_bit_for_bit_and_counts_one_per_passage(start_gateway):
    cached, uncached = start_gateway(), start_gateway("--no-cache")
    query, passages = distinct_passages(12, seed=101)
    first = post(cached, "/v1/ranking", nim(passages, query)).json()
    h0, m0, entries, _ = cache_counts(cached)
    assert (m0, entries) == (12, 12), "the first request misses every passage and stores each"
    second = post(cached, "/v1/ranking", nim(passages, query)).json()
    h1, m1, _, _ = cache_counts(cached)
    assert (h1 - h0, m1 - m0) == (12, 0), "the same request again: exactly one hit per passage"
    assert second == first, "identical rankings, usage included"
    assert [bits(r["logit"]) for r in second["rankings"]] == [bits(r["logit"]) for r in first["rankings"]], \
        "a hit is the fresh score Triton gave, bit for bit"
    # A second fresh computation is the same score to rounding only: the client library sends the length
    # groups of a request concurrently, and the engine may batch their rows differently each time.
    fresh = by_index(post(uncached, "/v1/ranking", nim(passages, query)).json())
    np.testing.assert_allclose([fresh[i] for i in range(12)], [by_index(second)[i] for i in range(12)], atol=1e-5)
    assert cache_counts(uncached)[:3] == (0, 0, 0), "--no-cache: no lookups, no entries"

    changed = passages[:5] + ["a passage nobody sent before"] + passages[6:]
    third = post(cached, "/v1/ranking", nim(changed, query)).json()
    h2, m2, entries, size = cache_counts(cached)
    assert (h2 - h1, m2 - m1) == (11, 1), "one passage changed: one hit fewer"
    assert (entries, size) == (13, 13 * ENTRY_BYTES)
    assert {i: bits(v) for i, v in by_index(third).items() if i != 5} == \
        {i: bits(v) for i, v in by_index(first).items() if i != 5}
    logits = [r["logit"] for r in third["rankings"]]
    assert logits == sorted(logits, reverse=True), "hits and fresh scores ranked together"


@pytest.mark.server
def test_truncation_modes_and_chunk_overlaps_never_share_an_entry(start_gateway):
    gw = start_gateway()
    query, passages = distinct_passages(6, seed=102)
    calls = [dict(truncate="END"), dict(truncate="NONE"), dict(truncate="CHUNK"),
             dict(truncate="CHUNK", chunk_overlap=16), dict(truncate="end")]  # "end" is END: the same entries
    seen = []
    for extra in calls:
        before = cache_counts(gw)
        assert post(gw, "/v1/ranking", nim(passages, query, **extra)).status_code == 200
        after = cache_counts(gw)
        seen.append((after[0] - before[0], after[1] - before[1]))
    assert seen == [(0, 6), (0, 6), (0, 6), (0, 6), (6, 0)]
    # CHUNK's default overlap written out is the same key as leaving it out.
    default_overlap = min(256, 8192 // 4)
    before = cache_counts(gw)
    post(gw, "/v1/ranking", nim(passages, query, truncate="CHUNK", chunk_overlap=default_overlap))
    assert cache_counts(gw)[0] - before[0] == 6


@pytest.mark.server
def test_the_byte_bound_holds_under_concurrent_load(start_gateway):
    bound = 40 * ENTRY_BYTES
    gw = start_gateway("--cache-bytes", str(bound))
    rng = random.Random(7)
    query, pool = distinct_passages(200, seed=103)
    peaks = []

    def one(i: int) -> int:
        return post(gw, "/v1/ranking", nim(rng.sample(pool, 16), query)).status_code

    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            peaks.append(cache_counts(gw)[2:])

    with ThreadPoolExecutor(6) as executor:
        watcher = executor.submit(watch)
        try:
            statuses = list(executor.map(one, range(40)))
        finally:
            done.set()
        watcher.result(30)  # its exceptions are the test's
    peaks.append(cache_counts(gw)[2:])
    assert statuses == [200] * 40 and len(peaks) > 1
    hits, misses, entries, size = cache_counts(gw)
    assert hits + misses == 40 * 16 and misses > 40, "the pool is larger than the cache: entries are evicted"
    assert (entries, size) == (40, bound), "full, and never past the bound"
    assert all(e <= 40 and b <= bound for e, b in peaks), max(peaks)


@pytest.fixture(scope="module")
def other_repository(tmp_path_factory):
    """The test repository built from another checkpoint (another random seed): another model."""
    from rerank_build.checkpoint import write_random_checkpoint
    from rerank_build.repository import RepositorySettings, build_repository
    from conftest import TEST_LIMITS

    tmp = tmp_path_factory.mktemp("other-model")
    return build_repository(write_random_checkpoint("tiny", tmp / "ckpt-1", seed=1), tmp / "repo-1",
                            RepositorySettings(**TEST_LIMITS))


class SwitchingProxy:
    """A TCP proxy whose backend can be switched: the gateway keeps one address while the model behind it
    changes, with no failure and no readiness check for it to notice (only its fingerprint re-read)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self._server.getsockname()[1]}"

    def switch(self, port: int) -> None:
        """New connections go to ``port``; the open ones are closed (gRPC reconnects on its next call)."""
        self.port = port
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.port))
            except OSError:  # closed
                return
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:  # one side closed (a switch): the other goes too
            pass
        for sock in (source, sink):
            sock.close()

    def __enter__(self) -> "SwitchingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        self.switch(self.port)
        self._thread.join(5)


@pytest.mark.server
def test_a_model_swapped_behind_the_same_address_is_never_answered_from_the_old_cache(server, other_repository,
                                                                                     tmp_path):
    """The gateway's Triton address starts serving another model with nothing failing in between (a proxy
    switches backends between requests): the fingerprint, read again once a second, empties the cache."""
    from rerank_serving.server import TritonServer, free_ports
    from rerank_serving.stack import GatewayProcess
    from rerank_gateway.scoring import IDENTITY_TTL_S
    from triton_helpers import ensemble_answer

    query, passages = distinct_passages(8, seed=105)
    with TritonServer(other_repository, log_path=tmp_path / "triton-other.log").start(180) as other, \
            SwitchingProxy(server.ports.grpc) as proxy, \
            GatewayProcess(proxy.url, port=free_ports(1)[0], log_path=tmp_path / "gateway.log") as gw:
        gw.wait_ready(60)
        old = by_index(post(gw, "/v1/ranking", nim(passages, query)).json())
        assert by_index(post(gw, "/v1/ranking", nim(passages, query)).json()) == old
        assert cache_counts(gw)[:2] == (8, 8)
        proxy.switch(other.ports.grpc)
        time.sleep(IDENTITY_TTL_S + 0.5)
        new = by_index(post(gw, "/v1/ranking", nim(passages, query)).json())
        hits, _, entries, _ = cache_counts(gw)
        expected_new, _ = ensemble_answer(other, query, passages, truncate="NONE")
    assert hits == 8, "no hit once the model changed"
    np.testing.assert_allclose([new[i] for i in range(8)], expected_new, atol=1e-5)
    assert max(abs(new[i] - old[i]) for i in range(8)) > 1e-2, "the two models score differently"


@pytest.mark.server
def test_a_new_checkpoint_is_never_answered_from_the_old_cache(tiny_repository, other_repository, tmp_path):
    """Triton restarted on the same ports with another checkpoint (another random seed): the gateway
    reads the new model's fingerprint and scores every pair again, giving the new model's scores."""
    from rerank_serving.server import TritonServer, free_ports, free_stack_ports
    from rerank_serving.stack import GatewayProcess
    from triton_helpers import ensemble_answer

    other = other_repository
    fingerprints = {path.read_text().split('"model_fingerprint" value: { string_value: "')[1][:32]
                    for path in (tiny_repository.glob("*/config.pbtxt")) if "model_fingerprint" in path.read_text()}
    fingerprints |= {path.read_text().split('"model_fingerprint" value: { string_value: "')[1][:32]
                     for path in other.glob("*/config.pbtxt") if "model_fingerprint" in path.read_text()}
    assert len(fingerprints) == 2, "two checkpoints, two identities"

    ports = free_stack_ports()
    query, passages = distinct_passages(8, seed=104)
    triton = TritonServer(tiny_repository, ports=ports, log_path=tmp_path / "triton-0.log").start(180)
    with GatewayProcess(triton.grpc_url, port=free_ports(1)[0], log_path=tmp_path / "gateway.log") as gw:
        try:
            gw.wait_ready(60)
            old = by_index(post(gw, "/v1/ranking", nim(passages, query)).json())
            post(gw, "/v1/ranking", nim(passages, query))
            assert cache_counts(gw)[:2] == (8, 8)
            expected_old, _ = ensemble_answer(triton, query, passages, truncate="NONE")
        finally:
            triton.stop()
        triton = TritonServer(other, ports=ports, log_path=tmp_path / "triton-1.log").start(180)
        try:
            wait_for_triton(gw)
            new = by_index(post(gw, "/v1/ranking", nim(passages, query)).json())
            hits, misses, entries, _ = cache_counts(gw)
            expected_new, _ = ensemble_answer(triton, query, passages, truncate="NONE")
        finally:
            triton.stop()
    assert (hits, misses, entries) == (8, 16, 8), "no hit after the change: every pair scored again"
    np.testing.assert_allclose([old[i] for i in range(8)], expected_old, atol=1e-5)
    np.testing.assert_allclose([new[i] for i in range(8)], expected_new, atol=1e-5)
    assert np.abs(expected_new - expected_old).max() > 1e-2, "the two checkpoints score differently"
