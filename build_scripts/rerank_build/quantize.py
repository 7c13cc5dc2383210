"""FP8 post-training quantization of the fp16 ONNX: Q/DQ only where TensorRT runs FP8 GEMMs.

The fp16 export keeps RMSNorm, softmax, pooling and the score head in fp32 on purpose. A generic
quantizer (ModelOpt's ``quantize_mode="fp8"`` with ``high_precision_dtype="fp16"``) rewrote those
islands into fp16 (34 ``Cast`` nodes became 4) and gave NaN for every pair on tiny. This module
changes nothing but the inputs of the seven linear projections of each decoder layer
(q/k/v/o, gate/up/down): each gets ``QuantizeLinear -> DequantizeLinear`` to FLOAT8E4M3FN with a
per-tensor scale ``amax / 448``, weights from their values, activations from calibration pairs run
through the fp16 graph in ONNX Runtime. TensorRT fuses each Q/DQ pair into an FP8 GEMM; ONNX Runtime
runs the same graph on CPU (its QuantizeLinear/DequantizeLinear have FP8 kernels), which is how the
accuracy is measured without a GPU. Attention's two batched matmuls and the fp32 head stay as they are.

The graph moves from opset 17 to 19 (FP8 Q/DQ needs 19), with ONNX's version converter; weights of a
model with external data are not loaded into the protobuf (the data file is copied beside the output).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .export_onnx import EXTERNAL_DATA_FILE, ort_session

logger = logging.getLogger(__name__)

#: Largest finite FLOAT8E4M3FN value: a tensor's amax maps onto it.
FP8_E4M3_MAX = 448.0
FP8_OPSET = 19
#: Linear projections of a decoder layer (their weights' names end in "<name>.weight").
LINEAR_WEIGHTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AMAX_FLOOR = 1e-4  # a tensor of zeros still gets a usable scale


class QuantizeError(RuntimeError):
    """The graph is not one this quantizer knows (not our fp16 export, or no linear layer found)."""


@dataclass(frozen=True)
class Site:
    """One linear MatMul: its activation input, and the (transposed) weight input."""

    node: str
    activation: str
    weight_tensor: str  # the MatMul's weight input (a Transpose output of the initializer)
    initializer: str  # the fp16 weight initializer, e.g. model.layers.0.self_attn.q_proj.weight


def linear_sites(model: Any) -> list[Site]:
    """Every MatMul whose second input is an fp16 projection weight (through the export's Transpose)."""
    import onnx

    fp16 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    produced_by = {out: node for node in model.graph.node for out in node.output}
    sites = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        source = produced_by.get(node.input[1])
        weight = source.input[0] if source is not None and source.op_type == "Transpose" else node.input[1]
        if weight in fp16 and weight.rsplit(".", 2)[-2] in LINEAR_WEIGHTS:
            sites.append(Site(node.name, node.input[0], node.input[1], weight))
    return sites


def calibration_feeds(tokenizer_dir: str | Path, n_pairs: int = 64, seq: int = 256, seed: int = 0,
                      batch: int = 16) -> list[dict[str, np.ndarray]]:
    """Seeded multilingual pairs (the parity tool's generator), left-padded to ``seq``, in batches."""
    from rerank_contract.prompt import PairEncoder, left_pad, load_tokenizer

    from .textgen import random_cases

    encoder = PairEncoder(load_tokenizer(str(tokenizer_dir)), max_length=seq)
    rows = []
    for case in random_cases(seed, n_cases=n_pairs, passages_per_case=(1, 1), passage_words=(20, 160)):
        rows += encoder.encode(case.query, case.passages, "END")
    padded = left_pad(rows[:n_pairs], length=seq)
    return [{"input_ids": padded.input_ids[k:k + batch], "attention_mask": padded.attention_mask[k:k + batch]}
            for k in range(0, n_pairs, batch)]


def calibration_amax(onnx_path: Path, activations: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """max |x| of each activation over the calibration batches (the fp16 graph, ONNX Runtime on CPU)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    known = {o.name for o in model.graph.output}
    for name in activations:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT16, None))
    amax = dict.fromkeys(activations, 0.0)
    probe = onnx_path.parent / f".calibrate-{os.getpid()}.onnx"  # beside the external data, if any
    try:
        onnx.save_model(model, str(probe))
        session = ort_session(probe)
        for batch in feeds:
            for name, value in zip(activations, session.run(activations, batch)):
                amax[name] = max(amax[name], float(np.abs(value.astype(np.float32)).max()))
    finally:
        probe.unlink(missing_ok=True)
    return amax


def _scale(amax: float) -> np.ndarray:
    return np.array(max(amax, AMAX_FLOOR) / FP8_E4M3_MAX, dtype=np.float16)


def insert_qdq(model: Any, sites: list[Site], activation_amax: dict[str, float],
               weight_amax: dict[str, float]) -> int:
    """Insert Q/DQ pairs in place; returns how many. One pair per tensor, shared by its consumers."""
    import onnx
    from onnx import helper, numpy_helper

    zero = helper.make_tensor("fp8_zero_point", onnx.TensorProto.FLOAT8E4M3FN, [], [0])
    model.graph.initializer.append(zero)
    made: dict[str, str] = {}
    new_nodes: dict[str, list[Any]] = {}  # inserted right before the first consumer
    for site in sites:
        for tensor, amax in ((site.activation, activation_amax[site.activation]),
                             (site.weight_tensor, weight_amax[site.initializer])):
            if tensor in made:
                continue
            base = tensor.strip("/").replace("/", "_")
            scale = f"{base}_fp8_scale"
            model.graph.initializer.append(numpy_helper.from_array(_scale(amax), scale))
            quantized, dequantized = f"{base}_fp8_q", f"{base}_fp8_dq"
            new_nodes.setdefault(site.node, []).extend([
                helper.make_node("QuantizeLinear", [tensor, scale, zero.name], [quantized], name=f"{base}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [quantized, scale, zero.name], [dequantized],
                                 name=f"{base}_DequantizeLinear"),
            ])
            made[tensor] = dequantized
    ordered = []
    for node in model.graph.node:
        ordered += new_nodes.get(node.name, [])
        if node.op_type == "MatMul" and node.name in {s.node for s in sites}:
            for k, name in enumerate(node.input):
                node.input[k] = made.get(name, name)
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return 2 * len(made)


def quantize_fp8(onnx_path: str | Path, out_dir: str | Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Write ``out_dir/model.onnx`` (FP8 Q/DQ at the linear layers) and ``quantize_meta.json``."""
    import onnx
    from onnx import numpy_helper, version_converter

    src = Path(onnx_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)
    if not any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise QuantizeError(f"{src} has no fp16 weights: quantize the fp16 export (export-onnx --dtype fp16)")
    sites = linear_sites(model)
    if not sites:
        raise QuantizeError(f"{src}: no linear projection found (is it this project's export?)")
    logger.info("calibrating %d activations on %d batches", len({s.activation for s in sites}), len(feeds))
    activation_amax = calibration_amax(src, sorted({s.activation for s in sites}), feeds)
    inits = {i.name: i for i in model.graph.initializer}
    weight_amax = {s.initializer: float(np.abs(numpy_helper.to_array(inits[s.initializer], base_dir=str(src.parent))
                                               .astype(np.float32)).max()) for s in sites}
    model = version_converter.convert_version(model, FP8_OPSET)
    pairs = insert_qdq(model, sites, activation_amax, weight_amax)
    target = out / "model.onnx"
    external = src.with_name(EXTERNAL_DATA_FILE)
    if external.exists():  # weights stay in the data file, which the output references by name; a
        # copy, not a hard link: ONNX's checker refuses hard-linked external data (a "hardlink attack")
        shutil.copy2(external, out / EXTERNAL_DATA_FILE)
    onnx.save_model(model, str(target))
    onnx.checker.check_model(str(target))
    meta = {
        "precision": "fp8", "format": "FLOAT8E4M3FN Q/DQ, per-tensor scales (amax / 448)", "source": str(src),
        "opset": FP8_OPSET, "linear_layers": len(sites), "qdq_nodes": pairs, "calibration_batches": len(feeds),
        "activation_amax": activation_amax, "weight_amax": weight_amax,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "quantize_meta.json").write_text(json.dumps(meta, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (src.parent / name).exists():
            shutil.copy2(src.parent / name, out / name)
    logger.info("wrote %s: %d linear layers, %d Q/DQ nodes, %.1fs", target, len(sites), pairs, meta["seconds"])
    return target
