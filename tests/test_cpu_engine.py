"""The CPU engine step on each runtime and precision: same tensors, the reference's scores.

The tests' repository (tiny_repository) runs OpenVINO f32; these cover ONNX Runtime, bf16 (the linear
layers in bf16, the rest in fp32) and the default, ``auto`` (bf16 where the CPU has AVX512-BF16/AMX)."""

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


def test_default_engine_is_openvino_with_auto_precision(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    assert RepositorySettings().cpu_engine == "openvino" and RepositorySettings().cpu_precision == "auto"
    repo = build_repository(tiny_checkpoint, artifacts / "repo-default-precision", RepositorySettings(**{
        k: v for k, v in TEST_LIMITS.items() if k != "cpu_precision"}), onnx=tiny_onnx_fp32)
    config = (repo / "engine" / "config.pbtxt").read_text()
    assert 'key: "runtime" value: { string_value: "openvino" }' in config
    assert 'key: "precision" value: { string_value: "auto" }' in config


@pytest.mark.parametrize("setting,native,expected", [
    ("auto", True, "bf16"), ("auto", False, "f32"), ("bf16", True, "bf16"), ("f32", True, "f32")])
def test_engine_resolves_its_precision_on_the_serving_cpu(tiny_checkpoint, tiny_onnx_fp32, artifacts, setting,
                                                          native, expected):
    """auto = bf16 where the CPU computes it natively, else f32; decided when the engine loads (the
    repository may be built on another machine)."""
    settings = RepositorySettings(**{**TEST_LIMITS, "cpu_precision": setting})
    repo = build_repository(tiny_checkpoint, artifacts / f"repo-precision-{setting}", settings, onnx=tiny_onnx_fp32,
                            reuse=True)
    seen = []
    load_model(repo, "engine", cpu_has_bf16=lambda: native,
               openvino_runner=lambda path, threads, precision, shape_cache: seen.append(precision))
    assert seen == [expected]


def test_bf16_runs_only_the_linear_layers_in_bf16(tiny_onnx_fp32):
    """The graph rewrite: q, k, v, o, gate, up and down of every layer take bf16 inputs, and between gate/up
    and down the MLP's SiLU and product stay bf16; the score head, the norms, RoPE, the attention with its
    softmax, the residual adds and the pooling stay fp32. Where the CPU computes bf16, the compiled model
    runs exactly those in bf16."""
    import openvino as ov

    from rerank_build.config import RerankerConfig
    from rerank_build.cpu_runtime import bf16_native, openvino_engine

    engine = openvino_engine()
    model = ov.Core().read_model(str(tiny_onnx_fp32))
    layers = RerankerConfig.from_file(tiny_onnx_fp32.parent / "config.json").num_hidden_layers
    assert engine.linear_layers_in_bf16(model) == 7 * layers
    bf16_matmuls = [op for op in model.get_ops() if op.get_type_name() == "MatMul"
                    and op.input(0).get_element_type() == ov.Type.bf16]
    assert len(bf16_matmuls) == 7 * layers
    elsewhere = [op for op in model.get_ops() if op not in bf16_matmuls
                 and op.get_type_name() not in ("Convert", "Constant")
                 and ov.Type.bf16 in [op.get_output_element_type(k) for k in range(op.get_output_size())]]
    assert {op.get_type_name() for op in elsewhere} <= set(engine.MLP_INSIDE), elsewhere
    assert all("/mlp/" in op.get_friendly_name() for op in elsewhere), elsewhere
    head = [op for op in model.get_ops() if op.get_type_name() == "MatMul" and op not in bf16_matmuls
            and op.get_output_partial_shape(0)[-1] == ov.Dimension(1)]
    assert len(head) == 1 and head[0].input(0).get_element_type() == ov.Type.f32
    if not bf16_native():
        pytest.skip("this CPU has no AVX512-BF16/AMX: OpenVINO would run the bf16 layers in f32")
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runtime = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        runtime.setdefault(info["layerType"].astype(str), []).append(info["runtimePrecision"].astype(str))
    # 7 linear layers per layer in bf16, the head in fp32; norms (RMS), attention (a Subgraph) and
    # pooling (Reduce) in fp32; of the element-wise ops only the MLP's product in bf16.
    assert sorted(runtime["FullyConnected"]) == ["bf16"] * 7 * layers + ["f32"], runtime
    for kind in ("RMS", "Subgraph", "Reduce"):
        assert kind in runtime and set(runtime[kind]) <= {"f32", "i32"}, (kind, runtime[kind])
    assert runtime["Eltwise"].count("bf16") <= 2 * layers, runtime["Eltwise"]


def test_bf16_conversions_round_to_nearest(tiny_onnx_fp32):
    """OpenVINO 2026.4's Convert to bf16 on a dynamic-shape tensor truncates half of the values that
    round-to-nearest rounds up (a bias that doubled the bf16 engine's mean error); the rewrite rounds
    in fp32 first (Veltkamp's split) so that each conversion is exact."""
    import openvino as ov
    from openvino import opset13 as ops

    from rerank_build.cpu_runtime import openvino_engine

    x = np.random.default_rng(0).standard_normal((3, 257, 64)).astype(np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    nearest = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    param = ops.parameter([-1, -1, 64], ov.Type.f32)
    rounded = ops.convert(ops.convert(openvino_engine().round_to_bf16(param.output(0)), "bf16"), "f32")
    compiled = ov.Core().compile_model(ov.Model([rounded], [param]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_array_equal(np.asarray(compiled(x)[0]), nearest)


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
def test_served_default_precision_scores_within_its_tolerance(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    """The repository as `make serve` builds it (precision auto): on a CPU with AVX512-BF16/AMX the linear
    layers run in bf16, and the scores stay within TOLERANCES["bf16-linear"] of the reference (rankings the
    same up to swaps of passages closer than twice that); elsewhere it is fp32, at 1e-4."""
    from rerank_build.cpu_runtime import bf16_native
    from rerank_build.parity import TOLERANCES
    from rerank_serving.server import TritonServer

    settings = RepositorySettings(**{k: v for k, v in TEST_LIMITS.items() if k != "cpu_precision"})
    repo = build_repository(tiny_checkpoint, artifacts / "repo-openvino-auto", settings, onnx=tiny_onnx_fp32)
    tolerance = TOLERANCES["bf16-linear"] if bf16_native() else TOLERANCES["fp32"]
    log = artifacts / "tritonserver-openvino-auto.log"
    with TritonServer(repo, log_path=log) as server:
        report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), endpoint_scorer(server.grpc_url),
                            tolerance, default_cases(6, 0))
    print("\n".join(report.lines()))
    assert report.passed, "\n".join(report.lines())
    if bf16_native():
        assert "engine: openvino, bf16" in log.read_text()
        assert report.max_abs > 1e-3, "bf16 scored exactly like fp32: the linear layers did not run in bf16"


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
