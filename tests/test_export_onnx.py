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


@pytest.fixture(scope="module")
def tiny_onnx_bf16(tiny_checkpoint, tmp_path_factory):
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("bf16"), dtype="bf16")


def test_bf16_export_runs_in_openvino_within_its_tolerance(tiny_checkpoint, tiny_onnx_bf16):
    """The TensorRT bf16 source on a CPU: ONNX Runtime has no bf16 kernels, OpenVINO reads it. Its
    weights are bf16; OpenVINO computes in fp32 (precision f32), as TensorRT keeps the fp32 islands."""
    from rerank_build.parity import TOLERANCES, default_cases, onnx_scorer, reference_scorer, run_parity

    path = tiny_onnx_bf16
    report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), onnx_scorer(path, runtime="openvino"),
                        TOLERANCES["bf16"], default_cases(6, 0))
    print("\n".join(report.lines()))
    assert report.passed, "\n".join(report.lines())


def _attentions(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto], onnx.NodeProto]]:
    """(Q·Kᵀ MatMul, the nodes on the path from it to the Softmax, Softmax) for every attention."""
    produced = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def ancestors(node):  # up to and including the nearest MatMuls
        seen, todo = {}, [node]
        while todo:
            for name in todo.pop().input:
                up = produced.get(name)
                if up is not None and up.name not in seen:
                    seen[up.name] = up
                    if up.op_type != "MatMul":
                        todo.append(up)
        return seen

    found = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        above = ancestors(softmax)
        bmm1 = [n for n in above.values() if n.op_type == "MatMul"]
        assert len(bmm1) == 1, "one Q·Kᵀ MatMul feeds each Softmax"
        below, todo = set(), [bmm1[0]]  # descendants of Q·Kᵀ down to the Softmax
        while todo:
            for out in todo.pop().output:
                for down in consumers.get(out, []):
                    if down.name not in below and down is not softmax:
                        below.add(down.name)
                        todo.append(down)
        between = [n for n in model.graph.node if n.name in below and n.name in above]
        found.append((bmm1[0], between, softmax))
    return found


@pytest.mark.parametrize("variant,elem_type", [("tiny_onnx_fp16", onnx.TensorProto.FLOAT16),
                                               ("tiny_onnx_bf16", onnx.TensorProto.BFLOAT16)])
def test_attention_stays_in_the_bmm_dtype(request, variant, elem_type):
    """What TensorRT fuses into one attention kernel (docs: "Fused Attention"): Q·Kᵀ, the mask add and
    the softmax in the activation dtype, then ·V. The eager export had Mul(scale) -> Cast(fp32) -> Add
    -> Softmax(fp32) -> Cast between the two batched matmuls."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(request.getfixturevalue(variant))))
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    attentions = _attentions(model)
    assert len(attentions) == json.loads(request.getfixturevalue(variant).with_name("config.json").read_text())[
        "num_hidden_layers"]
    consumers = {name: n for n in model.graph.node for name in n.input}
    for bmm1, between, softmax in attentions:
        ops = [n.op_type for n in between]
        assert ops == ["Add"], f"only the mask add between Q·Kᵀ and Softmax, not {ops}"
        add = between[0]
        assert {types[name] for name in add.input} == {elem_type}, "the mask is added in the BMM dtype"
        assert types[bmm1.output[0]] == types[softmax.input[0]] == types[softmax.output[0]] == elem_type
        assert consumers[softmax.output[0]].op_type == "MatMul", "the probabilities go straight into ·V"


def test_grouped_kv_heads_are_not_copied(tiny_onnx_fp16, tiny_checkpoint, encoder):
    """K and V keep their kv_heads heads (the eager export repeated them with Tile): the query heads that
    share a K/V head are stacked along the rows of Q, and the mask holds fp16's lowest value."""
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    heads, kv_heads, head_dim = (config[k] for k in ("num_attention_heads", "num_key_value_heads", "head_dim"))
    assert heads // kv_heads > 1, "the tiny preset has grouped query heads"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_onnx_fp16)))
    assert not {"Tile", "Expand"} & {n.op_type for n in model.graph.node}
    bmm1, (add,), _ = _attentions(model)[0]
    mask = next(name for name in add.input if name != bmm1.output[0])
    probes = [bmm1.input[0], bmm1.input[1], mask]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT16, None)
                              for name in probes)
    session = ort_session_from_proto(model)
    rows = encoder.encode(FIXED_CASES[0].query, FIXED_CASES[0].passages)
    batch = rp.left_pad(rows)
    seq = batch.input_ids.shape[1]
    q, k_t, additive = session.run(probes, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    assert q.shape == (len(rows), kv_heads, heads // kv_heads * seq, head_dim)
    assert k_t.shape == (len(rows), kv_heads, head_dim, seq)
    assert additive.dtype == np.float16 and additive.shape == (len(rows), 1, 1, seq)
    lowest = np.finfo(np.float16).min
    np.testing.assert_array_equal(additive[:, 0, 0, :], np.where(batch.attention_mask > 0, 0.0, lowest))
    assert (batch.attention_mask == 0).any(), "rows of several lengths, so some keys are masked"


def ort_session_from_proto(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
