"""Two tritonserver replicas behind one gateway, on one machine: kill one under steady load.

The gateway's client reaches both through one multi-endpoint gRPC target (round robin; a replica
whose connection fails is skipped, and a request it failed is retried on the other). No request may
fail and no answer may be wrong; the killed replica is started again and must take requests again.
Two replicas on 2 cores add no throughput: this measures failover, not scaling.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from gateway_helpers import expected_order
from threads import Worker
from rerank_contract.ports import Ports
from rerank_serving.server import free_ports
from rerank_serving.stack import ServingStack
from rerank_client import RerankClient
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME
from triton_helpers import ensemble_answer

pytestmark = [pytest.mark.server, pytest.mark.slow]

QUERY = "what keeps a lighthouse lamp turning?"
PASSAGES = ["A clockwork mechanism wound by the keeper turned the lens.", "Bread rises because of yeast.",
            "Lighthouse lenses float on a bath of mercury to turn easily.", "The tide comes in twice a day."]


def served(replica) -> int:
    """Requests the replica's ensemble has answered (Triton's own statistics)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(replica.grpc_url)
    try:
        stats = client.get_inference_statistics(DEFAULT_ENSEMBLE_NAME, as_json=True)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))
    finally:
        client.close()


def test_one_replica_killed_under_load(tiny_repository, server, artifacts):
    order = expected_order(ensemble_answer(server, QUERY, PASSAGES)[0])
    # One call, so that all twelve ports differ (separate calls may hand out a port again: it happened,
    # and both replicas reported their HTTP server on the same port).
    ports = free_ports(12)
    stack = ServingStack(tiny_repository, Ports(*ports[:4]), log_dir=artifacts / "failover",
                         gateway_args=["--no-access-log", "--no-cache"], replicas=2,  # REST reaches Triton
                         replica_port_list=[Ports(*ports[4:8]), Ports(*ports[8:12])])
    outcomes: dict[str, Counter] = {"rest": Counter(), "client": Counter()}
    wrong: list[str] = []
    stop = threading.Event()

    def rest_flow() -> None:
        session = requests.Session()
        body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]}
        while not stop.is_set():
            answer = session.post(stack.rest_url + "/v1/ranking", json=body, timeout=60)
            outcomes["rest"][str(answer.status_code)] += 1
            if answer.status_code == 200 and [r["index"] for r in answer.json()["rankings"]] != order:
                wrong.append(answer.text)

    def client_flow() -> None:
        target = ",".join(t.grpc_url for t in stack.tritons)  # the client library's multi-endpoint URL
        with RerankClient(target, max_backoff_s=0.5, retry_window_s=30) as client:
            while not stop.is_set():
                try:
                    ranked = [r.index for r in client.rerank(QUERY, PASSAGES)]
                    outcomes["client"]["ok"] += 1
                    if ranked != order:
                        wrong.append(str(ranked))
                except Exception as exc:  # noqa: BLE001 - counted, then asserted on
                    outcomes["client"][type(exc).__name__] += 1

    with stack:
        first, second = stack.tritons
        threads = [Worker(rest_flow, name="rest"), Worker(client_flow, name="client")]
        for t in threads:
            t.start()
        try:
            time.sleep(3.0)
            assert served(first) > 0 and served(second) > 0, "requests are spread over both replicas"
            first.process.kill()  # kill -9, as a node loss would
            killed_at = time.monotonic()
            first.process.wait(10)
            before = served(second)
            time.sleep(3.0)
            assert served(second) > before, "the surviving replica takes the load"
            first.stop()
            first.start(120)  # the replica returns on the same ports
            back_at = time.monotonic()
            deadline = back_at + 60
            while served(first) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            serving_again = time.monotonic()
            assert served(first) > 0, "the returning replica is taken back"
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    for t in threads:
        t.check(0)  # a flow whose thread died (an exception, a refused connection) fails the test
    print(f"\n[failover] REST via gateway: {dict(outcomes['rest'])}; client library (2 endpoints): "
          f"{dict(outcomes['client'])}; replica down for {back_at - killed_at:.1f}s; serving again "
          f"{serving_again - back_at:.1f}s after it was ready")
    assert not wrong, wrong[:3]
    assert set(outcomes["rest"]) == {"200"}, outcomes["rest"]
    assert set(outcomes["client"]) == {"ok"}, outcomes["client"]
