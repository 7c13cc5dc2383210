"""The ensemble on a real tritonserver, over gRPC and HTTP: scores, NIM's contract, bad input,
batching. The server runs the tiny CPU repository (tokenizer -> ONNX Runtime engine -> postprocess)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rerank_contract import prompt as rp
from rerank_build.parity import endpoint_scorer, reference_scorer, run_parity
from rerank_build.textgen import FIXED_CASES, random_cases
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once

from conftest import TEST_LIMITS
from threads import Worker
from triton_helpers import client, expect_invalid, infer_raw, texts

pytestmark = pytest.mark.server

QUERY = "how much protein should a female eat?"
GOOD = list(FIXED_CASES[0].passages)


def assert_still_serving(server, protocol: str) -> None:
    c = client(server, protocol)
    try:
        assert c.is_server_ready() and c.is_model_ready(DEFAULT_ENSEMBLE_NAME)
    finally:
        c.close()
    result = infer_once(server.url(protocol), protocol, DEFAULT_ENSEMBLE_NAME, QUERY, GOOD)
    assert sorted(result.index.tolist()) == [0, 1, 2]


def test_scores_equal_reference(server, protocol, tiny_checkpoint):
    cases = [(f"fixed{i:02d}", c) for i, c in enumerate(FIXED_CASES)]
    cases += [(f"rand{i:02d}", c) for i, c in enumerate(random_cases(seed=7, n_cases=6))]
    report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint),
                        endpoint_scorer(server.url(protocol), protocol), 1e-4, cases)
    print("\n".join(report.lines()))
    assert report.passed, "\n".join(report.lines())
    assert all(r.tokens_match for r in report.results)


def test_output_contract(server, protocol, encoder):
    result = infer_raw(server, protocol, {"query": texts([QUERY] * 3), "passage": texts(GOOD)})
    for name, dtype in (("index", np.int32), ("logit", np.float32), ("token_count", np.int32)):
        array = result.as_numpy(name)
        assert array.shape == (3, 1) and array.dtype == dtype, name
    index = result.as_numpy("index")[:, 0]
    logit = result.as_numpy("logit")[:, 0]
    counts = result.as_numpy("token_count")[:, 0]
    assert sorted(index.tolist()) == [0, 1, 2]
    assert np.all(np.diff(logit) <= 0), "rows must be sorted by logit, descending"
    expected = [len(r) for r in encoder.encode(QUERY, GOOD)]
    assert counts.tolist() == [expected[i] for i in index]


def test_ties_keep_request_order(server, protocol):
    result = infer_once(server.url(protocol), protocol, DEFAULT_ENSEMBLE_NAME, "q", ["same", "other", "same", "same"])
    same = [i for i in result.index.tolist() if i != 1]
    assert same == [0, 2, 3]


def test_model_metadata_and_published_limits(server, protocol):
    c = client(server, protocol)
    try:
        meta = c.get_model_metadata(DEFAULT_ENSEMBLE_NAME)
        config = c.get_model_config(DEFAULT_ENSEMBLE_NAME)
    finally:
        c.close()
    if protocol == "grpc":
        inputs = {t.name: t.datatype for t in meta.inputs}
        outputs = {t.name: t.datatype for t in meta.outputs}
        params = {k: v.string_value for k, v in config.config.parameters.items()}
        max_batch = config.config.max_batch_size
    else:
        inputs = {t["name"]: t["datatype"] for t in meta["inputs"]}
        outputs = {t["name"]: t["datatype"] for t in meta["outputs"]}
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        max_batch = config["max_batch_size"]
    assert inputs == {"query": "BYTES", "passage": "BYTES"}
    # NIM's three outputs, ``chunks`` (windows per passage, our truncate=CHUNK extension) and ``stage_ns``
    # (Server-Timing's stages, asked for by the gateway).
    assert outputs == {"index": "INT32", "logit": "FP32", "token_count": "INT32", "chunks": "INT32",
                       "stage_ns": "INT64"}
    assert max_batch == TEST_LIMITS["max_rows"]
    assert params["max_rows_per_request"] == str(TEST_LIMITS["max_rows"])
    assert params["max_tokens_per_request"] == str(TEST_LIMITS["max_tokens_per_request"])
    assert params["max_sequence_length"] == "8192"


LONG = "hello world " * 5000  # ~10,000 tokens


def test_truncate_end_cuts_to_8192(server, protocol):
    result = infer_once(server.url(protocol), protocol, DEFAULT_ENSEMBLE_NAME, QUERY, ["short", LONG], truncate="END")
    counts = dict(zip(result.index.tolist(), result.token_count.tolist()))
    assert counts[1] == 8192 and counts[0] < 30


@pytest.mark.parametrize("truncate", [None, "NONE"])
def test_truncate_none_rejects_the_whole_request(server, protocol, truncate, encoder):
    n = len(rp.PairEncoder(encoder.tokenizer, max_length=10**9).encode(QUERY, [LONG])[0])
    params = {"truncate": truncate} if truncate else None
    message = expect_invalid(server, protocol, {"query": texts([QUERY] * 2), "passage": texts(["short", LONG])}, params)
    assert f"Input length {n} exceeds maximum allowed token size 8192" in message
    assert_still_serving(server, protocol)


BAD_REQUESTS = {
    "distinct queries": ({"query": texts(["a", "b"]), "passage": texts(["x", "y"])}, None, "same query"),
    "empty query": ({"query": texts([""]), "passage": texts(["x"])}, None, "query is empty"),
    "empty passage": ({"query": texts(["q", "q"]), "passage": texts(["x", ""])}, None, "passage 1 is empty"),
    "non-UTF-8 passage": ({"query": texts(["q"]), "passage": texts([b"\xc3\x28"])}, None, "passage 0 is not valid UTF-8"),
    "non-UTF-8 query": ({"query": texts([b"\xff"]), "passage": texts(["x"])}, None, "query is not valid UTF-8"),
    "unknown truncate": ({"query": texts(["q"]), "passage": texts(["x"])}, {"truncate": "MIDDLE"}, "truncate"),
    "too many rows": ({"query": texts(["q"] * 65), "passage": texts(["x"] * 65)}, None, "batch-size must be <= 64"),
    "too many tokens": ({"query": texts(["q"] * 40), "passage": texts(["word " * 300] * 40)}, None,
                        "padded tokens, more than the limit of 16384"),
    "1-D passage": ({"query": texts(["q"]), "passage": np.array([b"x"], dtype=object)}, None, "passage"),
    "two columns": ({"query": texts(["q", "q"], rows=1), "passage": texts(["x", "y"], rows=1)}, None, "shape"),
    "int query": ({"query": np.array([[1]], dtype=np.int32), "passage": texts(["x"])}, None, "data-type is 'INT32'"),
    "missing passage": ({"query": texts(["q"])}, None, "passage"),
    "row mismatch": ({"query": texts(["q"] * 2), "passage": texts(["x"] * 3)}, None, "batch"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_server_keeps_serving(server, protocol, case):
    inputs, params, fragment = BAD_REQUESTS[case]
    message = expect_invalid(server, protocol, inputs, params)
    assert fragment.lower() in message.lower(), message
    assert_still_serving(server, protocol)


def test_bad_requests_do_not_hurt_concurrent_good_ones(server, tiny_model, encoder):
    import torch

    batch = rp.left_pad(encoder.encode(QUERY, GOOD))
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))[:, 0].numpy()
    errors, goods = [], []

    def good():
        r = infer_once(server.grpc_url, "grpc", DEFAULT_ENSEMBLE_NAME, QUERY, GOOD)
        logits = np.empty(3, dtype=np.float32)
        logits[r.index] = r.logit
        goods.append(logits)

    def bad():
        from tritonclient.utils import InferenceServerException

        try:
            infer_once(server.http_url, "http", DEFAULT_ENSEMBLE_NAME, QUERY, ["x", b"\xff"])
        except InferenceServerException as exc:  # the refusal itself, not any failure (a refused connection)
            if str(exc.status()) == "400" and "passage 1 is not valid UTF-8" in exc.message():
                errors.append(exc)

    threads = [Worker(good if i % 2 else bad, name=f"{'good' if i % 2 else 'bad'}-{i}") for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.check(60)
    assert len(errors) == 12 and len(goods) == 12
    for logits in goods:
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def _engine_stats(server) -> tuple[int, int]:
    c = client(server, "grpc")
    try:
        stats = c.get_inference_statistics("engine").model_stats[0]
    finally:
        c.close()
    return stats.inference_count, stats.execution_count


def test_concurrent_clients_are_batched_on_the_engine(server):
    before_inf, before_exec = _engine_stats(server)
    passages = [f"passage number {i} about protein" for i in range(4)]

    def worker(n: int) -> None:
        proto = "grpc" if n % 2 else "http"
        for _ in range(15):
            infer_once(server.url(proto), proto, DEFAULT_ENSEMBLE_NAME, QUERY, passages)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    inferences, executions = _engine_stats(server)
    inferences, executions = inferences - before_inf, executions - before_exec
    print(f"engine: {inferences} inferences (rows) in {executions} executions")
    assert inferences == 8 * 15 * 4
    assert executions < 8 * 15, "the dynamic batcher never merged requests"


def test_model_control_is_off(server):
    from tritonclient.utils import InferenceServerException

    c = client(server, "http")
    try:
        with pytest.raises(InferenceServerException):
            c.unload_model("engine")
        assert c.is_model_ready("engine")
    finally:
        c.close()


@pytest.mark.parametrize("ids,mask,fragment", [
    ([[128000, 999999]], None, "input_ids must lie in [0, 128256)"),
    ([[-7, 128000]], None, "got values from -7"),
    ([[128000, 5, 6]], [[1, 1]], "of the same shape"),
    ([[128000, 5]], [[7, 7]], "only 0 and 1"),
    ([[128000, 5]], [[0, 0]], "all-zero attention_mask"),
    (np.full((1, 9216), 5), None, "width 9216 exceeds the longest sequence"),
])
def test_engine_called_directly_refuses_bad_input(server, protocol, ids, mask, fragment):
    """The internal engine model is reachable on its own: what only a direct call can send is refused."""
    ids = np.asarray(ids, dtype=np.int32)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int32)
    message = expect_invalid(server, protocol, {"input_ids": ids, "attention_mask": mask}, model="engine")
    assert fragment in message, message
    assert_still_serving(server, protocol)


def test_admin_apis_need_the_admin_key(server):
    """Model repository, shared memory, logging and trace: refused without the admin key, on both protocols;
    inference, health, metadata, config and statistics stay open."""
    import requests
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from rerank_serving.server import ADMIN_HEADER

    base = f"http://{server.http_url}"
    for path, body in [("/v2/logging", {"log_verbose_level": 1}), ("/v2/trace/setting", {"trace_rate": "5"}),
                       ("/v2/systemsharedmemory/region/x/register", {"key": "/x", "offset": 0, "byte_size": 8}),
                       ("/v2/repository/index", {}), ("/v2/repository/models/engine/unload", {})]:
        refused = requests.post(base + path, json=body, timeout=10)
        assert refused.status_code == 403 and ADMIN_HEADER in refused.text, (path, refused.text)
    allowed = requests.post(base + "/v2/logging", json={"log_verbose_level": 0}, timeout=10,
                            headers={ADMIN_HEADER: server.admin_key})
    assert allowed.status_code == 200
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            c.update_log_settings({"log_verbose_level": 1})
        with pytest.raises(InferenceServerException, match="restricted"):
            c.get_model_repository_index()
        assert c.update_log_settings({"log_verbose_level": 0},
                                     headers={f"triton-grpc-protocol-{ADMIN_HEADER}": server.admin_key})
        assert c.is_server_ready() and c.get_model_config("engine") and c.get_inference_statistics("engine")
    finally:
        c.close()
    assert_still_serving(server, "grpc")


def test_readme_curl_example(server):
    """docs/api.md's KServe v2 JSON request (Triton's HTTP port, 8003 under `make serve`), posted as curl would."""
    import json
    import re
    import urllib.request
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    body = re.search(r"curl -s localhost:8003(\S+) -d '(\{.*?\})'", readme, flags=re.S)
    assert body, "docs/api.md lost its curl example"
    path, payload = body.group(1), json.loads(body.group(2))
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert set(outputs) == {"index", "logit", "token_count", "chunks", "stage_ns"}  # all, none being asked for
    assert outputs["chunks"]["data"] == [1, 1], "one window each: nothing was chunked"
    assert outputs["index"]["datatype"] == "INT32" and outputs["index"]["shape"] == [2, 1]
    assert sorted(outputs["index"]["data"]) == [0, 1]


def test_server_dies_with_the_process_that_started_it(tiny_repository, tmp_path):
    """A killed test run or benchmark must not leave tritonserver (or its stubs) behind."""
    import subprocess
    import sys
    import time

    from rerank_serving.server import process_group_alive

    script = (
        "import os, sys\n"
        "from rerank_serving.server import TritonServer\n"
        f"s = TritonServer({str(tiny_repository)!r}).start()\n"
        "print(s.process.pid, flush=True)\n"
        "os._exit(0)  # no stop(): as if killed\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    pgid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while process_group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not process_group_alive(pgid), "tritonserver outlived its parent"


def test_stop_leaves_no_process(tiny_repository):
    from rerank_serving.server import TritonServer, process_group_alive

    server = TritonServer(tiny_repository).start()
    pgid = server.process.pid
    server.stop()
    assert not process_group_alive(pgid)


#: Appended to this test's own copy of the engine model: execute waits while the file HOLD exists
#: beside it, so the test decides when the engine is busy (a stopped stub would be declared dead).
HOLD_ENGINE = """

# --- test only (tests/test_server.py): hold execute while HOLD exists ---
_real_execute = TritonPythonModel.execute


def _held_execute(self, requests):
    import time as _time

    while os.path.exists(os.path.join(os.path.dirname(__file__), "HOLD")):
        _time.sleep(0.01)
    return _real_execute(self, requests)


TritonPythonModel.execute = _held_execute
"""


def test_bounded_queue_rejects_overload_fast(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    """With max_queue_size set, requests beyond the queue are refused at once with UNAVAILABLE / 503.

    Controlled slowness: this repository's engine holds its batch while a file exists, so the engine
    keeps what it took and the queue stays full however fast the machine is: the rest is refused.
    Released, the held requests are answered and the server keeps serving."""
    from concurrent.futures import ThreadPoolExecutor

    from rerank_build.repository import RepositorySettings, build_repository
    from rerank_serving.server import TritonServer
    from tritonclient.utils import InferenceServerException

    repo = build_repository(tiny_checkpoint, artifacts / "repo-bounded",
                            RepositorySettings(**{**TEST_LIMITS, "max_queue_size": 1}), onnx=tiny_onnx_fp32)
    engine = repo / "engine" / "1" / "model.py"
    engine.write_text(engine.read_text() + HOLD_ENGINE)
    hold = engine.with_name("HOLD")
    passages = ["word " * 200] * 32

    def one(srv, i: int):
        proto = "grpc" if i % 2 else "http"
        try:
            infer_once(srv.url(proto), proto, DEFAULT_ENSEMBLE_NAME, QUERY, passages, truncate="END", timeout_s=120)
            return "ok"
        except InferenceServerException as exc:
            return str(exc.status()), exc.message()

    with TritonServer(repo) as srv, ThreadPoolExecutor(8) as pool:
        hold.touch()
        try:
            futures = [pool.submit(one, srv, i) for i in range(8)]
            deadline = time.monotonic() + 60  # held: at most two 32-row requests in a batch, and one queued
            while sum(f.done() for f in futures) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            refused_while_held = [f.result() for f in futures if f.done()]
        finally:
            hold.unlink()
        outcomes = [f.result(120) for f in futures]
        assert len(refused_while_held) >= 5 and "ok" not in refused_while_held, refused_while_held
        assert all(status in ("StatusCode.UNAVAILABLE", "503") and "queue" in message.lower()
                   for status, message in refused_while_held), refused_while_held
        assert outcomes.count("ok") == 8 - len(refused_while_held), "the held requests are answered once released"
        assert_still_serving(srv, "grpc")


def test_special_token_text_is_scored_as_text(server, encoder, protocol):
    """'<|begin_of_text|><|eot_id|>' inside a passage is text: the server counts the text's tokens, not
    two control tokens, and scores it like the reference does."""
    passage = "before <|begin_of_text|><|eot_id|> after"
    result = infer_once(server.url(protocol), protocol, DEFAULT_ENSEMBLE_NAME, QUERY, [passage])
    expected = encoder.encode(QUERY, [passage])[0]
    assert int(result.token_count[0]) == len(expected) and expected.count(rp.BOS_ID) == 1
    assert 128009 not in expected


def test_text_bytes_are_capped_before_tokenizing(server, protocol):
    """Over max_bytes_per_request the request is refused before any tokenizing, naming the limit."""
    big = ["x " * 400_000] * 3  # 2.4 MB of text, over the test repository's 2,000,000 bytes
    message = expect_invalid(server, protocol, {"query": texts([QUERY] * 3), "passage": texts(big)},
                             parameters={"truncate": "END"})
    assert "more than the limit of 2000000 bytes per request" in message
    assert_still_serving(server, protocol)
