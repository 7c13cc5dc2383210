"""The CPU engine step on each runtime and precision: same tensors, the reference's scores.

The default repository (tiny_repository) runs OpenVINO f32; these cover ONNX Runtime and bf16."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEST_LIMITS
from test_model_py import load_model
import fake_pb_utils as pb
from rerank_build.parity import default_cases, endpoint_scorer, reference_scorer, run_parity
from rerank_build.repository import RepositoryError, RepositorySettings, build_repository


# Two left-padded rows, as the tokenizer sends them.
IDS = np.array([[0, 0, 128000, 10, 20, 30], [128000, 5, 6, 7, 8, 9]], dtype=np.int32)
MASK = (np.arange(6) >= np.array([[2], [0]])).astype(np.int32)


@pytest.fixture(scope="module")
def onnxruntime_repository(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    settings = RepositorySettings(**{**TEST_LIMITS, "cpu_engine": "onnxruntime"})
    return build_repository(tiny_checkpoint, artifacts / "repo-onnxruntime", settings, onnx=tiny_onnx_fp32)


def test_default_engine_is_openvino_f32(tiny_repository):
    config = (tiny_repository / "engine" / "config.pbtxt").read_text()
    assert 'key: "runtime" value: { string_value: "openvino" }' in config
    assert 'key: "precision" value: { string_value: "f32" }' in config


def test_openvino_engine_step_matches_onnxruntime(onnxruntime_repository, tiny_repository):
    outputs = []
    for repo in (tiny_repository, onnxruntime_repository):
        engine = load_model(repo, "engine")
        out = engine.execute([pb.InferenceRequest({"input_ids": IDS, "attention_mask": MASK})])[0]
        assert out.error is None
        outputs.append(out.output_tensors["logits"])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)


def test_bf16_falls_back_to_f32_without_native_bf16(tiny_checkpoint, tiny_onnx_fp32, onnxruntime_repository,
                                                    artifacts, caplog):
    """A CPU without AVX512-BF16/AMX would emulate bf16 slowly: the engine warns and computes in f32."""
    settings = RepositorySettings(**{**TEST_LIMITS, "cpu_engine": "openvino", "cpu_precision": "bf16"})
    repo = build_repository(tiny_checkpoint, artifacts / "repo-bf16-fallback", settings, onnx=tiny_onnx_fp32)
    with caplog.at_level("WARNING"):
        engine = load_model(repo, "engine", cpu_has_bf16=lambda: False)
    assert "no AVX512-BF16/AMX; running OpenVINO in f32" in caplog.text
    fallback = engine.execute([pb.InferenceRequest({"input_ids": IDS, "attention_mask": MASK})])[0]
    reference = load_model(onnxruntime_repository, "engine").execute(
        [pb.InferenceRequest({"input_ids": IDS, "attention_mask": MASK})])[0]
    np.testing.assert_allclose(fallback.output_tensors["logits"], reference.output_tensors["logits"], atol=1e-4)


def test_openvino_shape_cache_is_bounded(tiny_checkpoint, tiny_onnx_fp32, tiny_repository, artifacts):
    """OpenVINO's per-shape kernel cache (5,000 shapes by default) grew the engine's memory through the
    10-minute soak; the repository bounds it, and the engine hands the bound to OpenVINO."""
    config = (tiny_repository / "engine" / "config.pbtxt").read_text()
    assert 'key: "shape_cache" value: { string_value: "500" }' in config
    settings = RepositorySettings(**{**TEST_LIMITS, "openvino_shape_cache": 7})
    repo = build_repository(tiny_checkpoint, artifacts / "repo-shape-cache", settings, onnx=tiny_onnx_fp32)
    seen = []
    load_model(repo, "engine", openvino_runner=lambda path, threads, precision, shape_cache: seen.append(shape_cache))
    assert seen == [7]
    with pytest.raises(RepositoryError, match="openvino_shape_cache must be at least 1"):
        RepositorySettings(openvino_shape_cache=0)


def test_bf16_needs_openvino():
    with pytest.raises(RepositoryError, match="bf16 needs cpu_engine openvino"):
        RepositorySettings(cpu_engine="onnxruntime", cpu_precision="bf16")
    with pytest.raises(RepositoryError, match="cpu_engine must be one of"):
        RepositorySettings(cpu_engine="tvm")


@pytest.mark.server
def test_served_with_onnxruntime_scores_as_the_reference(onnxruntime_repository, tiny_checkpoint, artifacts):
    from rerank_serving.server import TritonServer

    with TritonServer(onnxruntime_repository, log_path=artifacts / "tritonserver-onnxruntime.log") as server:
        report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), endpoint_scorer(server.grpc_url),
                            1e-4, default_cases(4, 0))
    assert report.passed, "\n".join(report.lines())


@pytest.mark.server
def test_served_bf16_scores_within_its_tolerance(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    """OpenVINO computing in bf16 (the opt-in fast CPU precision): the reference's scores within
    TOLERANCES["bf16-compute"], rankings the same up to swaps of passages closer than twice that."""
    from rerank_build.cpu_runtime import bf16_native
    from rerank_build.parity import TOLERANCES
    from rerank_serving.server import TritonServer

    if not bf16_native():
        pytest.skip("this CPU has no AVX512-BF16/AMX: the engine would fall back to f32 (tested above)")
    settings = RepositorySettings(**{**TEST_LIMITS, "cpu_engine": "openvino", "cpu_precision": "bf16"})
    repo = build_repository(tiny_checkpoint, artifacts / "repo-openvino-bf16", settings, onnx=tiny_onnx_fp32)
    with TritonServer(repo, log_path=artifacts / "tritonserver-openvino-bf16.log") as server:
        report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), endpoint_scorer(server.grpc_url),
                            TOLERANCES["bf16-compute"], default_cases(6, 0))
    print("\n".join(report.lines()))
    assert report.passed, "\n".join(report.lines())
    assert report.max_abs > 1e-3, "bf16 scored exactly like fp32: the precision hint did not take effect"


@pytest.mark.server
def test_requests_of_different_widths_share_engine_executions(server, tiny_onnx_fp32):
    """The engine's inputs are ragged: concurrent requests of other widths batch together and each
    still gets its own rows' scores (as ONNX Runtime scores each request alone)."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient

    from loadtests.stepstats import read_stats
    from rerank_build.export_onnx import ort_session

    rng = np.random.default_rng(0)
    batches = []
    for k in range(24):
        rows, width = 1 + k % 3, (8, 24, 40, 72)[k % 4]
        ids = rng.integers(1000, 30000, size=(rows, width)).astype(np.int32)
        mask = (np.arange(width) >= rng.integers(0, width - 2, size=(rows, 1))).astype(np.int32)
        ids[mask == 0] = 0
        batches.append((ids, mask))
    session = ort_session(tiny_onnx_fp32)
    expected = [session.run(["logits"], {"input_ids": i, "attention_mask": m})[0] for i, m in batches]

    def infer(batch):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [grpcclient.InferInput("input_ids", list(batch[0].shape), "INT32"),
                  grpcclient.InferInput("attention_mask", list(batch[1].shape), "INT32")]
        inputs[0].set_data_from_numpy(batch[0])
        inputs[1].set_data_from_numpy(batch[1])
        try:
            return client.infer("engine", inputs).as_numpy("logits")
        finally:
            client.close()

    stats = grpcclient.InferenceServerClient(server.grpc_url)
    before = read_stats(stats, ("engine",))["engine"]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(infer, batches))
    after = read_stats(stats, ("engine",))["engine"]
    stats.close()
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-4)
    assert after.requests - before.requests == len(batches)
