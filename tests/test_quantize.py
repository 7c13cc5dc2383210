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
from rerank_build.quantize import LINEAR_WEIGHTS, QuantizeError, calibration_feeds, linear_sites, quantize_fp8

CLI = str(Path(sys.executable).with_name("rerank-build"))


@pytest.fixture(scope="module")
def tiny_fp8(tiny_onnx_fp16, tmp_path_factory) -> Path:
    feeds = calibration_feeds(tiny_onnx_fp16.parent, n_pairs=32)
    return quantize_fp8(tiny_onnx_fp16, tmp_path_factory.mktemp("fp8"), feeds)


def test_calibration_feeds(tiny_checkpoint):
    feeds = calibration_feeds(tiny_checkpoint, n_pairs=40, seq=64, batch=16)
    assert [f["input_ids"].shape for f in feeds] == [(16, 64), (16, 64), (8, 64)]
    assert all(str(f["input_ids"].dtype) == "int32" and (f["attention_mask"][:, -1] == 1).all() for f in feeds)


def test_fp8_graph_keeps_the_fp32_islands(tiny_onnx_fp16, tiny_fp8):
    before, after = onnx.load(str(tiny_onnx_fp16)), onnx.load(str(tiny_fp8))
    ops_before = collections.Counter(n.op_type for n in before.graph.node)
    ops_after = collections.Counter(n.op_type for n in after.graph.node)
    # Nothing but the Q/DQ pairs changes: RMSNorm's Pow/ReduceMean, softmax, pooling and the head keep
    # their fp32 casts (a generic quantizer took 34 Casts down to 4 and gave NaN). Opset 18 turned
    # ReduceMean's axes into an input, so the converter adds one Constant per ReduceMean.
    added = {"QuantizeLinear", "DequantizeLinear", "Constant"}
    assert {k: v for k, v in ops_after.items() if k not in added} == {k: v for k, v in ops_before.items()
                                                                      if k not in added}
    assert ops_after["Constant"] == ops_before["Constant"] + ops_before["ReduceMean"]
    assert [o.version for o in after.opset_import if o.domain in ("", "ai.onnx")] == [19]
    sites = linear_sites(before)
    layers = before.graph.initializer
    assert len(sites) == len(LINEAR_WEIGHTS) * sum(1 for i in layers if i.name.endswith("q_proj.weight"))
    distinct = len({s.activation for s in sites}) + len({s.weight_tensor for s in sites})
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


def test_fp8_scores_are_finite_and_within_the_documented_tolerance(tiny_checkpoint, tiny_fp8):
    report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), onnx_scorer(tiny_fp8),
                        TOLERANCES["fp8"], default_cases(6, 0))
    print("\n".join(report.lines()))
    assert all(np.isfinite(r.max_abs) for r in report.results)
    assert report.passed, "\n".join(report.lines())


def test_quantize_cli_and_its_refusals(tiny_onnx_fp16, tiny_onnx_fp32, tmp_path):
    done = subprocess.run([CLI, "quantize", "--precision", "fp8", "--onnx", str(tiny_onnx_fp16), "--out",
                           str(tmp_path / "q"), "--calibration-pairs", "16"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "q" / "model.onnx").is_file() and (tmp_path / "q" / "tokenizer.json").is_file()
    with pytest.raises(QuantizeError, match="no fp16 weights"):
        quantize_fp8(tiny_onnx_fp32, tmp_path / "bad", [])
