"""ONNX export: contract, variants, external data, and ONNX Runtime agreement."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from rerank_contract import prompt as rp
from rerank_build.export_onnx import EMPTY_ROW_LOGIT, EXTERNAL_DATA_FILE, export_onnx, ort_session
from rerank_build.textgen import FIXED_CASES, random_cases


def _io(model: onnx.ModelProto):
    def describe(v):
        t = v.type.tensor_type
        return v.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]
    return [describe(v) for v in model.graph.input], [describe(v) for v in model.graph.output]


@pytest.mark.parametrize("variant", ["tiny_onnx_fp32", "tiny_onnx_fp16"])
def test_contract(request, variant):
    path = request.getfixturevalue(variant)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inputs, outputs = _io(model)
    assert inputs == [("input_ids", onnx.TensorProto.INT32, ["batch", "seq"]),
                      ("attention_mask", onnx.TensorProto.INT32, ["batch", "seq"])]
    assert outputs == [("logits", onnx.TensorProto.FLOAT, ["batch", 1])]
    beside = {p.name for p in path.parent.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "export_meta.json"} <= beside


def test_fp16_keeps_norm_pooling_and_head_in_fp32(tiny_onnx_fp16):
    model = onnx.load(str(tiny_onnx_fp16))
    dtypes = {init.name: init.data_type for init in model.graph.initializer}
    matmul_weights = [n for n, t in dtypes.items() if "proj" in n or "embed" in n]
    assert matmul_weights and all(dtypes[n] == onnx.TensorProto.FLOAT16 for n in matmul_weights)
    assert dtypes["score.weight"] == onnx.TensorProto.FLOAT
    assert all(t == onnx.TensorProto.FLOAT for n, t in dtypes.items() if n.endswith("norm.weight"))
    assert json.loads((tiny_onnx_fp16.parent / "export_meta.json").read_text())["dtype"] == "fp16"


def _rows(encoder):
    cases = list(FIXED_CASES) + random_cases(seed=3, n_cases=4)
    return [r for c in cases for r in encoder.encode(c.query, c.passages, "END")]


@pytest.mark.parametrize("variant,atol", [("tiny_onnx_fp32", 1e-4), ("tiny_onnx_fp16", 5e-2)])
def test_onnxruntime_matches_reference(request, variant, atol, tiny_model, encoder):
    session = ort_session(request.getfixturevalue(variant))
    rows = _rows(encoder)
    batch = rp.left_pad(rows)
    out = session.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]
    assert out.shape == (len(rows), 1) and out.dtype == np.float32
    with torch.no_grad():
        ref = tiny_model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
    np.testing.assert_allclose(out, ref, atol=atol)


@pytest.mark.parametrize("variant", ["tiny_onnx_fp32", "tiny_onnx_fp16"])
def test_graph_guards_what_a_direct_call_sends(request, variant, tiny_model, encoder):
    """What a TensorRT engine built from this graph gets too: no Python layer checks its inputs."""
    session = ort_session(request.getfixturevalue(variant))
    vocab = tiny_model.config.vocab_size
    batch = rp.left_pad(_rows(encoder)[:4])
    ids, mask = batch.input_ids, batch.attention_mask
    run = lambda i, m: session.run(None, {"input_ids": i, "attention_mask": m})[0]  # noqa: E731
    clean = run(ids, mask)
    # Well-formed rows: the guards change nothing, bit for bit (Max/Min/Where are exact).
    assert np.isfinite(clean).all()
    ops = {node.op_type for node in onnx.load(str(request.getfixturevalue(variant))).graph.node}
    assert {"Max", "Min", "Where"} <= ops
    # Ids outside [0, vocab) score as the nearest valid id (Gather never reads outside the table).
    wild = ids.copy()
    wild[0, -1], wild[1, -1] = 999_999, -5
    clamped = ids.copy()
    clamped[0, -1], clamped[1, -1] = vocab - 1, 0
    np.testing.assert_array_equal(run(wild, mask), run(clamped, mask))
    # Mask values other than 0/1 count as 1 (7 gave NaN before).
    np.testing.assert_array_equal(run(ids, mask * 7), clean)
    # A row with nothing to attend to scores float32's lowest value: finite, last, never plausible.
    empty = mask.copy()
    empty[2] = 0
    out = run(ids, empty)
    assert out[2, 0] == np.float32(EMPTY_ROW_LOGIT)
    np.testing.assert_array_equal(np.delete(out, 2, axis=0), np.delete(clean, 2, axis=0))


def test_dynamic_axes_accept_other_shapes(tiny_onnx_fp32):
    session = ort_session(tiny_onnx_fp32)
    for batch, seq in [(1, 1), (3, 7), (5, 300)]:
        ids = np.full((batch, seq), 1000, dtype=np.int32)
        out = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        assert out.shape == (batch, 1)


def test_external_data_layout(tiny_checkpoint, tmp_path, tiny_onnx_fp32):
    path = export_onnx(tiny_checkpoint, tmp_path / "ext", dtype="fp32", external_data=True)
    assert (path.parent / EXTERNAL_DATA_FILE).stat().st_size > path.stat().st_size
    onnx.checker.check_model(str(path))
    ids = np.array([[rp.BOS_ID, 7998, 25, 80]], dtype=np.int32)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    np.testing.assert_allclose(ort_session(path).run(None, feeds)[0],
                               ort_session(tiny_onnx_fp32).run(None, feeds)[0], atol=1e-6)


def test_rejects_unknown_dtype(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="supports fp32, fp16, bf16"):
        export_onnx(tiny_checkpoint, tmp_path / "x", dtype="int4")


def test_bf16_export_runs_in_openvino_within_its_tolerance(tiny_checkpoint, tmp_path):
    """The TensorRT bf16 source on a CPU: ONNX Runtime has no bf16 kernels, OpenVINO reads it. Its
    weights are bf16; OpenVINO computes in fp32 (precision f32), as TensorRT keeps the fp32 islands."""
    from rerank_build.parity import TOLERANCES, default_cases, onnx_scorer, reference_scorer, run_parity

    path = export_onnx(tiny_checkpoint, tmp_path / "bf16", dtype="bf16")
    report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), onnx_scorer(path, runtime="openvino"),
                        TOLERANCES["bf16"], default_cases(6, 0))
    print("\n".join(report.lines()))
    assert report.passed, "\n".join(report.lines())
