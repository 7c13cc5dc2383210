"""FP8 Q/DQ graph (rerank-build quantize): the fp32 islands survive, only linear layers are quantized,
and ONNX Runtime on CPU gives finite scores within the documented FP8 tolerance on tiny."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from rerank_build.parity import TOLERANCES, default_cases, onnx_scorer, reference_scorer, run_parity
from rerank_build.quantize import (FP8_E4M3_MAX, LINEAR_WEIGHTS, LONG_ROW_TOKENS, QuantizeError, calibration_amax,
                                  calibration_feeds, linear_sites, quantize_fp8, reference_from_onnx)

CLI = str(Path(sys.executable).with_name("rerank-build"))


@pytest.fixture(scope="module")
def tiny_fp8(tiny_onnx_fp16, tmp_path_factory) -> Path:
    feeds = calibration_feeds(tiny_onnx_fp16.parent, n_pairs=32)
    return quantize_fp8(tiny_onnx_fp16, tmp_path_factory.mktemp("fp8"), feeds)


def test_calibration_feeds_cover_short_and_long_rows(tiny_checkpoint):
    feeds = calibration_feeds(tiny_checkpoint, n_pairs=40, seq=64, batch=16)
    assert [f["input_ids"].shape for f in feeds] == [(16, 64), (16, 64), (8, 64)] + [(1, n) for n in LONG_ROW_TOKENS]
    assert LONG_ROW_TOKENS[0] >= 2048 and LONG_ROW_TOKENS[-1] == 8192, "long rows span 2k to 8k tokens"
    assert all(str(f["input_ids"].dtype) == "int32" and (f["attention_mask"][:, -1] == 1).all() for f in feeds)
    assert all(f["attention_mask"].all() for f in feeds[3:]), "a long row is all tokens, no padding"
    assert calibration_feeds(tiny_checkpoint, n_pairs=16, seq=64, long_rows=())[-1]["input_ids"].shape == (16, 64)


def test_calibration_reads_the_activations_the_graph_quantizes(tiny_onnx_fp16):
    """The amax measured at the reference's nn.Linear inputs (weights read from the ONNX) is the amax of
    the fp16 graph's MatMul inputs that the Q nodes quantize, as ONNX Runtime computes them."""
    import onnxruntime as ort

    model = onnx.load(str(tiny_onnx_fp16))
    sites = linear_sites(model)
    feeds = calibration_feeds(tiny_onnx_fp16.parent, n_pairs=16, long_rows=(300,))
    ours = calibration_amax(reference_from_onnx(model, tiny_onnx_fp16.parent), sites, feeds)
    activations = sorted({s.activation for s in sites})
    assert sorted(ours) == activations and len(activations) == 4 * len(sites) // len(LINEAR_WEIGHTS)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT16, None)
                              for a in activations)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    graph = dict.fromkeys(activations, 0.0)
    for feed in feeds:
        for name, value in zip(activations, session.run(activations, feed)):
            graph[name] = max(graph[name], float(np.abs(value.astype(np.float32)).max()))
    for name in activations:
        assert ours[name] == pytest.approx(graph[name], rel=1e-2), name


def test_fp8_graph_keeps_the_fp32_islands(tiny_onnx_fp16, tiny_fp8):
    before, after = onnx.load(str(tiny_onnx_fp16)), onnx.load(str(tiny_fp8))
    ops_before = collections.Counter(n.op_type for n in before.graph.node)
    ops_after = collections.Counter(n.op_type for n in after.graph.node)
    sites = linear_sites(before)
    layers = before.graph.initializer
    assert len(sites) == len(LINEAR_WEIGHTS) * sum(1 for i in layers if i.name.endswith("q_proj.weight"))
    # Nothing but the Q/DQ pairs and the weights' folded Transposes changes: RMSNorm's Pow/ReduceMean,
    # pooling and the head keep their fp32 casts (a generic quantizer took 34 Casts down to 4 and gave
    # NaN). Opset 18 turned ReduceMean's axes into an input, so the converter adds one
    # Constant per ReduceMean.
    added = {"QuantizeLinear", "DequantizeLinear", "Constant", "Transpose"}
    assert {k: v for k, v in ops_after.items() if k not in added} == {k: v for k, v in ops_before.items()
                                                                      if k not in added}
    assert ops_after["Constant"] == ops_before["Constant"] + ops_before["ReduceMean"]
    assert ops_after["Transpose"] == ops_before["Transpose"] - len(sites)
    assert [o.version for o in after.opset_import if o.domain in ("", "ai.onnx")] == [19]
    distinct = len({s.activation for s in sites}) + len(sites)
    assert ops_after["QuantizeLinear"] == ops_after["DequantizeLinear"] == distinct
    consumers = collections.defaultdict(list)
    for node in after.graph.node:
        for name in node.input:
            consumers[name].append(node.op_type)
    dq_outputs = [n.output[0] for n in after.graph.node if n.op_type == "DequantizeLinear"]
    assert all(set(consumers[o]) == {"MatMul"} for o in dq_outputs), "Q/DQ only in front of linear MatMuls"
    derived, head = {"score.weight"}, None  # follow the head's weight (Cast, Transpose) to its MatMul
    for node in after.graph.node:
        if derived & set(node.input):
            derived |= set(node.output)
            head = node if node.op_type in ("MatMul", "Gemm") else head
    assert head is not None and not any(i in dq_outputs for i in head.input), "the fp32 score head stays unquantized"
    zero = next(i for i in after.graph.initializer if i.name == "fp8_zero_point")
    assert zero.data_type == onnx.TensorProto.FLOAT8E4M3FN
    meta = json.loads(tiny_fp8.with_name("quantize_meta.json").read_text())
    assert meta["precision"] == "fp8" and meta["linear_layers"] == len(sites)


def test_fp8_model_declares_the_ir_version_of_its_float8_types(tiny_fp8):
    model = onnx.load(str(tiny_fp8))
    assert any(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in model.graph.initializer)
    assert model.ir_version >= 9, "FLOAT8 element types need ONNX IR version 9"
    assert json.loads(tiny_fp8.with_name("quantize_meta.json").read_text())["ir_version"] == model.ir_version


def test_weight_quantizers_read_their_initializers(tiny_onnx_fp16, tiny_fp8):
    """TensorRT stores FP8 weights when the weight Q is a constant subgraph: Q(initializer), here [in, out]
    with the export's Transpose folded in, one fp16 scale per output channel (axis 1)."""
    from onnx import numpy_helper

    before, after = onnx.load(str(tiny_onnx_fp16)), onnx.load(str(tiny_fp8))
    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    produced = {out: n for n in after.graph.node for out in n.output}
    weights = [n for n in after.graph.node
               if n.op_type == "MatMul" and produced[n.input[1]].op_type == "DequantizeLinear"]
    assert len(weights) == len(linear_sites(before))
    assert not [n for n in after.graph.node if n.op_type == "Transpose" and n.input[0] in old], "no weight Transpose"
    for matmul in weights:
        dq = produced[matmul.input[1]]
        q = produced[dq.input[0]]
        assert q.op_type == "QuantizeLinear" and q.input[0] in inits, f"{matmul.name}: Q must read an initializer"
        weight, scale = inits[q.input[0]], inits[q.input[1]]
        source = old[q.input[0].removesuffix("_transposed")]  # the export's [out, in] weight
        np.testing.assert_array_equal(weight, source.T)
        assert scale.dtype == np.float16 and scale.shape == (weight.shape[1],)
        axes = [{a.name: a.i for a in node.attribute}.get("axis") for node in (q, dq)]
        assert axes == [1, 1] and dq.input[1] == q.input[1]
        assert inits[q.input[2]].shape == scale.shape  # opset 19: the zero point's shape is the scale's
        amax = np.abs(source.astype(np.float32)).max(axis=1)
        assert (scale.astype(np.float32) * FP8_E4M3_MAX >= amax).all(), "every channel's amax fits in FP8"
        np.testing.assert_allclose(scale.astype(np.float32) * FP8_E4M3_MAX, amax, rtol=2e-3)
        act = produced[matmul.input[0]]
        assert act.op_type == "DequantizeLinear" and inits[act.input[1]].shape == (), "activations per tensor"


def test_fp8_scores_are_finite_and_within_the_documented_tolerance(tiny_checkpoint, tiny_fp8):
    report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), onnx_scorer(tiny_fp8),
                        TOLERANCES["fp8"], default_cases(6, 0))
    print("\n".join(report.lines()))
    assert all(np.isfinite(r.max_abs) for r in report.results)
    assert report.passed, "\n".join(report.lines())


def test_quantize_cli_and_its_refusals(tiny_onnx_fp16, tiny_onnx_fp32, tmp_path):
    done = subprocess.run([CLI, "quantize", "--precision", "fp8", "--onnx", str(tiny_onnx_fp16), "--out",
                           str(tmp_path / "q"), "--calibration-pairs", "16", "--calibration-long-rows", "",
                           "--weight-scales", "tensor"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "q" / "model.onnx").is_file() and (tmp_path / "q" / "tokenizer.json").is_file()
    meta = json.loads((tmp_path / "q" / "quantize_meta.json").read_text())
    assert meta["weight_scales"] == "per tensor" and meta["calibration_max_row_tokens"] == [256]
    model = onnx.load(str(tmp_path / "q" / "model.onnx"))
    scales = [i for i in model.graph.initializer if i.name.endswith("_fp8_scale")]
    assert scales and all(list(i.dims) == [] for i in scales), "--weight-scales tensor: every scale a scalar"
    with pytest.raises(QuantizeError, match="no fp16 weights"):
        quantize_fp8(tiny_onnx_fp32, tmp_path / "bad", [])
